"""Hook sites with TransformerLens/SAELens names, as pure model -> model rewrites (Penzai surgery).

  blocks.{L}.hook_resid_pre      input of block L
  blocks.{L}.hook_resid_mid      after block L's attention residual
  blocks.{L}.hook_resid_post     output of block L
  blocks.{L}.hook_attn_out       attention output (before it is added to the residual)
  blocks.{L}.hook_mlp_out        MLP output (before it is added to the residual)
  blocks.{L}.ln1.hook_normalized the attention's normalised input
  blocks.{L}.ln2.hook_normalized the MLP's normalised input
  blocks.{L}.attn.hook_z         per-head attention output before the output projection,
                                 [batch, seq, heads, head_dim] (grouped heads flattened group-major)
  blocks.{L}.attn.hook_q         per-head queries (after RoPE and the query scaling), [batch, seq, heads, head_dim]
  blocks.{L}.attn.hook_k / hook_v per-key-value-head keys (after RoPE) and values, [batch, seq, kv_heads, head_dim]
  blocks.{L}.attn.hook_pattern   attention probabilities, [batch, heads, query_seq, key_seq]

Blocks with two residual sublayers (Llama, Gemma, GPT-2, sequential GPT-NeoX) have every site;
parallel-residual blocks (Pythia: y = x + attn(ln1 x) + mlp(ln2 x)) have all but hook_resid_mid.

`with_taps(lm, sites)` returns a copy of the model with a `Tap` layer at each site; `splice*`
replace a site's value (a dictionary's reconstruction with or without its error term, zero- or
mean-ablation, any function); `truncate` drops everything after a block. The original model is
never mutated. `run_with_cache(model, tokens, sites)` runs it functionally and returns
`(logits, {site: [batch, seq, d] array})`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts

KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "ln1.hook_normalized",
         "ln2.hook_normalized",
         "attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern")
HEAD_KINDS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern")  # per-head values
_SITE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in KINDS) + ")$")


def parse(site: str) -> tuple[int, str]:
    m = _SITE.match(site)
    if not m:
        raise ValueError(f"unknown hook site {site!r}; sites look like blocks.{{L}}.{{kind}} with kind one of "
                         f"{', '.join(KINDS)}")
    return int(m.group(1)), m.group(2)


def require_reconstruction(sae, site: str, what: str) -> None:
    """Refuse a dictionary an evaluation cannot use: one that does not rebuild its own site
    (transcoders) or reads per-head vectors (attn.hook_z etc.): `what` names the evaluation."""
    if sae.spec.is_transcoder:
        raise ValueError(f"{what} reads and writes the dictionary's own site; this dictionary is a transcoder. "
                         "Evaluate an SAE, or use the core evaluation for transcoders")
    if parse(site)[1] in HEAD_KINDS:
        raise ValueError(f"{what} of {parse(site)[1]} (per-head) dictionaries is not supported; train the dictionary "
                         "on a residual, MLP or attention-output site")


@pz.pytree_dataclass
class Tap(pz.nn.Layer):
    """Records the value passing through under a state variable labelled with the site name."""

    saved: pz.StateVariable
    inserted_at_site: ClassVar[bool] = True  # a layer a rewrite put at a site (see _after_leading_hooks)

    @classmethod
    def named(cls, site: str) -> Tap:
        return cls(saved=pz.StateVariable(value=None, label=site))

    def __call__(self, value: Any, /, **_side_inputs) -> Any:
        self.saved.value = value
        return value


def _blocks(lm) -> list:
    return pz.select(lm).at_instances_of(model_parts.TransformerBlock).get_sequence()


def _after_leading_hooks(parts: list, at: int) -> int:
    """The index after any layers already inserted at `at` (Taps, Splices, steering: every layer
    with `inserted_at_site`), so a tap added after a splice sees the spliced value."""
    while at < len(parts) and getattr(parts[at], "inserted_at_site", False):
        at += 1
    return at


def _attention_path(path, layers: dict[str, pz.nn.Layer]):
    """The attention sublayer path [norm, attention, ...] with ln1.hook_normalized after the norm,
    the per-head sites inside the attention (q, k, v at the end of their projections, the pattern
    after the softmax, z before the output projection) and hook_attn_out at its end."""
    if "ln1.hook_normalized" in layers:
        parts = list(path.sublayers)
        if isinstance(parts[0], pz.nn.Attention):
            raise ValueError("ln1.hook_normalized: this model's attention has no input norm")
        parts.insert(_after_leading_hooks(parts, 1), layers["ln1.hook_normalized"])
        path = pz.nn.Sequential(parts)
    inner = {k: layers[k] for k in HEAD_KINDS if k in layers}
    if inner:
        def with_heads(attn):
            new = {}
            for kind, field in (("attn.hook_q", "input_to_query"), ("attn.hook_k", "input_to_key"),
                                ("attn.hook_v", "input_to_value"), ("attn.hook_pattern", "query_key_to_attn")):
                if kind in inner:
                    new[field] = pz.nn.Sequential([*getattr(attn, field).sublayers, inner[kind]])
            if "attn.hook_z" in inner:
                parts = list(attn.attn_value_to_output.sublayers)  # [weights x values einsum, output projection]
                parts.insert(_after_leading_hooks(parts, 1), inner["attn.hook_z"])
                new["attn_value_to_output"] = pz.nn.Sequential(parts)
            return dataclasses.replace(attn, **new)

        path = pz.select(path).at_instances_of(pz.nn.Attention).apply(with_heads)
    if "hook_attn_out" in layers:
        path = pz.nn.Sequential([path, layers["hook_attn_out"]])
    return path


def _mlp_path(path, layers: dict[str, pz.nn.Layer]):
    """The MLP sublayer path [norm, mlp, ...] with ln2.hook_normalized and hook_mlp_out."""
    parts = list(path.sublayers)
    if "ln2.hook_normalized" in layers:
        parts.insert(_after_leading_hooks(parts, 1), layers["ln2.hook_normalized"])
    if "hook_mlp_out" in layers:
        parts.append(layers["hook_mlp_out"])
    return pz.nn.Sequential(parts)


def _insert(block, layers: dict[str, pz.nn.Layer]):
    """Block L with `layers[kind]` placed at each named site (pure: returns a new block)."""
    seq = list(block.sublayers)
    pre = [layers["hook_resid_pre"]] if "hook_resid_pre" in layers else []
    post = [layers["hook_resid_post"]] if "hook_resid_post" in layers else []
    residual = [i for i, x in enumerate(seq) if isinstance(x, pz.nn.Residual)]
    if len(residual) == 2:
        (attn_i, ffw_i), (attn, ffw) = residual, (seq[residual[0]], seq[residual[1]])
        attn = dataclasses.replace(attn, delta=_attention_path(attn.delta, layers))
        ffw = dataclasses.replace(ffw, delta=_mlp_path(ffw.delta, layers))
        mid = [layers["hook_resid_mid"]] if "hook_resid_mid" in layers else []
        out = seq[:attn_i] + pre + [attn] + seq[attn_i + 1 : ffw_i] + mid + [ffw] + seq[ffw_i + 1 :] + post
        return model_parts.TransformerBlock(sublayers=out)
    if len(seq) == 1 and isinstance(seq[0], pz.nn.BranchAndAddTogether) and len(seq[0].branches) == 3:
        if "hook_resid_mid" in layers:
            raise ValueError("hook_resid_mid does not exist in a parallel-residual block (attention and MLP both "
                             "read hook_resid_pre); use hook_resid_pre, hook_attn_out, hook_mlp_out or hook_resid_post")
        skip, attn, ffw = seq[0].branches
        branch = pz.nn.BranchAndAddTogether([skip, _attention_path(attn, layers), _mlp_path(ffw, layers)])
        return model_parts.TransformerBlock(sublayers=pre + [branch] + post)
    raise ValueError(f"hook sites do not know this block layout: {[type(x).__name__ for x in seq]}")


def _rewrite(lm, layers_at: dict[str, pz.nn.Layer]):
    """Copy of `lm` with layers_at[site] inserted at each site."""
    by_layer: dict[int, dict[str, pz.nn.Layer]] = {}
    for site, layer in layers_at.items():
        index, kind = parse(site)
        by_layer.setdefault(index, {})[kind] = layer
    blocks = _blocks(lm)
    bad = sorted(i for i in by_layer if i >= len(blocks))
    if bad:
        raise ValueError(f"sites name block(s) {bad} but the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    position = {id(b): i for i, b in enumerate(blocks)}
    return (pz.select(lm).at_instances_of(model_parts.TransformerBlock)
            .apply(lambda b: _insert(b, by_layer[position[id(b)]]) if position[id(b)] in by_layer else b))


def with_taps(lm, sites: list[str] | tuple[str, ...]):
    """A copy of the Penzai transformer `lm` with a Tap at every named site."""
    return _rewrite(lm, {s: Tap.named(s) for s in sites})


def _on_penzai(f):
    """Let a Penzai-model rewrite take and return a jaxsae LanguageModel as well."""

    def wrapped(model, *args, **kw):
        if hasattr(model, "model") and hasattr(model, "config"):
            return dataclasses.replace(model, model=f(model.model, *args, **kw))
        return f(model, *args, **kw)

    wrapped.__doc__, wrapped.__name__ = f.__doc__, f.__name__
    return wrapped


@_on_penzai
def truncate(lm, last_block: int):
    """A copy of `lm` that stops after block `last_block` (no final norm, no unembedding): a
    harvest of layer 6 of 30 then costs about a fifth of a forward pass."""
    body = lm.body
    kinds = [isinstance(x, model_parts.TransformerBlock) for x in body.sublayers]
    block_pos = [i for i, k in enumerate(kinds) if k]
    if not 0 <= last_block < len(block_pos):
        raise ValueError(f"cannot truncate after block {last_block}: the model has {len(block_pos)} blocks")
    return dataclasses.replace(lm, body=pz.nn.Sequential(body.sublayers[: block_pos[last_block] + 1]))


def resume_fn(model, site: str):
    """For a residual-stream site, `f(x [batch, seq, d]) -> logits [batch, seq, vocab]` running only
    the layers after the site on activations taken there (an intervention repeated with many
    settings then pays for the layers before the site once); None for other sites."""
    layer, kind = parse(site)
    if kind not in ("hook_resid_pre", "hook_resid_post"):
        return None
    body = model.model.body if hasattr(model, "model") else model.body
    block_pos = [i for i, x in enumerate(body.sublayers) if isinstance(x, model_parts.TransformerBlock)]
    first = layer if kind == "hook_resid_pre" else layer + 1
    if not 0 <= layer < len(block_pos):
        raise ValueError(f"site {site!r}: the model has {len(block_pos)} blocks")
    start = block_pos[first] if first < len(block_pos) else block_pos[-1] + 1
    tail = pz.nn.Sequential(body.sublayers[start:])

    def resume(x_btd) -> jax.Array:
        return _call_tail(tail, jnp.asarray(x_btd)).untag("batch", "seq", "vocabulary").unwrap()

    resume.tail = tail  # the Penzai layers themselves, for callers that differentiate through them
    return resume


def apply_tail(tail, x_btd):
    """The layers of `resume_fn(...).tail` on positional activations (a pure function of a bound
    or frozen-then-rebound tail; it can be differentiated)."""
    x = pz.nx.wrap(x_btd).tag("batch", "seq", "embedding")
    return tail(x, token_positions=pz.nx.arange("seq", x_btd.shape[1]))


_call_tail = pz.variable_jit(apply_tail)


def _positional(value: pz.nx.NamedArray) -> tuple[jax.Array, tuple[str, ...], tuple[int, ...]]:
    """Named site value -> (array [batch, seq, d] or, for attention heads, [batch, seq, heads,
    head_dim] with grouped head axes flattened), its axis order, and the unflattened shape."""
    if "kv_seq" in value.named_shape:  # attention pattern -> [batch, heads, query_seq, key_seq]
        lead = [n for n in ("batch",) if n in value.named_shape]
        heads = [n for n in value.named_shape if n not in ("batch", "seq", "kv_seq")]
        names = (*lead, *heads, "seq", "kv_seq")
        array = value.untag(*names).unwrap()
        return array.reshape(*array.shape[: len(lead)], -1, *array.shape[-2:]), names, array.shape
    lead = [n for n in ("batch", "seq") if n in value.named_shape]
    rest = [n for n in value.named_shape if n not in lead and n != "projection"]
    names = (*lead, *rest, *(["projection"] if "projection" in value.named_shape else []))
    array = value.untag(*names).unwrap()
    if "projection" in names and len(rest) != 1:  # [.., head_groups, query_heads, p] -> [.., heads, p]
        return array.reshape(*array.shape[: len(lead)], -1, array.shape[-1]), names, array.shape
    return array, names, array.shape


@pz.pytree_dataclass
class Splice(pz.nn.Layer):
    """Replaces the value at a site by fn(value) on plain arrays ([batch, seq, d]; hook_z sites
    [batch, seq, heads, head_dim]). `fn` is static; `payload` (a pytree, e.g. an SAE) is passed as
    fn's second argument so its arrays stay leaves."""

    payload: Any
    fn: Any = dataclasses.field(metadata={"pytree_node": False})
    inserted_at_site: ClassVar[bool] = True

    def __call__(self, value: Any, /, **_side_inputs) -> Any:
        array, names, shape = _positional(value)
        out = self.fn(array, self.payload)
        return pz.nx.wrap(out.astype(value.dtype).reshape(shape)).tag(*names)


