"""Statistics estimated from data before training: input-norm scale and the b_dec init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def norm_scale(x_nd: np.ndarray | jax.Array, scheme: str) -> float:
    """The fixed scalar c so that the model trains on c * x.

    expected_norm: E||c x|| = sqrt(d) (Anthropic April 2024; SAELens expected_average_only_in).
    unit_msn: E||c x||^2 = 1 (Gemma Scope / JumpReLU). none: 1.
    """
    x = np.asarray(x_nd, np.float64)
    if scheme == "none":
        return 1.0
    if scheme == "expected_norm":
        mean_norm = np.linalg.norm(x, axis=-1).mean()
        return float(np.sqrt(x.shape[-1]) / max(mean_norm, 1e-12))
    if scheme == "unit_msn":
        return float(1.0 / np.sqrt(max(np.mean(np.sum(x * x, axis=-1)), 1e-24)))
    raise ValueError(f"unknown normalisation scheme {scheme!r}; valid: none, expected_norm, unit_msn")


@jax.jit
def geometric_median(x_nd: jax.Array, eps: float = 1e-8, tol: float = 1e-5) -> jax.Array:
    """Weiszfeld iteration from the mean, at most 100 steps, stopping when ||dy|| < tol."""
    x = x_nd.astype(jnp.float32)

    def cond(c):
        i, _, delta = c
        return (i < 100) & (delta >= tol)

    def body(c):
        i, y, _ = c
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - y, axis=-1), eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        return i + 1, y_new, jnp.linalg.norm(y_new - y)

    _, y, _ = jax.lax.while_loop(cond, body, (0, x.mean(0), jnp.float32(jnp.inf)))
    return y
