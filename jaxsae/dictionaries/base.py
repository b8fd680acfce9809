"""The shared base of every sparse dictionary.

A dictionary is split in two:

* a *spec*: a frozen, hashable dataclass of static hyperparameters (widths, k, coefficients),
  subclassed once per architecture. It is a valid static argument to `jax.jit`.
* *params*: a plain dict of arrays (SAELens key names: `W_enc[d_in,d_sae]`, `b_enc[d_sae]`,
  `W_dec[d_sae,d_out]`, `b_dec[d_out]`, ...), each with logical axis names from `param_axes()`.

Every method is a pure function of (spec, params, inputs). Training-only bookkeeping (dead-latent
counters, BatchTopK thresholds) lives in a separate *dict state* pytree, also described here.

The base covers the general "encoder -> activation -> decoder" shape with an optional target space
(`d_out`, transcoders) and an optional linear skip path (`W_skip`), so crosscoders (a layer axis on
both sides) and cross-layer transcoders can extend it without a rewrite: they override
`param_shapes`, `pre_acts` and `decode`, and keep the loss/state machinery.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jaxsae import axes, ops
from jaxsae.dictionaries import latent_ops

Params = dict[str, jax.Array]
EPS = 1e-8


class LossContext(NamedTuple):
    """Per-step traced inputs to a loss that are not parameters."""

    sparsity_scale: jax.Array  # in [0, 1]: the sparsity-coefficient warm-up factor
    dead_f: jax.Array  # bool [F]: latents currently counted as dead (for AuxK)
    # a traced k at most the spec's (TopK: keep the first k_limit of the spec's k slots; BatchTopK:
    # floor(B k_limit) in the batch): sweeps train several k in one compiled step (jaxsae.train.sweep)
    k_limit: jax.Array | None = None


class LossOutput(NamedTuple):
    loss: jax.Array
    fired_f: jax.Array  # bool [F]: latents that fired anywhere in the batch
    metrics: dict[str, jax.Array]
    batch_threshold: jax.Array  # scalar: smallest kept activation (BatchTopK family); else nan


@dataclasses.dataclass(frozen=True)
class Dictionary(abc.ABC):
    """Static hyperparameters shared by every architecture.

    d_in: input width. d_sae: number of latents. d_out: target width (transcoders); None means
    d_in. apply_b_dec_to_input: subtract b_dec before encoding (only when d_out == d_in).
    skip: add a linear skip path x @ W_skip (skip transcoders). unit_norm_decoder: keep decoder
    rows at unit norm (gradient projection + renormalisation). decoder_init_norm: row norm at init.
    sparsity_coefficient: lambda of the architecture's sparsity penalty (unused by TopK-family).
    """

    d_in: int
    d_sae: int
    d_out: int | None = None
    apply_b_dec_to_input: bool = False
    skip: bool = False
    unit_norm_decoder: bool = True
    decoder_init_norm: float = 1.0
    sparsity_coefficient: float = 0.0

    name: ClassVar[str] = "base"
    # whether the published recipe encodes x - b_dec (only possible when d_out == d_in)
    default_b_dec_to_input: ClassVar[bool] = False
    # what SAELens calls this architecture at inference (after `to_inference`)
    saelens_architecture: ClassVar[str] = ""
    # the directory layout `train.loop` exports to (jaxsae.interop: "saelens" | "circuit_tracer")
    export_format: ClassVar[str] = "saelens"

    def __post_init__(self):
        for field in ("d_in", "d_sae"):
            v = getattr(self, field)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{self.name}: {field} must be a positive int, got {v!r}")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out <= 0):
            raise ValueError(f"{self.name}: d_out must be a positive int or None, got {self.d_out!r}")
        if self.apply_b_dec_to_input and self.out_dim != self.d_in:
            raise ValueError(
                f"{self.name}: apply_b_dec_to_input needs d_out == d_in (got d_in={self.d_in}, "
                f"d_out={self.out_dim}); a transcoder's b_dec lives in the output space, so set "
                "apply_b_dec_to_input=False"
            )

    @classmethod
    def create(cls, **kw) -> Dictionary:
        """Construct with the architecture's published structural defaults filled in."""
        same_space = kw.get("d_out") in (None, kw.get("d_in"))
        kw.setdefault("apply_b_dec_to_input", cls.default_b_dec_to_input and same_space)
        return cls(**kw)

    # ----------------------------------------------------------------- shapes and axes
    @property
    def out_dim(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def is_transcoder(self) -> bool:
        return self.out_dim != self.d_in or self.skip

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]:
        """name -> (shape, logical axes)."""
        d, f, o = self.d_in, self.d_sae, self.out_dim
        shapes = {
            "W_enc": ((d, f), (axes.D_IN, axes.D_SAE)),
            "b_enc": ((f,), (axes.D_SAE,)),
            "W_dec": ((f, o), (axes.D_SAE, axes.D_OUT)),
            "b_dec": ((o,), (axes.D_OUT,)),
        }
        if self.skip:
            shapes["W_skip"] = ((d, o), (axes.D_IN, axes.D_OUT))
        return shapes

    @property
    def tokens_per_example(self) -> int:
        """Tokens in one training example (1: a token row; whole-context dictionaries: the context)."""
        return 1

    def scale_inputs(self, x: jax.Array, scale: jax.Array) -> jax.Array:
        """The input normalisation (x * scale); dictionaries whose inputs carry more than vectors
        (attention patterns) scale only the vectors."""
        return x * scale

    def stat_rows(self, x, y):
        """The rows the normalisation scale and the b_dec init are estimated from (host arrays)."""
        return x, y

    def input_axes(self) -> tuple[str, ...]:
        """Logical axes of a training batch of inputs (multi-layer dictionaries add LAYER)."""
        return (axes.BATCH, axes.D_IN)

    def target_axes(self) -> tuple[str, ...]:
        return (axes.BATCH, axes.D_OUT)

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {k: a for k, (_, a) in self.param_shapes().items()}

    def abstract_params(self) -> Params:
        return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, (s, _) in self.param_shapes().items()}

    # ----------------------------------------------------------------- init
    def init(self, key: jax.Array, b_dec_init: jax.Array | None = None) -> Params:
        """Random directions for decoder rows (norm `decoder_init_norm`), encoder = decoder^T when
        the input and output spaces agree (tied init, Gao et al.), biases zero; b_dec from data."""
        k_dec, k_enc = jax.random.split(key)
        d, f, o = self.d_in, self.d_sae, self.out_dim
        w_dec_fo = jax.random.normal(k_dec, (f, o), jnp.float32)
        w_dec_fo = self.decoder_init_norm * w_dec_fo / (jnp.linalg.norm(w_dec_fo, axis=-1, keepdims=True) + EPS)
        if o == d:
            w_enc_df = w_dec_fo.T
        else:
            w_enc_df = jax.random.normal(k_enc, (d, f), jnp.float32)
            w_enc_df = w_enc_df / (jnp.linalg.norm(w_enc_df, axis=0, keepdims=True) + EPS)
        params = {
            "W_enc": w_enc_df,
            "b_enc": jnp.zeros((f,), jnp.float32),
            "W_dec": w_dec_fo,
            "b_dec": jnp.zeros((o,), jnp.float32) if b_dec_init is None else jnp.asarray(b_dec_init, jnp.float32),
        }
        if self.skip:
            params["W_skip"] = jnp.zeros((d, o), jnp.float32)
        return params

    # ----------------------------------------------------------------- forward pieces
    def enc_bias(self, params: Params) -> jax.Array:
        """The effective encoder bias. A pre-encoder b_dec is folded in (b_enc - b_dec W_enc) so its
        gradient is a vector-matrix product instead of a second [B, D] x [D, F] matmul."""
        bias_f = params["b_enc"]
        if self.apply_b_dec_to_input:
            bias_f = bias_f - params["b_dec"] @ params["W_enc"]
        return bias_f

    def pre_acts(self, params: Params, x_bd: jax.Array) -> jax.Array:
        """x W_enc + b_enc, or (x - b_dec) W_enc + b_enc."""
        return ops.add_bias(x_bd @ params["W_enc"], self.enc_bias(params))

    @abc.abstractmethod
    def encode(self, params: Params, x_bd: jax.Array) -> jax.Array:
        """Latent activations f [.., F] for inputs [.., D] (inference semantics)."""

    def decode(self, params: Params, f_bf: jax.Array) -> jax.Array:
        """f W_dec + b_dec (without the skip path, as SAELens does)."""
        return ops.add_bias(f_bf @ params["W_dec"], params["b_dec"])

    def decode_sparse(self, params: Params, vals_bk: jax.Array, idx_bk: jax.Array, bias: bool = True) -> jax.Array:
        """Decode k (value, index) pairs per row: gathers k decoder rows instead of a dense matmul;
        its gradient is a scatter-add into the touched rows only."""
        out_bo = latent_ops.decode_rows(vals_bk, idx_bk, params["W_dec"])
        return out_bo + params["b_dec"] if bias else out_bo

    def skip_out(self, params: Params, x_bd: jax.Array) -> jax.Array | float:
        return x_bd @ params["W_skip"] if self.skip else 0.0

    def forward(self, params: Params, x_bd: jax.Array) -> jax.Array:
        """Reconstruction (or transcoder prediction) of x, skip path included."""
        return self.decode(params, self.encode(params, x_bd)) + self.skip_out(params, x_bd)

    # ----------------------------------------------------------------- training
    @abc.abstractmethod
    def loss(self, params: Params, x_bd: jax.Array, y_bo: jax.Array, ctx: LossContext) -> LossOutput:
        """The training loss and what the step needs besides it (firing mask, metrics)."""

    def init_state(self) -> dict[str, jax.Array]:
        """Training-only bookkeeping: tokens since each latent last fired."""
        return {"tokens_since_fired": jnp.zeros((self.d_sae,), jnp.int32)}

    def state_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {"tokens_since_fired": (axes.D_SAE,)}

    def update_state(self, state: dict, out: LossOutput, n_tokens: int, step: jax.Array) -> dict:
        cap = jnp.int32(2**30)  # saturate instead of overflowing int32
        since = jnp.minimum(state["tokens_since_fired"] + n_tokens, cap)
        return {**state, "tokens_since_fired": jnp.where(out.fired_f, 0, since)}

    def to_inference(self, params: Params, state: dict | None) -> tuple[Dictionary, Params]:
        """The (spec, params) to evaluate and export with. BatchTopK-family models become
        JumpReLU with their learned global threshold; others are returned as they are."""
        return self, params

    def fold_decoder_norms(self, params: Params) -> Params:
        """Make decoder rows unit norm without changing any output (ReLU/JumpReLU/Gated)."""
        n_f = jnp.linalg.norm(params["W_dec"], axis=-1) + EPS
        out = dict(params)
        out["W_dec"] = params["W_dec"] / n_f[:, None]
        out["W_enc"] = params["W_enc"] * n_f[None, :]
        out["b_enc"] = params["b_enc"] * n_f
        return out

    def fold_input_scaling(self, params: Params, c_in: float, c_out: float) -> Params:
        """Turn a dictionary trained on (c_in x -> c_out y) into one on raw (x -> y).

        Thresholds and b_enc are unchanged (pre-activations are identical)."""
        out = dict(params)
        out["W_enc"] = params["W_enc"] * c_in
        out["W_dec"] = params["W_dec"] / c_out
        out["b_dec"] = params["b_dec"] / c_out
        if "W_skip" in params:
            out["W_skip"] = params["W_skip"] * (c_in / c_out)
        return out

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}({fields})"


