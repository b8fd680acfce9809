"""Gated SAE (Rajamanoharan et al. 2024, 2404.16014).

gate = (x - b_dec) W_gate + b_gate; mag = (x - b_dec) (exp(r_mag) * W_gate) + b_mag;
f = H(gate) * ReLU(mag). Loss = ||x - x_hat||^2 + lambda ||ReLU(gate)||_1
+ ||x - (ReLU(gate) sg(W_dec) + sg(b_dec))||^2: the auxiliary term, through a frozen decoder, is
the only reconstruction signal the gate gets. `W_enc` (SAELens's name) is W_gate.
At inference it equals a JumpReLU on `mag` with theta = max(0, b_mag - exp(r_mag) b_gate).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Gated(Dictionary):
    sparsity_coefficient: float = 1.0

    name: ClassVar[str] = "gated"
    saelens_architecture: ClassVar[str] = "gated"
    default_b_dec_to_input: ClassVar[bool] = True

    def param_shapes(self):
        shapes = super().param_shapes()
        del shapes["b_enc"]
        f = self.d_sae
        shapes["b_gate"] = ((f,), (axes.D_SAE,))
        shapes["r_mag"] = ((f,), (axes.D_SAE,))
        shapes["b_mag"] = ((f,), (axes.D_SAE,))
        return shapes

    def init(self, key, b_dec_init=None):
        params = super().init(key, b_dec_init)
        del params["b_enc"]
        zeros = jnp.zeros((self.d_sae,), jnp.float32)
        params.update(b_gate=zeros, r_mag=zeros, b_mag=zeros)
        return params

    def _gate_mag(self, params, x_bd):
        xc = x_bd - params["b_dec"] if self.apply_b_dec_to_input else x_bd
        proj_bf = xc @ params["W_enc"]
        gate = ops.add_bias(proj_bf, params["b_gate"])
        return gate, ops.add_bias(ops.scale_cols(proj_bf, jnp.exp(params["r_mag"])), params["b_mag"])

    def pre_acts(self, params, x_bd):
        return self._gate_mag(params, x_bd)[1]

    def encode(self, params, x_bd):
        gate, mag = self._gate_mag(params, x_bd)
        return (gate > 0).astype(mag.dtype) * jax.nn.relu(mag)

    def loss(self, params, x_bd, y_bo, ctx: LossContext) -> LossOutput:
        gate_bf, mag_bf = self._gate_mag(params, x_bd)
        f_bf = (gate_bf > 0).astype(mag_bf.dtype) * jax.nn.relu(mag_bf)
        skip = self.skip_out(params, x_bd)
        yhat_bo = self.decode(params, f_bf) + skip
        rec = sse_mean(y_bo - yhat_bo)
        relu_gate = jax.nn.relu(gate_bf)
        l1 = jnp.mean(jnp.sum(relu_gate, axis=-1))
        yaux_bo = relu_gate @ jax.lax.stop_gradient(params["W_dec"]) + jax.lax.stop_gradient(params["b_dec"]) + skip
        aux = sse_mean(y_bo - yaux_bo)
        loss = rec + self.sparsity_coefficient * ctx.sparsity_scale * l1 + aux
        l0 = jnp.mean(jnp.sum(gate_bf > 0, axis=-1).astype(jnp.float32))
        metrics = {**base_metrics(y_bo, yhat_bo, l0), "loss_rec": rec, "loss_l1": l1, "loss_aux": aux}
        return LossOutput(loss, ops.batch_any(f_bf > 0), metrics, jnp.float32(jnp.nan))

    def fold_decoder_norms(self, params):
        n_f = jnp.linalg.norm(params["W_dec"], axis=-1) + 1e-8
        out = dict(params)
        out["W_dec"] = params["W_dec"] / n_f[:, None]
        out["W_enc"] = params["W_enc"] * n_f[None, :]
        out["b_gate"] = params["b_gate"] * n_f
        out["b_mag"] = params["b_mag"] * n_f
        return out

    def jumprelu_threshold(self, params) -> jax.Array:
        return jnp.maximum(0.0, params["b_mag"] - jnp.exp(params["r_mag"]) * params["b_gate"])
