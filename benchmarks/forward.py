"""SmolLM2-135M forward throughput, jaxsae (Penzai, jitted) vs transformers (torch, CPU), on the
same dequantised GGUF weights and the same token batch, full and truncated after layer 6.

  python -m benchmarks.forward [--batch 8 --seq 256 --iters 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np


def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch
    import transformers

    from jaxsae import models, packaged, sites

    path = packaged.smollm2_path()
    lm = models.load(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, lm.config["vocab_size"], size=(a.batch, a.seq))
    t_tokens = torch.from_numpy(tokens)
    site = f"blocks.{a.layer}.hook_resid_post"
    n_tok = a.batch * a.seq

    def jax_full():
        jax.block_until_ready(lm(tokens))

    def jax_trunc():
        jax.block_until_ready(sites.run_with_cache(lm, tokens, [site], stop_early=True)[1][site])

    def hf_full():
        with torch.no_grad():
            hf(t_tokens)

    full_layers = hf.model.layers

    def hf_trunc():
        hf.model.layers = torch.nn.ModuleList(list(full_layers)[: a.layer + 1])
        try:
            with torch.no_grad():
                hf.model(t_tokens)
        finally:
            hf.model.layers = full_layers

    res = {}
    for name, fn in (("jaxsae_full", jax_full), ("transformers_full", hf_full),
                     ("jaxsae_truncated", jax_trunc), ("transformers_truncated", hf_trunc)):
        res[name] = n_tok / _time(fn, 2, a.iters)
    report = {
        "model": os.path.basename(path), "batch": a.batch, "seq": a.seq, "truncated_after_layer": a.layer,
        "tokens_per_s": res, "torch_threads": torch.get_num_threads(),
        "ratio_full": res["jaxsae_full"] / res["transformers_full"],
        "ratio_truncated": res["jaxsae_truncated"] / res["transformers_truncated"],
        "truncation_speedup_jaxsae": res["jaxsae_truncated"] / res["jaxsae_full"],
    }
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:24s} {v:10.0f} tokens/s")
        print(f"jaxsae / transformers: full {report['ratio_full']:.2f}x, truncated {report['ratio_truncated']:.2f}x; "
              f"truncating after layer {a.layer} speeds jaxsae up {report['truncation_speedup_jaxsae']:.1f}x")
    return report


if __name__ == "__main__":
    main()
