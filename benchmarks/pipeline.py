"""Input-pipeline throughput, in one run so ratios are comparable on a noisy machine:

  harvest           SmolLM2-135M truncated after layer L, Shakespeare windows -> activation store
  train (memory)    TopK step on the same activations held in memory (npy source)
  train (store)     the same run reading the store through Grain (global shuffle, read-ahead)
  train (stream)    LM forward -> mixing buffer -> step, no disk

If `train (store)` is well below `train (memory)`, the store reads stall the step; `stream` is
bounded by the LM forward (compare it with `harvest`). The train step's FLOPs are also given as a
fraction of this machine's float32 matmul ceiling (benchmarks.train_step).

  python -m benchmarks.pipeline [--layer 6 --windows 256 --steps 60 --batch 1024 --d_sae 4608] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def _train_tok_s(values: dict, workdir: str) -> float:
    from jaxsae import config as C
    from jaxsae.train import loop

    run = loop.train(C.from_dict(values), workdir, progress=False)
    rows = [m for m in run.metrics if "tokens_per_s" in m]
    return float(np.median([m["tokens_per_s"] for m in rows[1:]] or [rows[-1]["tokens_per_s"]]))  # skip compile


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--d_sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from benchmarks.train_step import matmul_ceiling, step_flops
    from jaxsae.config import LMConfig, TextConfig
    from jaxsae.data import harvest
    from jaxsae.data.store import Store

    site = f"blocks.{a.layer}.hook_resid_post"
    tmp = tempfile.mkdtemp(prefix="jaxsae-bench-")
    lm_cfg = LMConfig(sites=(site,), context=128, batch_windows=16, windows=a.windows)
    t0 = time.perf_counter()  # one batch: loading, tokenizing, compiling, one forward
    warm = harvest.harvest(LMConfig(sites=(site,), context=128, batch_windows=16, windows=16), TextConfig(),
                           os.path.join(tmp, "warm"), progress=False)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    man = harvest.harvest(lm_cfg, TextConfig(), os.path.join(tmp, "store"), progress=False)
    harvest_s = time.perf_counter() - t0 - warm_s  # the same fixed costs taken off: steady state
    store = os.path.join(tmp, "store")
    rows = Store(store).site(site)
    np.save(os.path.join(tmp, "acts.npy"), rows[np.arange(len(rows))].astype(np.float32))

    base = {"sae": {"architecture": "topk", "d_sae": a.d_sae, "k": a.k},
            "train": {"steps": a.steps, "batch_size": a.batch, "log_every": 10, "checkpoint_every": 10 * a.steps,
                      "dead_tokens": 10 * a.batch}}
    res = {"harvest_tokens_per_s": (man["tokens"] - warm["tokens"]) / harvest_s}
    res["train_memory_tokens_per_s"] = _train_tok_s({**base, "data": {"source": "npy", "path": os.path.join(tmp, "acts.npy")}},
                                                    os.path.join(tmp, "mem"))
    res["train_store_tokens_per_s"] = _train_tok_s({**base, "data": {"source": "store", "path": store}},
                                                   os.path.join(tmp, "store_run"))
    res["train_stream_tokens_per_s"] = _train_tok_s({**base, "data": {"source": "stream", "lm": {
        "sites": [site], "context": 128, "batch_windows": 16, "buffer_batches": 8}}}, os.path.join(tmp, "stream"))
    d = rows.shape[1]
    ceiling = matmul_ceiling(a.batch, d, a.d_sae)["ceiling_gflops"]
    flops_per_token = step_flops("topk", a.batch, d, a.d_sae, a.k) / a.batch
    report = {"site": site, "store_tokens": man["tokens"], "d_in": d, "d_sae": a.d_sae, "batch": a.batch,
              "tokens_per_s": res, "store_vs_memory": res["train_store_tokens_per_s"] / res["train_memory_tokens_per_s"],
              "stream_vs_memory": res["train_stream_tokens_per_s"] / res["train_memory_tokens_per_s"],
              "matmul_ceiling_gflops": ceiling,
              "frac_of_ceiling": {k: v * flops_per_token / 1e9 / ceiling for k, v in res.items() if k.startswith("train")}}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in res.items():
            frac = report["frac_of_ceiling"].get(k)
            print(f"{k:28s} {v:10.0f} tokens/s" + (f"   {100 * frac:5.1f}% of matmul ceiling" if frac else ""))
        print(f"store / memory {report['store_vs_memory']:.2f}x, stream / memory {report['stream_vs_memory']:.2f}x; "
              f"ceiling {ceiling:.0f} GFLOP/s")
    return report


if __name__ == "__main__":
    main()
