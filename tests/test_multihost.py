"""Multi-host: two `jax.distributed` processes on localhost (CPU, gloo), each reading only its
share of every global batch from the store, end with the parameters one process reaches on the
same global batches."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from tiny_lm import make_tiny_lm

from jaxsae import config as C
from jaxsae import sharding
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.interop import saelens
from jaxsae.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    import jax

    lm_dir = make_tiny_lm(str(tmp_path / "lm"))
    store = str(tmp_path / "store")
    harvest_lib.harvest(LMConfig(path=lm_dir, sites=("blocks.1.hook_resid_post",), context=32, batch_windows=8,
                                 windows=32), TextConfig(), store, progress=False)
    values = {"sae": {"architecture": "topk", "d_sae": 64, "k": 4},
              "train": {"steps": 30, "batch_size": 64, "log_every": 10, "checkpoint_every": 15, "dead_tokens": 1000},
              "data": {"source": "store", "path": store}}
    one = loop.train(C.from_dict(values), str(tmp_path / "one"), mesh=sharding.make_mesh(2, 1, jax.devices()[:2]),
                     progress=False)
    assert one.metrics
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(port), str(i),
                               "2", json.dumps(values), str(tmp_path / "two")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    a = saelens.load(str(tmp_path / "one" / "export"))
    b = saelens.load(str(tmp_path / "two" / "export"))
    for k in a.params:
        np.testing.assert_allclose(np.asarray(b.params[k]), np.asarray(a.params[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["step"] for r in rows][-1] == 29  # one writer: each step logged once
    assert len(rows) == len({r["step"] for r in rows})
