"""Interventions as data: each is a `sites.Splice` whose `fn` is a static, value-compared
dataclass and whose payload (replacement values, masks, deltas, a dictionary) is a pytree of
arrays. A rewritten model is a pure function of (variable values, payloads), so the same
compiled program serves every position, head, coefficient or gradient query, under jit, vmap,
grad and a mesh.

  Blend       x -> where(m == 1, src, x + m * (src - x)): patching (one-hot m) and interpolation
  Add         x -> x + delta: one backward pass gives d metric / d value at every delta site
  SaeNodes    x -> decode(f(x) + delta_f) + (x - decode(f(x))) + delta_err: latents and an error
              node, both differentiable (the error is *not* stop-gradiented here)
  SaeInterp   SaeNodes along f_base + a (f_src - f_base), err_base + a (err_src - err_base)
  HeadScale   per-head values times a [heads] mask plus (1 - mask) * a replacement: knock-outs

`bind(frozen)` turns `freeze(lm)` back into a model inside traced code; `skipping_blocks`
replaces every block before a (traced) start layer by its cached output, so an intervention at
layer l pays only for the layers from l on. `freeze_norms` fixes every norm's scale (and mean)
to a run's values: then the logits are affine in the final residual stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts

from jaxsae import sites


def value_shape_kind(kind: str) -> str:
    """'resid' for [batch, seq, d] sites, 'heads' for [batch, seq, heads, d], 'pattern' for
    [batch, heads, q, k]."""
    if kind == "attn.hook_pattern":
        return "pattern"
    return "heads" if kind in sites.HEAD_KINDS else "resid"


def _mask_like(m, layout: str):
    """Broadcast a cell mask ([seq] resid, [seq, heads] heads, [heads, q] pattern) against the
    site's value ([batch, seq, d], [batch, seq, heads, d], [batch, heads, q, k])."""
    return m[None, :, None] if layout == "resid" else m[None, ..., None]


@dataclasses.dataclass(frozen=True)
class Blend:
    layout: str

    def __call__(self, x, payload):
        src, m = payload
        m = _mask_like(m, self.layout).astype(x.dtype)
        src = src.astype(x.dtype)
        return jnp.where(m == 1, src, x + m * (src - x))


@dataclasses.dataclass(frozen=True)
class Add:
    def __call__(self, x, delta):
        return x + delta.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class SaeNodes:
    """Payload (sae, delta_site, delta_f, delta_err)."""

    def __call__(self, x, payload):
        sae, d_site, d_f, d_err = payload
        x = x + d_site.astype(x.dtype)
        f = sae.encode(x)
        err = x - sae.decode(f)
        return (sae.decode(f + d_f) + err + d_err).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class SaeInterp:
    """Payload (sae, f_src, err_src, alpha, delta_f, delta_err): latents and error interpolated
    from this run's values (alpha 0) to the source run's (alpha 1), plus deltas."""

    def __call__(self, x, payload):
        sae, f_src, err_src, alpha, d_f, d_err = payload
        f = sae.encode(x)
        err = x - sae.decode(f)
        f_a = f + alpha * (f_src - f) + d_f
        err_a = err + alpha * (err_src - err) + d_err
        return (sae.decode(f_a) + err_a).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class HeadScale:
    """Payload (mask [heads], replacement broadcastable to [batch, seq, heads, d])."""

    def __call__(self, x, payload):
        m, repl = payload
        m = m.astype(x.dtype)[None, None, :, None]
        return x * m + (1 - m) * jnp.broadcast_to(repl, x.shape).astype(x.dtype)


def knock_out_heads(lm, heads: dict[int, list[int]] | list[tuple[int, int]], mean_z: dict[int, jax.Array] | None = None):
    """A copy of `lm` with the named heads' outputs (attn.hook_z) zeroed, or set to `mean_z[layer]`
    ([heads, head_dim] or [seq, heads, head_dim]) when given. `heads` maps layer -> head indices
    or lists (layer, head) pairs. Every layer gets the same splice (a mask of ones where nothing is
    knocked out), so any set of heads reuses one compiled model."""
    if not isinstance(heads, dict):
        grouped: dict[int, list[int]] = {}
        for layer, head in heads:
            grouped.setdefault(int(layer), []).append(int(head))
        heads = grouped
    n_layers = len(sites._blocks(lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm))
    bad_layers = sorted(layer for layer in heads if not 0 <= layer < n_layers)
    if bad_layers:
        raise ValueError(f"knock_out_heads: layers {bad_layers} do not exist (the model has {n_layers} blocks)")
    config = getattr(lm, "config", {}) or {}
    n = config.get("num_attention_heads") or config.get("n_head")
    if n is None:
        n = max([max(hs) for hs in heads.values() if hs] + [0]) + 1
    splices = {}
    for layer in range(n_layers):
        hs = list(heads.get(layer, []))
        bad = [h for h in hs if not 0 <= h < n]
        if bad:
            raise ValueError(f"knock_out_heads: layer {layer} has heads 0..{n - 1}, not {bad}")
        mask = jnp.ones((int(n),), jnp.float32)
        if hs:
            mask = mask.at[jnp.asarray(hs)].set(0.0)
        repl = jnp.zeros(()) if mean_z is None or layer not in mean_z else jnp.asarray(mean_z[layer], jnp.float32)
        splices[f"blocks.{layer}.attn.hook_z"] = sites.Splice(payload=(mask, repl), fn=HeadScale())
    model = lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm
    new = sites._rewrite(model, splices)
    return dataclasses.replace(lm, model=new) if model is not lm else new


