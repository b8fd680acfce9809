"""Causal toolkit speed on the packaged SmolLM2: a full (layer x position) activation-patching
grid of hook_resid_pre, jaxsae's one compiled batched computation beside the same grid done with
transformers forward hooks (one forward per cell, the way TransformerLens-style loops run it),
and attribution patching (AtP) of the same grid.

  python -m benchmarks.causal [--seq 32 --layers 30 --batch 1] [--json]

The task is induction: clean [BOS, r, r] and corrupt [BOS, r, r'] (second half re-randomised),
metric the mean log-prob of the clean second half. Cells whose values are equal in both runs
(every position before the first changed token) change nothing; jaxsae skips them exactly, and
the grid is also timed without that (`--no-skip` numbers are printed as well). Compile time is
reported apart from the steady-state time. The matmul ceiling is the best float32 matmul of the
model's own MLP shape on this machine; `of ceiling` divides the FLOPs of one full forward per
cell (2 x non-embedding parameters x tokens, plus the unembedding) by the time and the ceiling:
a forward-equivalent rate (jaxsae skips the blocks before each cell's layer, so it does fewer).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np


def _once(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=32, help="tokens after BOS (two repeats of seq/2)")
    p.add_argument("--layers", type=int, default=30, help="patch hook_resid_pre of the first N blocks")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch
    import transformers

    from benchmarks.train_step import matmul_ceiling
    from jaxsae import causal, models, packaged

    path = packaged.smollm2_path()
    lm = models.load(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    n = a.seq // 2
    clean = causal.repeated_tokens(jax.random.key(0), a.batch, n, lm.config["vocab_size"], bos=1, low=1000)
    corrupt = clean.copy()
    corrupt[:, n + 1 :] = causal.repeated_tokens(jax.random.key(1), a.batch, n, lm.config["vocab_size"], low=1000)[:, :n]
    T = clean.shape[1]
    sites = [f"blocks.{i}.hook_resid_pre" for i in range(a.layers)]
    metric = causal.next_token_logprob(clean, n + 1)
    cells = a.layers * T

    # jaxsae: first call compiles; the second is the steady state
    run = lambda skip: causal.patch(lm, clean, corrupt, sites, metric, skip_unchanged=skip)  # noqa: E731
    _, first = _once(lambda: run(True))
    grid, t_grid = _once(lambda: run(True))
    _, first_noskip = _once(lambda: run(False))
    grid_noskip, t_noskip = _once(lambda: run(False))
    atp_run = lambda: causal.attribution_patch(lm, clean, corrupt, sites, metric)  # noqa: E731
    _, first_atp = _once(atp_run)
    atp, t_atp = _once(atp_run)

    # transformers: cache the clean inputs of every block, then one hooked forward per cell
    layers = hf.model.layers
    t_clean, t_corrupt = torch.from_numpy(clean).long(), torch.from_numpy(corrupt).long()
    saved = {}
    hooks = [layers[i].register_forward_pre_hook(
        lambda m, args, kw, i=i: saved.__setitem__(i, (args[0] if args else kw["hidden_states"]).clone()),
        with_kwargs=True) for i in range(a.layers)]
    with torch.no_grad():
        hf(t_clean)
    for h in hooks:
        h.remove()
    tgt = torch.from_numpy(clean[:, n + 2 :]).long()

    def hf_metric(logits):
        logp = torch.log_softmax(logits[:, n + 1 : -1].float(), -1)
        return float(torch.gather(logp, -1, tgt[..., None])[..., 0].mean())

    def hf_grid():
        out = np.zeros((a.layers, T))
        with torch.no_grad():
            for i in range(a.layers):
                for t in range(T):
                    def put(m, args, kw, i=i, t=t):
                        x = (args[0] if args else kw["hidden_states"]).clone()
                        x[:, t] = saved[i][:, t]
                        return ((x, *args[1:]), kw) if args else (args, {**kw, "hidden_states": x})

                    h = layers[i].register_forward_pre_hook(put, with_kwargs=True)
                    out[i, t] = hf_metric(hf(t_corrupt).logits)
                    h.remove()
        return out

    with torch.no_grad():
        m_c, m_r = hf_metric(hf(t_clean).logits), hf_metric(hf(t_corrupt).logits)
    hf_raw, t_hf = _once(hf_grid)
    hf_eff = (hf_raw - m_r) / (m_c - m_r)
    ours = np.stack([grid[s] for s in sites])
    agree = float(np.abs(ours - hf_eff).max())

    d, f, vocab = lm.config["hidden_size"], lm.config["intermediate_size"], lm.config["vocab_size"]
    n_params = sum(int(np.prod(p.shape)) for name, p in hf.named_parameters()
                                if "embed" not in name and "lm_head" not in name)
    flops_per_token = 2 * n_params + 2 * d * vocab
    grid_flops = cells * a.batch * T * flops_per_token
    ceiling = matmul_ceiling(a.batch * T * 8, d, f)["ceiling_gflops"]
    report = {
        "model": os.path.basename(path), "cells": cells, "batch": a.batch, "tokens_per_cell": a.batch * T,
        "seconds": {"jaxsae_grid": t_grid, "jaxsae_grid_no_skip": t_noskip, "jaxsae_atp": t_atp,
                    "transformers_grid": t_hf, "jaxsae_grid_compile_and_run": first,
                    "jaxsae_grid_no_skip_compile_and_run": first_noskip, "jaxsae_atp_compile_and_run": first_atp},
        "cells_per_s": {"jaxsae": cells / t_grid, "jaxsae_no_skip": cells / t_noskip, "transformers": cells / t_hf},
        "grid_tokens_per_s": {"jaxsae": cells * a.batch * T / t_grid, "jaxsae_no_skip": cells * a.batch * T / t_noskip,
                              "transformers": cells * a.batch * T / t_hf},
        "speedup_grid_vs_transformers": t_hf / t_grid,
        "speedup_grid_no_skip_vs_transformers": t_hf / t_noskip,
        "speedup_atp_vs_grid": t_grid / t_atp,
        "max_abs_difference_from_transformers": agree,
        "matmul_ceiling_gflops": ceiling,
        "of_ceiling": {"jaxsae_no_skip": grid_flops / t_noskip / 1e9 / ceiling,
                       "transformers": grid_flops / t_hf / 1e9 / ceiling},
        "torch_threads": torch.get_num_threads(),
        "atp_spearman_vs_patching": float(_spearman(ours.ravel(), np.stack([atp[s] for s in sites]).ravel())),
    }
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        s = report["seconds"]
        print(f"grid: {a.layers} layers x {T} positions = {cells} cells, {a.batch * T} tokens each")
        print(f"transformers hooks, one forward per cell   {s['transformers_grid']:8.2f} s  "
              f"({report['grid_tokens_per_s']['transformers']:.0f} tokens/s, "
              f"{100 * report['of_ceiling']['transformers']:.1f}% of the {ceiling:.0f} GFLOP/s matmul ceiling, "
              "forward-equivalent)")
        print(f"jaxsae patch, no skipping                  {s['jaxsae_grid_no_skip']:8.2f} s  "
              f"({report['grid_tokens_per_s']['jaxsae_no_skip']:.0f} tokens/s, "
              f"{100 * report['of_ceiling']['jaxsae_no_skip']:.1f}%)  {report['speedup_grid_no_skip_vs_transformers']:.1f}x")
        print(f"jaxsae patch (unchanged cells skipped)     {s['jaxsae_grid']:8.2f} s  "
              f"{report['speedup_grid_vs_transformers']:.1f}x faster than transformers")
        print(f"jaxsae AtP of the same grid                {s['jaxsae_atp']:8.2f} s  "
              f"{report['speedup_atp_vs_grid']:.0f}x faster than the grid; Spearman vs patching "
              f"{report['atp_spearman_vs_patching']:.2f}")
        print(f"first calls (compile + run): grid {s['jaxsae_grid_compile_and_run']:.1f} s, no-skip grid "
              f"{s['jaxsae_grid_no_skip_compile_and_run']:.1f} s, AtP {s['jaxsae_atp_compile_and_run']:.1f} s; "
              f"max |jaxsae - transformers| = {agree:.1e}")
    return report


def _spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


if __name__ == "__main__":
    main()
