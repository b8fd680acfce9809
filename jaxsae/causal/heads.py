"""Attention heads: patterns, induction and previous-token scores, repeated-token prompts.

  tokens = causal.repeated_tokens(key, batch=4, period=20, vocab=lm_vocab, bos=1)
  scores = causal.induction_scores(lm, tokens, period=20)      # [layers, heads]

On [BOS, r_1..r_n, r_1..r_n] an induction head at the second r_i attends to the token after
the first r_i: its score is mean_t A[t, t - n + 1] over the second repeat (Olsson et al. 2022).
A previous-token head attends to t - 1.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxsae import sites as sites_mod
from jaxsae.causal import patching


def repeated_tokens(key, batch: int, period: int, vocab: int, bos: int | None = None, low: int = 0) -> np.ndarray:
    """[batch, (1 if bos is not None) + 2 * period] ids: random tokens in [low, vocab), repeated once."""
    r = np.asarray(jax.random.randint(key, (batch, period), low, vocab))
    rows = np.concatenate([r, r], axis=1)
    if bos is not None:
        rows = np.concatenate([np.full((batch, 1), bos, rows.dtype), rows], axis=1)
    return rows.astype(np.int32)


def patterns(lm, tokens) -> np.ndarray:
    """Attention probabilities [layers, batch, heads, query, key]."""
    L = patching.n_blocks(lm)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(L)]
    _, cache = sites_mod.run_with_cache(lm, tokens, names)
    return np.stack([np.asarray(cache[n]) for n in names])


def _diagonal_score(pat, offset: int, first_query: int) -> np.ndarray:
    """mean over batch and queries t >= first_query of A[t, t - offset]: [layers, heads]."""
    q = np.arange(first_query, pat.shape[-2])
    return pat[..., q, q - offset].mean(axis=(1, 3))


def induction_scores(lm, tokens, period: int, bos: bool = True) -> np.ndarray:
    """[layers, heads] mean attention from each second-repeat token to the token after its first
    occurrence (tokens from `repeated_tokens`)."""
    start = (1 if bos else 0) + period
    return _diagonal_score(patterns(lm, tokens), period - 1, start)


def previous_token_scores(lm, tokens, first: int = 1) -> np.ndarray:
    """[layers, heads] mean attention from each position t >= first to t - 1."""
    return _diagonal_score(patterns(lm, tokens), 1, max(first, 1))