# --- running rewritten models inside traced code -------------------------------------------


def freeze(lm):
    """(slots, values) of the Penzai model: pass `values` into jitted code, `bind` it there."""
    model = lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm
    slots, values = pz.unbind_variables(model, freeze=True)
    return slots, tuple(values)


def bind(slots, values):
    return pz.bind_variables(slots, values, unfreeze_as_copy=True)


def call(model, tokens_bt) -> jax.Array:
    """logits [batch, seq, vocab] of a (bound) Penzai model on plain token ids."""
    logits = model(pz.nx.wrap(tokens_bt).tag("batch", "seq"), token_positions=pz.nx.arange("seq", tokens_bt.shape[1]))
    return logits.untag("batch", "seq", "vocabulary").unwrap()


def rewrite(model, splices: dict[str, tuple[Any, Any]]):
    """`model` with Splice(payload, fn) at each site, from {site: (fn, payload)}."""
    if not splices:
        return model
    return sites._rewrite(model, {s: sites.Splice(payload=p, fn=f) for s, (f, p) in splices.items()})


@pz.pytree_dataclass
class _Skippable(pz.nn.Layer):
    """Block `index`, or its cached output when index < start (a traced scalar: the cond keeps
    one compiled program for every start layer, and under vmap over cells it stays a cond)."""

    block: pz.nn.Layer
    cached: jax.Array  # [batch, seq, d] this block's output in the base run
    start: jax.Array
    index: int = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, x, /, **side):
        names = ("batch", "seq", "embedding")
        def run(x):
            return self.block(pz.nx.wrap(x).tag(*names), **side).untag(*names).unwrap()
        def skip(x):
            return self.cached.astype(x.dtype)
        out = jax.lax.cond(self.index < self.start, skip, run, x.untag(*names).unwrap())
        return pz.nx.wrap(out).tag(*names)


def skipping_blocks(model, cached_lbsd: jax.Array, start: jax.Array):
    """`model` whose blocks before `start` return their cached outputs [layers, batch, seq, d]
    (the base run's hook_resid_post) instead of computing them."""
    blocks = sites._blocks(model)
    position = {id(b): i for i, b in enumerate(blocks)}
    return (pz.select(model).at_instances_of(model_parts.TransformerBlock)
            .apply(lambda b: _Skippable(b, cached_lbsd[position[id(b)]], start, position[id(b)])))


# --- frozen norms ---------------------------------------------------------------------------

_NORMS = (pz.nn.RMSStandardize, pz.nn.Standardize)


def _stats(layer, value):
    across = (layer.across,) if isinstance(layer.across, str) else tuple(layer.across)
    rms = isinstance(layer, pz.nn.RMSStandardize)

    @pz.nx.nmap
    def stats(x):
        mean = jnp.zeros((), x.dtype) if rms else jnp.mean(x)
        var = jnp.mean(jnp.square(x)) - (0 if rms else jnp.square(mean))
        return mean, jax.lax.rsqrt(var + layer.epsilon)

    mean, scale = stats(value.untag(*across))
    return mean, scale


@pz.pytree_dataclass
class _RecordNorm(pz.nn.Layer):
    inner: pz.nn.Layer
    saved: pz.StateVariable

    def __call__(self, value, /, **side):
        self.saved.value = _stats(self.inner, value)
        return self.inner(value, **side)


@pz.pytree_dataclass
class FrozenNorm(pz.nn.Layer):
    """(x - mean) * scale with the mean and scale of a recorded run (affine in x)."""

    mean: pz.nx.NamedArray
    scale: pz.nx.NamedArray

    def __call__(self, value, /, **_side):
        return (value - self.mean) * self.scale


def freeze_norms(lm, tokens_bt, final_only: bool = False):
    """A copy of `lm` whose norms (every RMS/LayerNorm standardisation, or only the final one)
    use the scales and means they compute on `tokens_bt`; on those tokens it computes the same
    logits, and on others the norms no longer depend on the input."""
    model = lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm
    chosen = pz.select(model).at_instances_of(_NORMS)
    if final_only:
        chosen = chosen.pick_nth_selected(chosen.count() - 1)
    counter = iter(range(10**6))
    recording = chosen.apply(lambda n: _RecordNorm(n, pz.StateVariable(value=None, label=f"norm{next(counter)}")))
    _run_recording(recording, jnp.asarray(tokens_bt, jnp.int32))
    recs = pz.select(recording).at_instances_of(_RecordNorm).get_sequence()
    by_label = {r.saved.label: r.saved.value for r in recs}
    counter2 = iter(range(10**6))
    frozen = chosen.apply(lambda n: FrozenNorm(*by_label[f"norm{next(counter2)}"]))
    return dataclasses.replace(lm, model=frozen) if model is not lm else frozen


@pz.variable_jit
def _run_recording(model, tokens):
    return model(pz.nx.wrap(tokens).tag("batch", "seq"), token_positions=pz.nx.arange("seq", tokens.shape[1]))
