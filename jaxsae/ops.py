"""Reductions over the batch written as matmuls, and the bias ops whose gradients need them.

XLA's CPU backend reduces a row-major [B, F] array over B (a "column" reduction) about 30x slower
than it multiplies it by a ones vector (measured at B=4096, F=24576: 515 ms vs 17 ms), and autodiff
of `x @ W + b` produces exactly such a reduction for db. These helpers keep every batch reduction
of a [B, F] array on the matmul path. The ones-vector products run at HIGHEST precision so TPUs
(whose default f32 matmul precision is lower) sum exactly as a reduction would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def batch_sum(a: jax.Array) -> jax.Array:
    """Sum over every leading axis: [..., F] -> [F]."""
    a2 = a.reshape(-1, a.shape[-1])
    return jnp.matmul(jnp.ones((a2.shape[0],), a2.dtype), a2, precision=jax.lax.Precision.HIGHEST)


def batch_any(mask: jax.Array) -> jax.Array:
    """Logical or over every leading axis of a boolean array: [..., F] -> bool[F]."""
    return batch_sum(mask.astype(jnp.float32)) > 0


@jax.custom_vjp
def add_bias(a: jax.Array, b_f: jax.Array) -> jax.Array:
    """a + b (b broadcast over leading axes); db is a batch_sum."""
    return a + b_f


def _add_bias_fwd(a, b_f):
    return a + b_f, None


def _add_bias_bwd(_, g):
    return g, batch_sum(g)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def scale_cols(a: jax.Array, s_f: jax.Array) -> jax.Array:
    """a * s (s broadcast over leading axes); ds is a batch_sum."""
    return a * s_f


def _scale_cols_fwd(a, s_f):
    return a * s_f, (a, s_f)


def _scale_cols_bwd(res, g):
    a, s_f = res
    return g * s_f, batch_sum(g * a)


scale_cols.defvjp(_scale_cols_fwd, _scale_cols_bwd)
