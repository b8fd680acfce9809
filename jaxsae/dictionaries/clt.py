"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing"; docs/methods.md section 7).

L layers, F latents per layer. Layer-l latents read the MLP input at l and write to every MLP
output l' >= l (L(L+1)/2 decoders):

  a^l = sigma(x^l W_enc^l + b_enc^l),      y_hat^l' = sum_{l <= l'} a^l W_dec^{l -> l'} + b_dec^l'

Parameters, in circuit-tracer's layout: `W_enc[L, D, F]`, `b_enc[L, F]`, `b_dec[L, O]`,
`W_dec_{l}[F, L - l, O]` (row i of `W_dec_l[:, m]` is latent i's write into layer l + m) and, for
JumpReLU, `log_threshold[L, F]`. Inputs are [B, L, D], targets [B, L, O]; the latent axis of every
array is the `D_SAE` logical axis, so on a mesh each device holds F / model latents of every layer
and the decoder sums are all-reduced over `model` (the L(L+1)/2 decoders never sit on one device).

Activations (`activation`):
  jumprelu   the Anthropic recipe: loss = sum_l ||y^l - y_hat^l||^2
             + lambda * sum_{l,i} tanh(c * ||W_dec,i^l|| * a_i^l) + lambda_P * sum ReLU(theta - pre) ||W_dec,i^l||
             with ||W_dec,i^l|| the norm of latent i's decoders to every layer l' >= l (concatenated);
             thresholds learn through the straight-through estimators of jumprelu.py.
  topk       k per layer and token; + AuxK over dead latents (the residual of every output layer).
  batchtopk  B * k per layer over the batch, with the threshold EMA per layer; exported as JumpReLU.
The decoder is unconstrained (its norms enter the penalty); nothing renormalises it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxsae import axes
from jaxsae.dictionaries import latent_ops
from jaxsae.dictionaries.base import (
    EPS,
    Dictionary,
    LossContext,
    LossOutput,
    batch_kth_largest,
    dense_aux_k_loss,
    n_batch_keep,
    threshold_ema,
)
from jaxsae.dictionaries.jumprelu import jumprelu, step

ACTIVATIONS = ("jumprelu", "topk", "batchtopk")


@dataclasses.dataclass(frozen=True)
class CrossLayerTranscoder(Dictionary):
    """d_in / d_out: the MLP input / output width; d_sae: latents per layer; n_layers: L."""

    n_layers: int = 2
    activation: str = "jumprelu"
    k: float = 32  # topk: per layer and token; batchtopk: mean per layer and token
    sparsity_coefficient: float = 0.3  # jumprelu: lambda_S of the tanh penalty (sets L0: tune per site)
    tanh_c: float = 4.0
    pre_act_coefficient: float = 3e-6  # jumprelu: lambda_P
    bandwidth: float = 1.0  # jumprelu: in expected-norm (sqrt d) units
    threshold_init: float = 0.5  # in expected-norm units (pre-activations are O(1))
    k_aux: int | None = None
    aux_alpha: float = 1 / 32
    threshold_ema: float = 0.999
    threshold_start_step: int = 1000
    unit_norm_decoder: bool = False
    decoder_init_norm: float = 0.1

    name: ClassVar[str] = "clt"
    export_format: ClassVar[str] = "circuit_tracer"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ValueError(f"clt: n_layers must be a positive int, got {self.n_layers!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"clt: unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.activation != "jumprelu" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"clt: k must be in (0, d_sae={self.d_sae}], got {self.k!r}")
        if self.activation == "topk" and not float(self.k).is_integer():
            raise ValueError(f"clt: topk needs an integer k, got {self.k!r}")
        if self.unit_norm_decoder or self.apply_b_dec_to_input or self.skip:
            raise ValueError("clt: unit_norm_decoder, apply_b_dec_to_input and skip are not supported (the "
                             "decoder norms are part of the penalty; inputs and outputs are different spaces)")

    @classmethod
    def create(cls, **kw):
        return cls(**kw)

    # ----------------------------------------------------------------- shapes
    @property
    def is_transcoder(self) -> bool:
        return True

    @property
    def n_decoders(self) -> int:
        return self.n_layers * (self.n_layers + 1) // 2

    def param_shapes(self):
        L, d, f, o = self.n_layers, self.d_in, self.d_sae, self.out_dim
        shapes = {
            "W_enc": ((L, d, f), (axes.LAYER, axes.D_IN, axes.D_SAE)),
            "b_enc": ((L, f), (axes.LAYER, axes.D_SAE)),
            "b_dec": ((L, o), (axes.LAYER, axes.D_OUT)),
        }
        for layer in range(L):
            shapes[f"W_dec_{layer}"] = ((f, L - layer, o), (axes.D_SAE, axes.LAYER, axes.D_OUT))
        if self.activation == "jumprelu":
            shapes["log_threshold"] = ((L, f), (axes.LAYER, axes.D_SAE))
        return shapes

    def input_axes(self):
        return (axes.BATCH, axes.LAYER, axes.D_IN)

    def target_axes(self):
        return (axes.BATCH, axes.LAYER, axes.D_OUT)

    # ----------------------------------------------------------------- init
    def init(self, key, b_dec_init=None):
        """Encoder columns: random unit vectors. Each latent's concatenated decoder: a random
        direction of norm `decoder_init_norm`. b_dec: the per-layer target mean (from data)."""
        L, d, f, o = self.n_layers, self.d_in, self.d_sae, self.out_dim
        k_enc, k_dec = jax.random.split(key)
        w_enc = jax.random.normal(k_enc, (L, d, f), jnp.float32)
        w_enc = w_enc / (jnp.linalg.norm(w_enc, axis=1, keepdims=True) + EPS)
        params = {"W_enc": w_enc, "b_enc": jnp.zeros((L, f), jnp.float32),
                  "b_dec": jnp.zeros((L, o), jnp.float32) if b_dec_init is None
                  else jnp.asarray(b_dec_init, jnp.float32).reshape(L, o)}
        decs = [jax.random.normal(jax.random.fold_in(k_dec, layer), (f, L - layer, o), jnp.float32)
                for layer in range(L)]
        for layer, w in enumerate(decs):
            norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=(1, 2), keepdims=True))
            params[f"W_dec_{layer}"] = self.decoder_init_norm * w / (norm + EPS)
        if self.activation == "jumprelu":
            params["log_threshold"] = jnp.full((L, f), math.log(self.threshold_init), jnp.float32)
        return params

    # ----------------------------------------------------------------- forward
    def pre_acts(self, params, x_bld):
        return jnp.einsum("...ld,ldf->...lf", x_bld, params["W_enc"]) + params["b_enc"]

    def decoder_norms(self, params) -> jax.Array:
        """[L, F]: the norm of each latent's decoders to every layer it writes (concatenated)."""
        return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(params[f"W_dec_{layer}"]), axis=(1, 2)))
                          for layer in range(self.n_layers)])

    def _activate(self, params, pre_blf, batch_level: bool):
        """(a [.., L, F], per-layer batch threshold [L] or nan)."""
        if self.activation == "jumprelu":
            return jumprelu(pre_blf, jnp.exp(params["log_threshold"]), self.bandwidth), jnp.full((self.n_layers,), jnp.nan)
        if self.activation == "topk":
            lead = pre_blf.shape[:-1]
            flat = pre_blf.reshape(-1, self.d_sae)
            vals, idx = latent_ops.top_k(flat, int(self.k))
            rows = jnp.arange(flat.shape[0])[:, None]
            a = jnp.zeros_like(flat).at[rows, idx].set(jax.nn.relu(vals))
            return a.reshape(*lead, self.d_sae), jnp.full((self.n_layers,), jnp.nan)
        # batchtopk: the floor(B * k) largest activations of each layer over the whole batch
        a = jax.nn.relu(pre_blf)
        if not batch_level:
            raise ValueError("clt(batchtopk): inference uses the JumpReLU from `to_inference`")
        per_layer = jnp.moveaxis(a.reshape(-1, self.n_layers, self.d_sae), 1, 0)  # [L, N, F]
        n_keep = n_batch_keep(per_layer.shape[1], self.k)
        thr_l = jax.vmap(lambda a_nf: batch_kth_largest(a_nf, n_keep))(per_layer)
        keep = (a >= thr_l[:, None]) & (a > 0)
        return jnp.where(keep, a, 0.0), thr_l

    def encode(self, params, x_bld):
        return self._activate(params, self.pre_acts(params, x_bld), batch_level=True)[0]

    def decode(self, params, a_blf, bias: bool = True):
        """y_hat [.., L, O]: each layer's latents through its decoders to layers >= it."""
        lead = a_blf.shape[:-2]
        out = jnp.zeros((*lead, self.n_layers, self.out_dim), a_blf.dtype)
        for layer in range(self.n_layers):
            part = jnp.einsum("...f,fmo->...mo", a_blf[..., layer, :], params[f"W_dec_{layer}"])
            out = out.at[..., layer:, :].add(part)
        return out + params["b_dec"] if bias else out

    def forward(self, params, x_bld):
        return self.decode(params, self.encode(params, x_bld))

    # ----------------------------------------------------------------- training
    @property
    def aux_k(self) -> int:
        return min(self.d_sae, self.k_aux if self.k_aux is not None else max(1, self.d_in // 2))

    def loss(self, params, x_bld, y_blo, ctx: LossContext) -> LossOutput:
        pre_blf = self.pre_acts(params, x_bld)
        a_blf, thr_l = self._activate(params, pre_blf, batch_level=True)
        yhat_blo = self.decode(params, a_blf)
        err_blo = y_blo - yhat_blo
        sse_bl = jnp.sum(jnp.square(err_blo), axis=-1)
        rec = jnp.mean(jnp.sum(sse_bl, axis=-1))
        metrics = {"loss_rec": rec}
        loss = rec
        if self.activation == "jumprelu":
            theta_lf = jnp.exp(params["log_threshold"])
            norms_lf = self.decoder_norms(params)
            sparsity = jnp.mean(jnp.sum(jnp.tanh(self.tanh_c * norms_lf * a_blf), axis=(-2, -1)))
            pre_loss = jnp.mean(jnp.sum(jax.nn.relu(theta_lf - pre_blf) * norms_lf, axis=(-2, -1)))
            l0_bl = jnp.sum(step(pre_blf, theta_lf, self.bandwidth), axis=-1)
            loss = loss + self.sparsity_coefficient * ctx.sparsity_scale * sparsity + self.pre_act_coefficient * pre_loss
            metrics.update(loss_sparsity=sparsity, loss_pre_act=pre_loss)
        else:
            l0_bl = jnp.sum(a_blf > 0, axis=-1).astype(jnp.float32)
            aux = self._aux_loss(params, pre_blf, err_blo, ctx.dead_f)
            loss = loss + self.aux_alpha * aux
            metrics["loss_aux"] = aux
        var_bl = jnp.sum(jnp.square(y_blo - jnp.mean(y_blo, axis=0)), axis=-1)
        fvu_l = jnp.sum(sse_bl, axis=0) / jnp.maximum(jnp.sum(var_bl, axis=0), EPS)
        metrics.update(l2_loss=rec, mse=rec / (self.n_layers * self.out_dim), fvu=jnp.mean(fvu_l),
                       l0=jnp.mean(jnp.sum(l0_bl, axis=-1)), l0_per_layer=jnp.mean(l0_bl))
        for layer in range(self.n_layers):
            metrics[f"fvu_layer{layer}"] = fvu_l[layer]
        fired_lf = jnp.any((a_blf > 0).reshape(-1, self.n_layers, self.d_sae), axis=0)
        return LossOutput(loss, fired_lf, metrics, thr_l)

    def _aux_loss(self, params, pre_blf, err_blo, dead_lf):
        """AuxK per layer: the top-k_aux dead latents of each layer reconstruct the residual of
        every output layer through the decoder."""
        return dense_aux_k_loss(self.decode, params, pre_blf, err_blo, dead_lf, self.aux_k,
                                self.aux_k * self.n_layers)

    def init_state(self):
        state = {"tokens_since_fired": jnp.zeros((self.n_layers, self.d_sae), jnp.int32)}
        if self.activation == "batchtopk":
            state["threshold"] = jnp.full((self.n_layers,), -1.0, jnp.float32)
        return state

    def state_axes(self):
        out = {"tokens_since_fired": (axes.LAYER, axes.D_SAE)}
        if self.activation == "batchtopk":
            out["threshold"] = (axes.LAYER,)
        return out

    def update_state(self, state, out: LossOutput, n_tokens, step):
        state = super().update_state(state, out, n_tokens, step)
        if self.activation == "batchtopk":
            state = {**state, "threshold": threshold_ema(state["threshold"], out.batch_threshold, self.threshold_ema,
                                                         step, self.threshold_start_step)}
        return state

    # ----------------------------------------------------------------- export
    def to_inference(self, params, state):
        """TopK stays TopK; BatchTopK becomes JumpReLU with each layer's learned threshold."""
        if self.activation != "batchtopk":
            return self, params
        thr = None if state is None else state.get("threshold")
        if thr is None or float(jnp.min(jnp.asarray(thr))) < 0:
            raise ValueError(f"clt(batchtopk): the inference thresholds were never estimated (training stopped "
                             f"before threshold_start_step={self.threshold_start_step}); train longer or lower it")
        spec = dataclasses.replace(self, activation="jumprelu")
        out = dict(params)
        log_thr = jnp.log(jnp.maximum(jnp.asarray(thr, jnp.float32), 1e-30))
        out["log_threshold"] = jnp.broadcast_to(log_thr[:, None], (self.n_layers, self.d_sae))
        return spec, out

    def fold_decoder_norms(self, params):
        return dict(params)  # unconstrained by design: the exported decoder is the trained one

    def fold_input_scaling(self, params, c_in, c_out):
        """Trained on (c_in[l] x^l -> c_out[l] y^l); c_in, c_out are scalars or [L] / [L, 1]."""
        L = self.n_layers
        c_in_l = jnp.broadcast_to(jnp.asarray(c_in, jnp.float32).reshape(-1), (L,))
        c_out_l = jnp.broadcast_to(jnp.asarray(c_out, jnp.float32).reshape(-1), (L,))
        out = dict(params)
        out["W_enc"] = params["W_enc"] * c_in_l[:, None, None]
        out["b_dec"] = params["b_dec"] / c_out_l[:, None]
        for layer in range(L):
            out[f"W_dec_{layer}"] = params[f"W_dec_{layer}"] / c_out_l[layer:][None, :, None]
        return out
