"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"; the Gemma Scope recipe).

f = pre * H(pre - theta), theta = exp(log_threshold) > 0 per latent. Loss: SSE-mean +
lambda * L0, where L0 = sum_i H(pre_i - theta_i). H has no gradient, so theta learns through
kernel-density straight-through estimators with a rectangle kernel of width `bandwidth`:

  d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps),   d H / d theta = -(1/eps) K(..)
  d JumpReLU / d pre   = H(pre - theta),                            d H / d pre   = 0

Both are `jax.custom_vjp`s; the threshold cotangent is reduced over every leading axis.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxsae import axes, ops
from jaxsae.dictionaries.base import (
    Dictionary,
    LossContext,
    LossOutput,
    base_metrics,
    sse_mean,
)


def _rect(z, theta, eps):
    return (jnp.abs((z - theta) / eps) < 0.5).astype(z.dtype)


def _sum_to_theta(g, theta):
    """Reduce every leading axis (batch, sequence) to theta's shape ([F], or [L, F] for a CLT)."""
    return ops.batch_sum(g.reshape(-1, theta.size)).reshape(theta.shape)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(z, theta, eps):
    """Heaviside H(z - theta) with the KDE pseudo-derivative for theta (zero for z)."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, eps):
    return step(z, theta, eps), (z, theta)


def _step_bwd(eps, res, g):
    z, theta = res
    dtheta = _sum_to_theta(-(1.0 / eps) * _rect(z, theta, eps) * g, theta)
    return jnp.zeros_like(z), dtheta


step.defvjp(_step_fwd, _step_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z, theta, eps):
    """z * H(z - theta), straight-through in z, KDE pseudo-derivative in theta."""
    return z * (z > theta).astype(z.dtype)


def _jr_fwd(z, theta, eps):
    return jumprelu(z, theta, eps), (z, theta)


def _jr_bwd(eps, res, g):
    z, theta = res
    gate = (z > theta).astype(z.dtype)
    dtheta = _sum_to_theta(-(theta / eps) * _rect(z, theta, eps) * g, theta)
    return gate * g, dtheta


jumprelu.defvjp(_jr_fwd, _jr_bwd)


@dataclasses.dataclass(frozen=True)
class JumpReLU(Dictionary):
    sparsity_coefficient: float = 1e-3  # lambda on L0 (scale-dependent: tune per site)
    bandwidth: float = 1e-3  # paper/Gemma Scope value for unit-mean-squared-norm inputs
    threshold_init: float = 1e-3

    name: ClassVar[str] = "jumprelu"
    saelens_architecture: ClassVar[str] = "jumprelu"

    def __post_init__(self):
        super().__post_init__()
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ValueError("jumprelu: bandwidth and threshold_init must be > 0")

    def param_shapes(self):
        shapes = super().param_shapes()
        shapes["log_threshold"] = ((self.d_sae,), (axes.D_SAE,))
        return shapes

    def init(self, key, b_dec_init=None):
        params = super().init(key, b_dec_init)
        params["log_threshold"] = jnp.full((self.d_sae,), math.log(self.threshold_init), jnp.float32)
        return params

    def encode(self, params, x_bd):
        theta = jnp.exp(params["log_threshold"])
        return jumprelu(self.pre_acts(params, x_bd), theta, self.bandwidth)

    def loss(self, params, x_bd, y_bo, ctx: LossContext) -> LossOutput:
        pre_bf = self.pre_acts(params, x_bd)
        theta_f = jnp.exp(params["log_threshold"])
        f_bf = jumprelu(pre_bf, theta_f, self.bandwidth)
        yhat_bo = self.decode(params, f_bf) + self.skip_out(params, x_bd)
        rec = sse_mean(y_bo - yhat_bo)
        l0 = jnp.mean(jnp.sum(step(pre_bf, theta_f, self.bandwidth), axis=-1))
        loss = rec + self.sparsity_coefficient * ctx.sparsity_scale * l0
        metrics = {**base_metrics(y_bo, yhat_bo, l0), "loss_rec": rec, "loss_l0": l0}
        return LossOutput(loss, ops.batch_any(f_bf != 0), metrics, jnp.float32(jnp.nan))

    def fold_decoder_norms(self, params):
        out = super().fold_decoder_norms(params)
        n_f = jnp.linalg.norm(params["W_dec"], axis=-1) + 1e-8
        out["log_threshold"] = params["log_threshold"] + jnp.log(n_f)
        return out