# ------------------------------------------------------------------ shared loss pieces
def sse_mean(err_bo: jax.Array) -> jax.Array:
    """Squared error summed over features, averaged over the batch (SAELens/dictionary_learning)."""
    return jnp.mean(jnp.sum(jnp.square(err_bo), axis=-1))


def fvu_batch(y_bo: jax.Array, err_bo: jax.Array) -> jax.Array:
    """Fraction of variance unexplained against the batch mean (a training-time monitor)."""
    var = jnp.sum(jnp.square(y_bo - jnp.mean(y_bo, axis=0)))
    return jnp.sum(jnp.square(err_bo)) / jnp.maximum(var, EPS)


def base_metrics(y_bo: jax.Array, yhat_bo: jax.Array, l0: jax.Array) -> dict[str, jax.Array]:
    """Per-step monitors (in the model's normalised units): l2_loss is the squared error summed over
    features and averaged over rows (what the loss uses; SAELens logs it as mse_loss), mse the mean
    over every element (l2_loss / width)."""
    err = y_bo - yhat_bo
    l2 = sse_mean(err)
    return {"l2_loss": l2, "mse": l2 / err.shape[-1], "fvu": fvu_batch(y_bo, err), "l0": l0}


def topk_relu(pre_bf: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(values, indices) of the k largest pre-activations per row, values through ReLU."""
    vals_bk, idx_bk = latent_ops.top_k(pre_bf, k)
    return jax.nn.relu(vals_bk), idx_bk


def encode_topk_relu(spec: Dictionary, params: Params, x_bd: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """topk_relu(pre_acts(x), k) with the sparse backward of `latent_ops.encode_topk`."""
    vals_bk, idx_bk = latent_ops.encode_topk(x_bd, params["W_enc"], spec.enc_bias(params), k)
    return jax.nn.relu(vals_bk), idx_bk


def scatter_rows(vals_bk: jax.Array, idx_bk: jax.Array, width: int) -> jax.Array:
    """Dense [B, F] from per-row (value, index) pairs."""
    b = vals_bk.shape[0]
    rows = jnp.arange(b)[:, None]
    return jnp.zeros((b, width), vals_bk.dtype).at[rows, idx_bk].set(vals_bk)


def fired_from_sparse(vals_bk: jax.Array, idx_bk: jax.Array, width: int) -> jax.Array:
    return jnp.zeros((width,), bool).at[idx_bk.reshape(-1)].max((vals_bk > 0).reshape(-1))


def aux_k_loss(spec: Dictionary, params: Params, x_bd: jax.Array, resid_bo: jax.Array,
               dead_f: jax.Array, k_aux: int) -> jax.Array:
    """AuxK (Gao et al. 2024): reconstruct the (stop-gradient) residual from the top-k_aux dead
    latents' pre-activations, decoder without bias, normalised by the residual's variance; scaled
    by min(n_dead / k_aux, 1) and 0 when nothing is dead (sparsify/SAELens convention).
    Computed under `lax.cond`, so a step with no dead latent does none of its work; the
    pre-activations are recomputed there rather than kept from the main path, whose sparse
    TopK backward never materialises them."""
    k_aux = min(k_aux, spec.d_sae)
    resid_bo = jax.lax.stop_gradient(resid_bo)
    n_dead = jnp.sum(dead_f)

    def aux(x_bd, params):
        bias_f = jnp.where(dead_f, spec.enc_bias(params), -jnp.inf)
        vals_bk, idx_bk = latent_ops.encode_topk(x_bd, params["W_enc"], bias_f, k_aux)
        vals_bk = jnp.where(jnp.isfinite(vals_bk), jax.nn.relu(vals_bk), 0.0)
        ehat_bo = spec.decode_sparse(params, vals_bk, idx_bk, bias=False)
        num = jnp.sum(jnp.square(resid_bo - ehat_bo))
        den = jnp.sum(jnp.square(resid_bo - jnp.mean(resid_bo, axis=0)))
        scale = jnp.minimum(n_dead / k_aux, 1.0)
        return jnp.nan_to_num(scale * num / jnp.maximum(den, EPS)).astype(jnp.float32)

    return jax.lax.cond(n_dead > 0, aux, lambda *_: jnp.float32(0.0), x_bd, params)


def threshold_ema(old: jax.Array, batch: jax.Array, rate: float, step: jax.Array, start_step: int) -> jax.Array:
    """The BatchTopK inference threshold: from `start_step` on, an EMA (rate `rate`) of each
    batch's smallest kept activation, started at the first batch's value (old < 0: not yet set)."""
    new = jnp.where(old < 0, batch, rate * old + (1 - rate) * batch)
    return jnp.where(step >= start_step, new, old)


def dense_aux_k_loss(decode, params, pre_nf: jax.Array, resid: jax.Array, dead: jax.Array, k_aux: int,
                     n_dead_norm: float) -> jax.Array:
    """AuxK for dictionaries whose decode takes dense latents (multi-layer ones): the top-k_aux
    dead latents of each row of `pre_nf` [N, F] (rows: tokens, or token x layer) reconstruct the
    stop-gradient residual through `decode(params, a, bias=False)`, normalised by its variance and
    scaled by min(n_dead / n_dead_norm, 1); 0 (and no work, under lax.cond) when nothing is dead."""
    resid = jax.lax.stop_gradient(resid)
    n_dead = jnp.sum(dead)

    def aux(pre, params):
        masked = jnp.where(dead, pre, -jnp.inf)
        flat = masked.reshape(-1, masked.shape[-1])
        vals, idx = latent_ops.top_k(flat, k_aux)
        vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0.0)
        a = jnp.zeros_like(flat).at[jnp.arange(flat.shape[0])[:, None], idx].set(vals).reshape(pre.shape)
        ehat = decode(params, a, bias=False)
        num = jnp.sum(jnp.square(resid - ehat))
        den = jnp.sum(jnp.square(resid - jnp.mean(resid, axis=0)))
        scale = jnp.minimum(n_dead / n_dead_norm, 1.0)
        return jnp.nan_to_num(scale * num / jnp.maximum(den, EPS)).astype(jnp.float32)

    return jax.lax.cond(n_dead > 0, aux, lambda *_: jnp.float32(0.0), pre_nf, params)


def batch_kth_largest(a_bf: jax.Array, n_keep: int) -> jax.Array:
    """Exact n_keep-th largest value of a non-negative array, by bisection on float bit patterns.

    Non-negative float32 values order like their int32 bit patterns, so 32 rounds of
    "count entries >= t" find the exact value with only reductions: no sort, no gather, and it
    shards over any mesh (each round is one all-reduce of a scalar count).
    """
    bits = jax.lax.bitcast_convert_type(jnp.maximum(a_bf, 0.0).astype(jnp.float32), jnp.int32)
    lo = jnp.int32(0)
    hi = jnp.max(bits) + 1

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits >= mid) >= n_keep
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def n_batch_keep(n_rows: int, k) -> int | jax.Array:
    """BatchTopK's budget: floor(rows * k) activations for the whole batch (k may be fractional,
    or a traced value: then a traced count)."""
    if isinstance(k, jax.Array):
        return jnp.maximum(1, jnp.floor(n_rows * k)).astype(jnp.int32)
    return max(1, int(math.floor(n_rows * k)))