@_on_penzai
def splice(lm, site: str, fn, payload: Any = None):
    """A copy of `lm` whose activation at `site` is replaced by fn(x, payload)."""
    return _rewrite(lm, {site: Splice(payload=payload, fn=fn)})


@dataclasses.dataclass(frozen=True)
class _SaeOut:
    """fn(x, sae) of an SAE splice (a value-compared dataclass, so equal splices share one compile)."""

    site: str
    keep_error: bool

    def __call__(self, x, sae):
        if x.shape[-1] != sae.d_in:
            raise ValueError(f"splice_sae at {self.site}: the dictionary reads vectors of width d_in={sae.d_in} but the "
                             f"site holds width {x.shape[-1]}; use a dictionary trained on this site of this model")
        x_hat = sae.forward(x)
        return x_hat + jax.lax.stop_gradient(x - x_hat) if self.keep_error else x_hat


def model_width(lm) -> int | None:
    """d_model of a Penzai transformer (the size of its `embedding` axis), or None if unknown."""
    model = lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm
    for p in pz.select(model).at_instances_of(pz.Parameter).get_sequence():
        shape = getattr(p.value, "named_shape", {})
        if "embedding" in shape:
            return int(shape["embedding"])
    return None


def splice_sae(lm, site: str, sae, keep_error: bool = False):
    """Replace the activation at `site` by the dictionary's reconstruction; with keep_error the
    reconstruction error is added back (outputs unchanged, latents now on the path). A dictionary
    whose width does not match the site is refused here (or, for attn.hook_z, when first called)."""
    _, kind = parse(site)
    width = model_width(lm)
    if kind not in HEAD_KINDS and width is not None and sae.d_in != width:
        raise ValueError(f"splice_sae at {site}: the dictionary reads vectors of width d_in={sae.d_in} but this "
                         f"model's {kind} has width {width}; use a dictionary trained on this site of this model")
    return splice(lm, site, _SaeOut(site, keep_error), sae)


