"""An 8-dictionary sweep from the stream against 8 separate runs, in one process so the ratio is
comparable on a noisy machine (issue target: the sweep at least 4x faster).

Streaming pays the LM forward for every batch; the sweep pays it once for all 8 dictionaries
(k = 16..128 x two learning rates, TopK, one compiled step). Reports wall time per run after
compilation (steps 2..n) and tokens/s of dictionary training.

  python -m benchmarks.sweep [--steps 30 --batch 512 --d_sae 2304 --layer 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def _cfg(a):
    from jaxsae import config as C

    return C.from_dict({
        "sae": {"architecture": "topk", "d_sae": a.d_sae, "k": 32},
        "train": {"steps": a.steps, "batch_size": a.batch, "log_every": 5, "checkpoint_every": a.steps,
                  "norm_batches": 2, "b_dec_samples": a.batch, "dead_tokens": 100_000},
        "data": {"source": "stream", "site": f"blocks.{a.layer}.hook_resid_post",
                 "lm": {"sites": [f"blocks.{a.layer}.hook_resid_post"], "context": 128, "batch_windows": 8,
                        "buffer_batches": 2}}})


def _timed(cfg, workdir, sweep=None) -> float:
    from jaxsae.train import loop

    t = time.perf_counter()
    loop.train(cfg, workdir, progress=False, sweep=sweep)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--d_sae", type=int, default=2304)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from jaxsae import config as C
    from jaxsae.train import sweep

    grid = sweep.variants({"k": [16.0, 32.0, 64.0, 128.0], "lr": [3e-4, 1e-3]})
    base = _cfg(a)
    with tempfile.TemporaryDirectory() as tmp:
        t_sweep = _timed(base, f"{tmp}/sweep", sweep=grid)
        t_sep = []
        for i, v in enumerate(grid):
            d = C.to_dict(base)
            d["sae"]["k"], d["train"]["lr"] = v["k"], v["lr"]
            t_sep.append(_timed(C.from_dict(d), f"{tmp}/run{i}"))
    tokens = a.steps * a.batch
    out = {"dictionaries": len(grid), "steps": a.steps, "batch": a.batch, "d_sae": a.d_sae,
           "sweep_s": round(t_sweep, 2), "separate_s": round(sum(t_sep), 2),
           "speedup": round(sum(t_sep) / t_sweep, 2),
           "sweep_dictionary_tokens_per_s": round(len(grid) * tokens / t_sweep),
           "separate_dictionary_tokens_per_s": round(len(grid) * tokens / sum(t_sep))}
    print(json.dumps(out) if a.json else "\n".join(f"{k:34s} {v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
