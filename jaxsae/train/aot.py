"""Ahead-of-time compilation of the sharded train step for any mesh, with XLA's per-device
memory analysis: check that a pod-size dictionary fits before asking for the pod.

  python -m jaxsae.train.aot --d_in=2304 --d_sae=1048576 --devices=64 --model=16
  python -m jaxsae.train.aot --arch=clt --activation=jumprelu --n_layers=26 --d_in=2304 --d_sae=16384 \
      --batch=1024 --devices=256 --model=64       # a cross-layer transcoder for a 26-layer model

(`--devices` fakes that many CPU devices when no accelerator of that size is attached.)
"""

from __future__ import annotations

import argparse
import json
import os


def compile_report(arch: str, d_in: int, d_sae: int, batch: int, data: int, model: int, k: int = 32,
                   activation: str = "topk", n_layers: int | None = None) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxsae import config as C
    from jaxsae import sharding
    from jaxsae.train import optim, recipes
    from jaxsae.train import state as state_lib
    from jaxsae.train.step import make_train_step

    mesh = sharding.make_mesh(data, model, jax.devices()[: data * model])
    sae_cfg = C.SAEConfig(architecture=arch, d_sae=d_sae, k=k, activation=activation)
    spec = recipes.spec_from_config(sae_cfg, d_in, d_in if n_layers else None, n_layers=n_layers)
    sched = recipes.resolve(arch, activation, d_sae, C.TrainConfig(steps=100_000, batch_size=batch))
    tx = optim.make_optimizer(sched, spec.unit_norm_decoder)
    scale = jnp.ones((n_layers, 1), jnp.float32) if n_layers else jnp.float32(1)

    def init_fn(key):
        return state_lib.create(spec, tx, key, None, scale, scale)

    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = sharding.tree_shardings(mesh, state_lib.logical_axes(spec, tx, abstract))
    x_sh = sharding.named(mesh, spec.input_axes())
    step = jax.jit(make_train_step(spec, tx, sched, 10_000_000), in_shardings=(shardings, x_sh, x_sh),
                   out_shardings=(shardings, None), donate_argnums=0)
    x_shape = (batch, n_layers, d_in) if n_layers else (batch, d_in)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32, sharding=x_sh)
    st = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with jax.set_mesh(mesh):
        compiled = step.lower(st, x, x).compile()
    mem = compiled.memory_analysis()
    n_params = sum(int(v.size) for v in jax.tree.leaves(abstract.params))
    state_bytes = sum(int(v.size) * v.dtype.itemsize for v in jax.tree.leaves(abstract))
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    report = {f: int(getattr(mem, f, 0) or 0) for f in fields}
    report.update(
        arch=arch, activation=activation if arch in ("clt", "transcoder") else None, n_layers=n_layers,
        d_in=d_in, d_sae=d_sae, batch=batch, mesh={"data": data, "model": model},
        n_params=n_params, state_bytes_total=state_bytes,
        per_device_peak_estimate=report["argument_size_in_bytes"] + report["temp_size_in_bytes"]
        + report["output_size_in_bytes"] - report["alias_size_in_bytes"],
    )
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="topk")
    p.add_argument("--d_in", type=int, default=2304)
    p.add_argument("--d_sae", type=int, default=2**20)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--activation", default="topk", help="clt: jumprelu | topk | batchtopk")
    p.add_argument("--n_layers", type=int, default=None, help="clt: layers (latents per layer: --d_sae)")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--model", type=int, default=16)
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}").strip()
    report = compile_report(a.arch, a.d_in, a.d_sae, a.batch, a.devices // a.model, a.model, a.k,
                            a.activation, a.n_layers)
    gib = {k: round(v / 2**30, 3) for k, v in report.items() if k.endswith("bytes") or k.endswith("estimate")}
    print(json.dumps({**report, "GiB": gib}, indent=2))


if __name__ == "__main__":
    main()
