"""One of N `jax.distributed` processes (CPU, gloo collectives) training from a store; run by
tests/test_multihost.py as `python tests/multihost_worker.py PORT PID N CONFIG_JSON WORKDIR`."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

port, pid, n, cfg_json, workdir = sys.argv[1:6]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=int(n), process_id=int(pid))

from jaxsae import config as C
from jaxsae.train import loop

cfg = C.from_dict(json.loads(cfg_json))
assert jax.process_count() == int(n) and jax.device_count() == int(n)
loop.train(cfg, workdir, progress=False)
print(f"process {pid} done", flush=True)
jax.distributed.shutdown()