@pz.pytree_dataclass
class AttentionSplice(pz.nn.Layer):
    """At hook_attn_out: replaces the attention output by fn(x_in, pattern, out, payload), where
    x_in ([batch, seq, d]) and pattern ([batch, heads, seq, seq]) are this forward's values at the
    layer's input site and attn.hook_pattern (read from the Taps placed there, which share these
    state variables)."""

    x_in: pz.StateVariable
    pattern: pz.StateVariable
    payload: Any
    fn: Any = dataclasses.field(metadata={"pytree_node": False})
    inserted_at_site: ClassVar[bool] = True

    def __call__(self, value: Any, /, **_side_inputs) -> Any:
        array, names, shape = _positional(value)
        out = self.fn(_positional(self.x_in.value)[0], _positional(self.pattern.value)[0], array, self.payload)
        return pz.nx.wrap(out.astype(value.dtype).reshape(shape)).tag(*names)


@_on_penzai
def splice_attention(lm, layer: int, fn, payload: Any = None, input_kind: str = "ln1.hook_normalized"):
    """A copy of `lm` whose attention output at block `layer` is fn(x_in, pattern, out, payload):
    an attention replacement (a multitoken transcoder) computed from the live normalised input and
    the live attention pattern of the same forward, all by model surgery."""
    x_tap = Tap.named(f"blocks.{layer}.{input_kind}")
    p_tap = Tap.named(f"blocks.{layer}.attn.hook_pattern")
    out = AttentionSplice(x_in=x_tap.saved, pattern=p_tap.saved, payload=payload, fn=fn)
    return _rewrite(lm, {f"blocks.{layer}.{input_kind}": x_tap, f"blocks.{layer}.attn.hook_pattern": p_tap,
                         f"blocks.{layer}.hook_attn_out": out})


