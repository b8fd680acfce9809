"""Steady-state training-step throughput, beside this machine's float32 matmul ceiling.

  python -m benchmarks.train_step            # TopK, ReLU/L1, JumpReLU at d_in 768, d_sae 24576, batch 4096
  python -m benchmarks.train_step --json     # the same figures as JSON

Each step is the full jaxsae train step (forward, loss, backward, decoder projection, clipping,
Adam, LR schedule, renormalisation, dead-latent counters), jitted on one device, on the same
synthetic Gaussian batches as ../shared/bench (numpy seed 0, 4 batches cycled).

FLOPs counted: a dense step must do 10 * B * D * F (two forward matmuls, three backward). The
sparse TopK decoder gathers k rows, so its step must do 4 * B * D * F (encoder forward and weight
gradient) + 6 * B * k * D; `frac_of_ceiling` divides the FLOPs the step must do by the ceiling,
`dense_equiv_gflops` shows 10 * B * D * F / step time for comparison with dense implementations.
The ceiling is the best median of jitted float32 matmuls of the step's own three shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import config as C
from jaxsae.train import optim, recipes
from jaxsae.train import state as state_lib
from jaxsae.train.step import make_train_step

D_IN, D_SAE, BATCH, K = 768, 24576, 4096, 32


def _time(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def matmul_ceiling(b: int, d: int, f: int, iters: int = 8) -> dict:
    rng = np.random.default_rng(0)
    shapes = {"enc": (b, d, f), "dec": (b, f, d), "wgrad": (d, b, f)}
    out = {}
    mm = jax.jit(jnp.matmul)
    for name, (m, k, n) in shapes.items():
        a = jax.device_put(rng.standard_normal((m, k), dtype=np.float32))
        c = jax.device_put(rng.standard_normal((k, n), dtype=np.float32))
        t = statistics.median(_time(lambda a=a, c=c: mm(a, c), 2, iters))
        out[name] = 2.0 * m * k * n / t / 1e9
    out["ceiling_gflops"] = max(out.values())
    return out


def step_flops(arch: str, b: int, d: int, f: int, k: int) -> float:
    if arch == "topk":
        return 4.0 * b * d * f + 6.0 * b * k * d
    return 10.0 * b * d * f


def bench_arch(arch: str, iters: int, warmup: int, batches: list[np.ndarray]) -> dict:
    sae = C.SAEConfig(architecture=arch, d_sae=D_SAE, k=K)
    spec = recipes.spec_from_config(sae, D_IN, None)
    sched = recipes.resolve(arch, "topk", D_SAE, C.TrainConfig(steps=100_000, batch_size=BATCH, normalize="none"))
    tx = optim.make_optimizer(sched, spec.unit_norm_decoder)
    state = jax.jit(lambda key: state_lib.create(spec, tx, key, None, jnp.float32(1), jnp.float32(1)))(jax.random.key(0))
    step = jax.jit(make_train_step(spec, tx, sched, 10_000_000), donate_argnums=0)
    xs = [jax.device_put(x) for x in batches]
    box = {"state": state, "i": 0}

    def one():
        x = xs[box["i"] % len(xs)]
        box["state"], m = step(box["state"], x, x)
        box["i"] += 1
        return m["loss"]

    times = _time(one, warmup, iters)
    med = statistics.median(times)
    return {
        "arch": arch, "d_in": D_IN, "d_sae": D_SAE, "batch": BATCH, "k": K if arch == "topk" else None,
        "step_s_median": med, "step_s_min": min(times), "step_times": times,
        "tokens_per_s": BATCH / med,
        "gflops": step_flops(arch, BATCH, D_IN, D_SAE, K) / med / 1e9,
        "dense_equiv_gflops": 10.0 * BATCH * D_IN * D_SAE / med / 1e9,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="*", default=["topk", "relu", "jumprelu"])
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((BATCH, D_IN), dtype=np.float32) for _ in range(4)]
    ceiling = matmul_ceiling(BATCH, D_IN, D_SAE)
    results = []
    for arch in a.arch:
        r = bench_arch(arch, a.iters, a.warmup, batches)
        r["frac_of_ceiling"] = r["gflops"] / ceiling["ceiling_gflops"]
        results.append(r)
    report = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
                          "backend": jax.default_backend(), "device": str(jax.devices()[0])},
              "matmul": ceiling, "results": results}
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"float32 matmul ceiling: {ceiling['ceiling_gflops']:.1f} GFLOP/s "
              f"(enc {ceiling['enc']:.0f}, dec {ceiling['dec']:.0f}, wgrad {ceiling['wgrad']:.0f})")
        print(f"{'arch':10s} {'tokens/s':>10s} {'step ms':>9s} {'GFLOP/s':>9s} {'of ceiling':>11s} {'dense-equiv':>12s}")
        for r in results:
            print(f"{r['arch']:10s} {r['tokens_per_s']:10.0f} {1e3 * r['step_s_median']:9.1f} {r['gflops']:9.1f} "
                  f"{100 * r['frac_of_ceiling']:10.1f}% {r['dense_equiv_gflops']:10.1f} GF")
    return report


if __name__ == "__main__":
    main()
