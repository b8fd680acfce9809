"""Acausal crosscoders (Lindsey et al. 2024, "Sparse Crosscoders"; docs/methods.md section 7.2):
one set of latents reads and writes several layers, or the same site of several models (model
diffing, Minder et al. 2025).

  f = sigma(sum_l x^l W_enc^l + b_enc),      x_hat^l = f W_dec^l + b_dec^l

Parameters: `W_enc[L, D, F]`, `b_enc[F]`, `W_dec[F, L, D]`, `b_dec[L, D]` (dictionary_learning's
CrossCoder layout with the latent axis first in the decoder); inputs and targets [B, L, D].
Activations (`activation`):
  batchtopk  the floor(B k) largest of f_i * sum_l ||W_dec,i^l|| over the batch (latents ranked by
             their total write, as the sum-of-norms penalty weighs them), + AuxK; exported as
             JumpReLU with the learned threshold on that ranking score. The variant for model
             diffing: no L1 "complete shrinkage" of shared latents into exclusive ones.
  relu       L1 with the sum of decoder norms: lambda * sum_i f_i sum_l ||W_dec,i^l|| (a penalty on the
             norm of the concatenation would under-penalise latents that write many layers).
The decoder is unconstrained (its per-layer norms carry the shared/exclusive signal).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxsae import axes
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

ACTIVATIONS = ("batchtopk", "relu")  # trainable; "jumprelu" is the exported form of batchtopk


@dataclasses.dataclass(frozen=True)
class Crosscoder(Dictionary):
    """d_in: the width of every layer (or model); n_layers: how many are stacked; d_sae: latents."""

    n_layers: int = 2
    activation: str = "batchtopk"
    k: float = 32
    sparsity_coefficient: float = 1e-3  # relu: lambda of the sum-of-norms L1
    k_aux: int | None = None
    aux_alpha: float = 1 / 32
    threshold_ema: float = 0.999
    threshold_start_step: int = 1000
    unit_norm_decoder: bool = False
    decoder_init_norm: float = 0.1

    name: ClassVar[str] = "crosscoder"
    export_format: ClassVar[str] = "crosscoder"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ValueError(f"crosscoder: n_layers must be a positive int, got {self.n_layers!r}")
        if self.activation not in ACTIVATIONS + ("jumprelu",):
            raise ValueError(f"crosscoder: unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.activation == "batchtopk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"crosscoder: k must be in (0, d_sae={self.d_sae}], got {self.k!r}")
        if self.out_dim != self.d_in or self.skip or self.apply_b_dec_to_input or self.unit_norm_decoder:
            raise ValueError("crosscoder: reads and writes the same sites (d_out = d_in), with an unconstrained "
                             "decoder and no skip or pre-encoder bias")

    @classmethod
    def create(cls, **kw):
        kw.pop("d_out", None)
        return cls(**kw)

    @property
    def is_transcoder(self) -> bool:
        return False

    def param_shapes(self):
        L, d, f = self.n_layers, self.d_in, self.d_sae
        shapes = {
            "W_enc": ((L, d, f), (axes.LAYER, axes.D_IN, axes.D_SAE)),
            "b_enc": ((f,), (axes.D_SAE,)),
            "W_dec": ((f, L, d), (axes.D_SAE, axes.LAYER, axes.D_OUT)),
            "b_dec": ((L, d), (axes.LAYER, axes.D_OUT)),
        }
        if self.activation == "jumprelu":
            shapes["log_threshold"] = ((f,), (axes.D_SAE,))
        return shapes

    def input_axes(self):
        return (axes.BATCH, axes.LAYER, axes.D_IN)

    def target_axes(self):
        return (axes.BATCH, axes.LAYER, axes.D_OUT)

    def init(self, key, b_dec_init=None):
        """Decoder rows: random directions per layer, each of norm decoder_init_norm / sqrt(L);
        encoder = the decoder transposed (tied init); b_dec: the per-layer data median."""
        L, d, f = self.n_layers, self.d_in, self.d_sae
        w = jax.random.normal(key, (f, L, d), jnp.float32)
        w = w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + EPS) * (self.decoder_init_norm / L**0.5)
        params = {"W_enc": jnp.transpose(w, (1, 2, 0)) / self.decoder_init_norm, "b_enc": jnp.zeros((f,), jnp.float32),
                  "W_dec": w, "b_dec": jnp.zeros((L, d), jnp.float32) if b_dec_init is None
                  else jnp.asarray(b_dec_init, jnp.float32).reshape(L, d)}
        if self.activation == "jumprelu":
            params["log_threshold"] = jnp.full((f,), -3.0, jnp.float32)
        return params

    def pre_acts(self, params, x_bld):
        return jnp.einsum("...ld,ldf->...f", x_bld, params["W_enc"]) + params["b_enc"]

    def decoder_norms(self, params) -> jax.Array:
        """[F, L]: each latent's decoder norm in every layer (or model)."""
        return jnp.linalg.norm(params["W_dec"], axis=-1)

    def _activate(self, params, pre_bf):
        a = jax.nn.relu(pre_bf)
        if self.activation == "relu":
            return a, jnp.float32(jnp.nan)
        score = a * jnp.sum(self.decoder_norms(params), axis=-1)
        if self.activation == "jumprelu":  # inference form of a BatchTopK crosscoder
            return jnp.where(score > jnp.exp(params["log_threshold"]), a, 0.0), jnp.float32(jnp.nan)
        flat = score.reshape(-1, self.d_sae)
        thr = batch_kth_largest(flat, n_batch_keep(flat.shape[0], self.k))
        return jnp.where((score >= thr) & (score > 0), a, 0.0), thr

    def encode(self, params, x_bld):
        return self._activate(params, self.pre_acts(params, x_bld))[0]

    def decode(self, params, f_bf, bias: bool = True):
        out = jnp.einsum("...f,fld->...ld", f_bf, params["W_dec"])
        return out + params["b_dec"] if bias else out

    def forward(self, params, x_bld):
        return self.decode(params, self.encode(params, x_bld))

    @property
    def aux_k(self) -> int:
        return min(self.d_sae, self.k_aux if self.k_aux is not None else max(1, self.d_in // 2))

    def loss(self, params, x_bld, y_bld, ctx: LossContext) -> LossOutput:
        pre_bf = self.pre_acts(params, x_bld)
        f_bf, thr = self._activate(params, pre_bf)
        yhat = self.decode(params, f_bf)
        err = y_bld - yhat
        sse_bl = jnp.sum(jnp.square(err), axis=-1)
        rec = jnp.mean(jnp.sum(sse_bl, axis=-1))
        loss, metrics = rec, {"loss_rec": rec}
        if self.activation == "relu":
            l1 = jnp.mean(jnp.sum(f_bf * jnp.sum(self.decoder_norms(params), axis=-1), axis=-1))
            loss = loss + self.sparsity_coefficient * ctx.sparsity_scale * l1
            metrics["loss_sparsity"] = l1
        else:
            aux = self._aux_loss(params, pre_bf, err, ctx.dead_f)
            loss = loss + self.aux_alpha * aux
            metrics["loss_aux"] = aux
        var_bl = jnp.sum(jnp.square(y_bld - jnp.mean(y_bld, axis=0)), axis=-1)
        fvu_l = jnp.sum(sse_bl, axis=0) / jnp.maximum(jnp.sum(var_bl, axis=0), EPS)
        metrics.update(l2_loss=rec, mse=rec / (self.n_layers * self.d_in), fvu=jnp.mean(fvu_l),
                       l0=jnp.mean(jnp.sum(f_bf > 0, axis=-1).astype(jnp.float32)))
        for layer in range(self.n_layers):
            metrics[f"fvu_layer{layer}"] = fvu_l[layer]
        return LossOutput(loss, jnp.any(f_bf > 0, axis=0), metrics, thr)

    def _aux_loss(self, params, pre_bf, err_bld, dead_f):
        return dense_aux_k_loss(self.decode, params, pre_bf, err_bld, dead_f, self.aux_k, self.aux_k)

    def init_state(self):
        state = super().init_state()
        if self.activation == "batchtopk":
            state["threshold"] = jnp.float32(-1.0)
        return state

    def state_axes(self):
        out = super().state_axes()
        if self.activation == "batchtopk":
            out["threshold"] = ()
        return out

    def update_state(self, state, out: LossOutput, n_tokens, step):
        state = super().update_state(state, out, n_tokens, step)
        if self.activation == "batchtopk":
            state = {**state, "threshold": threshold_ema(state["threshold"], out.batch_threshold, self.threshold_ema,
                                                         step, self.threshold_start_step)}
        return state

    def to_inference(self, params, state):
        if self.activation != "batchtopk":
            return self, params
        thr = None if state is None else state.get("threshold")
        if thr is None or float(thr) < 0:
            raise ValueError(f"crosscoder(batchtopk): the inference threshold was never estimated (training stopped "
                             f"before threshold_start_step={self.threshold_start_step}); train longer or lower it")
        out = dict(params)
        out["log_threshold"] = jnp.full((self.d_sae,), jnp.log(max(float(thr), 1e-30)), jnp.float32)
        return dataclasses.replace(self, activation="jumprelu"), out

    def fold_decoder_norms(self, params):
        return dict(params)

    def fold_input_scaling(self, params, c_in, c_out):
        """Trained on c[l] x^l for every layer (c_in == c_out: the same sites are read and written).
        The JumpReLU ranking score a * sum_l ||d^l|| changes with the decoder, so its threshold is
        carried through: the exported model selects exactly the latents the trained one does."""
        c = jnp.broadcast_to(jnp.asarray(c_in, jnp.float32).reshape(-1), (self.n_layers,))
        out = dict(params)
        out["W_enc"] = params["W_enc"] * c[:, None, None]
        out["W_dec"] = params["W_dec"] / c[None, :, None]
        out["b_dec"] = params["b_dec"] / c[:, None]
        if "log_threshold" in params:  # score = a * sum_l ||d^l||: recompute the threshold on the new norms
            old = jnp.sum(jnp.linalg.norm(params["W_dec"], axis=-1), axis=-1)
            new = jnp.sum(jnp.linalg.norm(out["W_dec"], axis=-1), axis=-1)
            out["log_threshold"] = params["log_threshold"] + jnp.log(new / jnp.maximum(old, EPS))
        return out
