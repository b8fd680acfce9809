"""Multitoken transcoders (MTC): a sparse replacement for one attention layer (Anthropic's "Progress
on Attention", 2025; the equations are ours, docs/methods.md section 8).

Latents are computed at each *source* position from the attention's normalised input, moved to
each *destination* position through the base layer's frozen attention patterns, mixed per latent
over the heads, and decoded there:

  a_si = sigma(x_s W_enc[:, i] + b_enc_i)                             source side, token-wise
  u_ti = c_i0 a_ti + sum_{h=1..H} c_ih sum_{s<=t} A^h_ts a_si         moving (head 0 = identity)
  y_hat_t = u_t W_dec + b_dec                                         destination side

c_i = head_logits_i / ||head_logits_i||_1 is latent i's signed mixture over the identity "head"
(same-position, MLP-like computation) and the H frozen heads; it is normalised, so the scale of a
latent lives in its activation and decoder only. `head_mixing="top1"` binds each latent to one head
(the argmax, with a straight-through softmax gradient): the Top-1 MTC baseline.

Activations: `topk` (k per source token, unit-norm decoder, AuxK for dead latents) or `relu` with
L1 on a_si ||d_i|| (+ lambda_P on ReLU(-pre) ||d_i||, the anti-dead-latent penalty).

Batches are whole contexts. A training row is one context packed into one array:
x [B, T, D + H*T] holds, for destination t, the normalised input x_t and the H pattern rows A^h_t,:
(`pack` / `unpack`); targets y [B, T, O] are the layer's attention output. Positions below
`loss_from` (BOS: a fixed attention sink whose output carries no text) act as sources only and are
left out of the loss. Cost per context: O(H T^2 F) time, O(H T F) memory.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import axes
from jaxsae.dictionaries import latent_ops
from jaxsae.dictionaries.base import (
    EPS,
    Dictionary,
    LossContext,
    LossOutput,
    base_metrics,
    dense_aux_k_loss,
    sse_mean,
)

ACTIVATIONS = ("topk", "relu")
HEAD_MIXING = ("learned", "top1")


def pack(x_btd, pattern_bhts):
    """(inputs [B, T, D], patterns [B, H, T, T]) -> [B, T, D + H T]: destination t's input vector
    followed by its H pattern rows (NumPy in, NumPy out; else jax)."""
    xp = np if isinstance(x_btd, np.ndarray) and isinstance(pattern_bhts, np.ndarray) else jnp
    b, t = x_btd.shape[:2]
    rows = xp.transpose(pattern_bhts, (0, 2, 1, 3)).reshape(b, t, -1)
    return xp.concatenate([x_btd, rows.astype(x_btd.dtype)], axis=-1)


def unpack(x_btp, d_in: int):
    """[B, T, D + H T] -> (inputs [B, T, D], patterns [B, H, T, T])."""
    b, t = x_btp.shape[:2]
    pattern = x_btp[..., d_in:].reshape(b, t, -1, t)
    return x_btp[..., :d_in], jnp.transpose(pattern, (0, 2, 1, 3))


@dataclasses.dataclass(frozen=True)
class MultitokenTranscoder(Dictionary):
    """d_in: the attention's input width; d_out: its output width; n_heads: the base layer's query
    heads H (patterns [H, T, T]); n_ctx: positions per context T."""

    n_heads: int = 1
    n_ctx: int = 2
    activation: str = "topk"
    k: float = 16
    k_aux: int | None = None
    aux_alpha: float = 1 / 32
    head_mixing: str = "learned"
    sparsity_coefficient: float = 5.0  # relu: lambda of the L1 penalty (in normalised units)
    pre_act_coefficient: float = 0.0  # relu: lambda_P of ReLU(-pre) ||d||
    loss_from: int = 1
    unit_norm_decoder: bool = True

    name: ClassVar[str] = "multitoken_transcoder"
    export_format: ClassVar[str] = "multitoken"

    def __post_init__(self):
        super().__post_init__()
        for field in ("n_heads", "n_ctx"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"multitoken_transcoder: {field} must be a positive int, got {v!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"multitoken_transcoder: unknown activation {self.activation!r}; valid: "
                             f"{', '.join(ACTIVATIONS)}")
        if self.head_mixing not in HEAD_MIXING:
            raise ValueError(f"multitoken_transcoder: unknown head_mixing {self.head_mixing!r}; valid: "
                             f"{', '.join(HEAD_MIXING)}")
        if self.activation == "topk" and not (float(self.k).is_integer() and 0 < self.k <= self.d_sae):
            raise ValueError(f"multitoken_transcoder: topk needs an integer k in (0, d_sae={self.d_sae}], "
                             f"got {self.k!r}")
        if not 0 <= self.loss_from < self.n_ctx:
            raise ValueError(f"multitoken_transcoder: loss_from must be in [0, n_ctx={self.n_ctx}), got "
                             f"{self.loss_from!r}")
        if self.apply_b_dec_to_input or self.skip:
            raise ValueError("multitoken_transcoder: apply_b_dec_to_input and skip are not supported (the "
                             "output is moved across positions; the input is a different space)")

    @classmethod
    def create(cls, **kw):
        kw.setdefault("unit_norm_decoder", kw.get("activation", "topk") == "topk")
        kw.setdefault("decoder_init_norm", 1.0 if kw["unit_norm_decoder"] else 0.1)
        kw.pop("apply_b_dec_to_input", None)
        return cls(**kw)

    # ----------------------------------------------------------------- shapes and packing
    @property
    def is_transcoder(self) -> bool:
        return True

    @property
    def tokens_per_example(self) -> int:
        return self.n_ctx

    @property
    def packed_width(self) -> int:
        return self.d_in + self.n_heads * self.n_ctx

    @property
    def aux_k(self) -> int:
        return min(self.k_aux if self.k_aux is not None else self.d_in // 2, self.d_sae)

    def param_shapes(self):
        d, f, o, h = self.d_in, self.d_sae, self.out_dim, self.n_heads
        return {
            "W_enc": ((d, f), (axes.D_IN, axes.D_SAE)),
            "b_enc": ((f,), (axes.D_SAE,)),
            "W_dec": ((f, o), (axes.D_SAE, axes.D_OUT)),
            "b_dec": ((o,), (axes.D_OUT,)),
            "head_logits": ((f, h + 1), (axes.D_SAE, None)),
        }

    def input_axes(self):
        return (axes.BATCH, axes.SEQ, None)

    def target_axes(self):
        return (axes.BATCH, axes.SEQ, axes.D_OUT)

    def pack(self, x_btd, pattern_bhts):
        """(normalised inputs [B, T, D], patterns [B, H, T, T]) -> one row per context [B, T, D + H T]."""
        return pack(x_btd, pattern_bhts)

    def unpack(self, x_btp):
        """[B, T, D + H T] -> (x [B, T, D], patterns [B, H, T, T])."""
        if x_btp.shape[-1] != self.packed_width or x_btp.shape[1] != self.n_ctx:
            raise ValueError(f"multitoken_transcoder: inputs must be [batch, n_ctx={self.n_ctx}, d_in + n_heads * "
                             f"n_ctx = {self.packed_width}] (pack(x, patterns)), got {tuple(x_btp.shape)}")
        return unpack(x_btp, self.d_in)

    def scale_inputs(self, x, scale):
        """The normalisation scales the input vectors, never the attention probabilities."""
        return jnp.concatenate([x[..., : self.d_in] * scale, x[..., self.d_in:]], axis=-1)

    def stat_rows(self, x, y):
        """Token rows (positions >= loss_from) for the normalisation and b_dec estimates."""
        x_rows = np.asarray(x)[:, self.loss_from:, : self.d_in].reshape(-1, self.d_in)
        return x_rows, np.asarray(y)[:, self.loss_from:].reshape(-1, y.shape[-1])

    # ----------------------------------------------------------------- init
    def init(self, key, b_dec_init=None):
        """Base init (random unit decoder rows, unit encoder columns); head loadings uniform over the
        H + 1 heads with a little noise so latents can choose."""
        k_base, k_heads = jax.random.split(key)
        params = super().init(k_base, b_dec_init)
        noise = 0.01 * jax.random.normal(k_heads, (self.d_sae, self.n_heads + 1), jnp.float32)
        params["head_logits"] = 1.0 / (self.n_heads + 1) + noise
        return params

    # ----------------------------------------------------------------- forward
    def head_weights(self, params) -> jax.Array:
        """c [F, H + 1]: each latent's mixture over (identity, head 1..H), unit L1 norm."""
        logits = params["head_logits"]
        if self.head_mixing == "top1":
            soft = jax.nn.softmax(logits, axis=-1)
            hard = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
            return hard + (soft - jax.lax.stop_gradient(soft))  # exactly one-hot forward
        return logits / (jnp.sum(jnp.abs(logits), axis=-1, keepdims=True) + EPS)

    def source_acts(self, params, x_btd):
        """(a [B, T, F], pre-activations [B, T, F]) at each source position."""
        pre = x_btd @ params["W_enc"] + params["b_enc"]
        if self.activation == "relu":
            return jax.nn.relu(pre), pre
        b, t, f = pre.shape
        vals, idx = latent_ops.top_k(pre.reshape(b * t, f), int(self.k))
        a = jnp.zeros((b * t, f), pre.dtype).at[jnp.arange(b * t)[:, None], idx].set(jax.nn.relu(vals))
        return a.reshape(b, t, f), pre

    def move(self, params, a_btf, pattern_bhts):
        """u [B, T, F]: source activations carried to each destination through the heads."""
        c = self.head_weights(params)
        moved = jnp.einsum("bhts,bsf,fh->btf", pattern_bhts.astype(a_btf.dtype), a_btf, c[:, 1:])
        return a_btf * c[:, 0] + moved

    def encode(self, params, x_btp):
        """The latents at their destinations, u [B, T, F] (what a latent contributes at t is u_ti d_i)."""
        x, pattern = self.unpack(x_btp)
        return self.move(params, self.source_acts(params, x)[0], pattern)

    def forward(self, params, x_btp):
        return self.decode(params, self.encode(params, x_btp))

    def apply(self, params, x_btd, pattern_bhts, keep_f=None):
        """The prediction from unpacked inputs of any context length (a splice into the live model);
        keep_f (0/1, [F] or broadcast against [B, T, F]) ablates latents at their sources."""
        a = self.source_acts(params, x_btd)[0]
        if keep_f is not None:
            a = a * keep_f
        return self.decode(params, self.move(params, a, pattern_bhts))

    # ----------------------------------------------------------------- training
    def loss(self, params, x_btp, y_bto, ctx: LossContext) -> LossOutput:
        x, pattern = self.unpack(x_btp)
        a, pre = self.source_acts(params, x)
        yhat = self.decode(params, self.move(params, a, pattern))
        lo = self.loss_from
        y_no = y_bto[:, lo:].reshape(-1, y_bto.shape[-1])
        yhat_no = yhat[:, lo:].reshape(-1, y_bto.shape[-1])
        mse = sse_mean(y_no - yhat_no)
        l0 = jnp.mean(jnp.sum(a[:, lo:] > 0, axis=-1).astype(jnp.float32))
        metrics = base_metrics(y_no, yhat_no, l0)
        loss = mse
        if self.activation == "relu":
            d_norm = jnp.linalg.norm(params["W_dec"], axis=-1)
            l1 = jnp.mean(jnp.sum(a * d_norm, axis=-1))
            pen = jnp.mean(jnp.sum(jax.nn.relu(-pre) * d_norm, axis=-1))
            loss = loss + ctx.sparsity_scale * self.sparsity_coefficient * l1 + self.pre_act_coefficient * pen
            metrics["l1_loss"] = l1
        else:
            def decode_moved(params, a_dead, bias=False):
                return (self.move(params, a_dead, pattern) @ params["W_dec"])[:, lo:]

            aux = dense_aux_k_loss(decode_moved, params, pre, y_bto[:, lo:] - yhat[:, lo:], ctx.dead_f,
                                   self.aux_k, self.aux_k)
            loss = loss + self.aux_alpha * aux
            metrics["aux_loss"] = aux
        fired = jnp.any(a > 0, axis=(0, 1))
        return LossOutput(loss, fired, metrics, jnp.float32(jnp.nan))

    def fold_decoder_norms(self, params):
        """ReLU latents are positively homogeneous: the decoder norms move into the encoder."""
        if self.activation == "topk":
            return params
        return super().fold_decoder_norms(params)
