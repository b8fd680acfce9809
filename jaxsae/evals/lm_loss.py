"""Next-token cross-entropy and perplexity of a language model on token windows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _nll_from_logits(logits_btv: jax.Array, tokens_bt: jax.Array, mask_bt: jax.Array):
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    nll_bt = -jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    m = mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(nll_bt * m), jnp.sum(m)


def token_nll(lm, tokens_bt, mask_bt=None) -> tuple[float, int]:
    """(summed NLL, number of predicted tokens). mask_bt marks tokens that count as targets
    (False for BOS/pad); position 0 is never a target."""
    tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
    mask_bt = jnp.ones(tokens_bt.shape, bool) if mask_bt is None else jnp.asarray(mask_bt, bool)
    total, count = _nll_from_logits(lm(tokens_bt), tokens_bt, mask_bt)
    return float(total), int(count)


def perplexity(lm, tokens_bt, mask_bt=None) -> float:
    total, count = token_nll(lm, tokens_bt, mask_bt)
    return float(np.exp(total / max(count, 1)))