def splice_zero(lm, site: str):
    return splice(lm, site, lambda x, _: jnp.zeros_like(x))


def splice_mean(lm, site: str, mean_d: jax.Array):
    """Mean-ablation: every position gets the dataset mean `mean_d` [d]."""
    return splice(lm, site, lambda x, m: jnp.broadcast_to(m.astype(x.dtype), x.shape), jnp.asarray(mean_d))


def run_with_cache(model, tokens, sites, stop_early: bool = False):
    """(logits [batch, seq, vocab], {site: [batch, seq, d]}) from one forward pass. With
    stop_early the model is truncated after the deepest block a site needs and logits is None."""
    tokens = jnp.asarray(tokens, jnp.int32)
    sites = list(sites)
    lm = truncate(model.model, max(parse(s)[0] for s in sites)) if stop_early else model.model
    tapped = with_taps(lm, sites)
    out = _call(tapped, tokens)  # jitted; the taps' state variables are written back in place
    cache = {t.saved.label: _to_array(t.saved.value) for t in pz.select(tapped).at_instances_of(Tap).get_sequence()}
    if stop_early:
        return None, cache
    return out.untag("batch", "seq", "vocabulary").unwrap(), cache


def capture_fn(model, sites, stop_early: bool = True):
    """A reusable `tokens [batch, seq] -> {site: array}` for many batches (harvesting, streaming):
    the model is truncated after the deepest site and tapped once, not per call."""
    sites = list(sites)
    lm = truncate(model.model, max(parse(s)[0] for s in sites)) if stop_early else model.model
    tapped = with_taps(lm, sites)
    taps = pz.select(tapped).at_instances_of(Tap).get_sequence()

    def capture(tokens) -> dict[str, jax.Array]:
        _call(tapped, tokens)
        return {t.saved.label: _to_array(t.saved.value) for t in taps}

    return capture


@pz.variable_jit
def _call(model, tokens):
    return model(pz.nx.wrap(tokens).tag("batch", "seq"), token_positions=pz.nx.arange("seq", tokens.shape[1]))


def _to_array(value) -> jax.Array:
    """Named [batch, seq, ...] -> positional, batch and seq first (see _positional)."""
    return _positional(value)[0]
