"""Hook sites with TransformerLens/SAELens names, as pure model -> model rewrites (Penzai surgery).

  blocks.{L}.hook_resid_pre      input of block L
  blocks.{L}.hook_resid_mid      after block L's attention residual
  blocks.{L}.hook_resid_post     output of block L
  blocks.{L}.hook_attn_out       attention output (before it is added to the residual)
  blocks.{L}.hook_mlp_out        MLP output (before it is added to the residual)
  blocks.{L}.ln2.hook_normalized the MLP's normalised input

`with_taps(lm, sites)` returns a copy of the model with a `Tap` layer at each site; the original
is never mutated. `run_with_cache(lm, tokens, sites)` runs it functionally and returns
`(logits, {site: [batch, seq, d] array})`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts

_SITE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|ln2\.hook_normalized)$")
KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "ln2.hook_normalized")


def parse(site: str) -> tuple[int, str]:
    m = _SITE.match(site)
    if not m:
        raise ValueError(f"unknown hook site {site!r}; sites look like blocks.{{L}}.{{kind}} with kind one of "
                         f"{', '.join(KINDS)}")
    return int(m.group(1)), m.group(2)


@pz.pytree_dataclass
class Tap(pz.nn.Layer):
    """Records the value passing through under a state variable labelled with the site name."""

    saved: pz.StateVariable

    @classmethod
    def named(cls, site: str) -> "Tap":
        return cls(saved=pz.StateVariable(value=None, label=site))

    def __call__(self, value: Any, /, **_side_inputs) -> Any:
        self.saved.value = value
        return value


def _blocks(lm) -> list:
    return pz.select(lm).at_instances_of(model_parts.TransformerBlock).get_sequence()


def _tap_block(block, kinds: dict[str, str]):
    attn, ffw = block.sublayers
    if "hook_attn_out" in kinds:
        attn = dataclasses.replace(attn, delta=pz.nn.Sequential([attn.delta, Tap.named(kinds["hook_attn_out"])]))
    if "ln2.hook_normalized" in kinds or "hook_mlp_out" in kinds:
        parts = list(ffw.delta.sublayers)
        if "ln2.hook_normalized" in kinds:
            parts.insert(1, Tap.named(kinds["ln2.hook_normalized"]))
        if "hook_mlp_out" in kinds:
            parts.append(Tap.named(kinds["hook_mlp_out"]))
        ffw = dataclasses.replace(ffw, delta=pz.nn.Sequential(parts))
    seq = [attn]
    if "hook_resid_mid" in kinds:
        seq.append(Tap.named(kinds["hook_resid_mid"]))
    seq.append(ffw)
    if "hook_resid_pre" in kinds:
        seq.insert(0, Tap.named(kinds["hook_resid_pre"]))
    if "hook_resid_post" in kinds:
        seq.append(Tap.named(kinds["hook_resid_post"]))
    return model_parts.TransformerBlock(sublayers=seq)


def with_taps(lm, sites: list[str] | tuple[str, ...]):
    """A copy of the Penzai transformer `lm` with a Tap at every named site."""
    by_layer: dict[int, dict[str, str]] = {}
    for s in sites:
        layer, kind = parse(s)
        by_layer.setdefault(layer, {})[kind] = s
    blocks = _blocks(lm)
    bad = [l for l in by_layer if l >= len(blocks)]
    if bad:
        raise ValueError(f"sites name block(s) {bad} but the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    index = {id(b): i for i, b in enumerate(blocks)}
    return (pz.select(lm).at_instances_of(model_parts.TransformerBlock)
            .apply(lambda b: _tap_block(b, by_layer[index[id(b)]]) if index[id(b)] in by_layer else b))


def run_with_cache(model, tokens, sites) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(logits [batch, seq, vocab], {site: [batch, seq, d]}) from one forward pass."""
    tokens = jnp.asarray(tokens, jnp.int32)
    tapped = with_taps(model.model, list(sites))
    stateless, state = pz.unbind_state_vars(tapped, freeze=True)
    named = pz.nx.wrap(tokens).tag("batch", "seq")
    logits, new_state = stateless.stateless_call(state, named, token_positions=pz.nx.arange("seq", tokens.shape[1]))
    cache = {}
    for var in new_state:
        if var.label in sites:
            cache[var.label] = _to_array(var.value)
    return logits.untag("batch", "seq", "vocabulary").unwrap(), cache


def _to_array(value) -> jax.Array:
    """Named [batch, seq, ...] -> positional, batch and seq first."""
    lead = [n for n in ("batch", "seq") if n in value.named_shape]
    rest = [n for n in value.named_shape if n not in lead]
    return value.untag(*lead, *rest).unwrap()
