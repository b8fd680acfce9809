"""The local replacement model of circuit tracing (Ameisen et al. 2025; circuit-tracer's
`_configure_gradient_flow`), as Penzai surgery on a jaxsae model for one prompt.

On the prompt's own tokens it computes exactly the model's values. Frozen, it is linear in
the nodes of an attribution graph:
  * every norm uses the prompt's own scale and mean (`interventions.freeze_norms`);
  * every attention pattern is the prompt's own (a constant at `attn.hook_pattern`);
  * every MLP output is a constant (the prompt's own `hook_mlp_out`): the transcoders' latents and
    the error (MLP output minus reconstruction) are what it is made of, and both are inputs here;
  * `deltas` are added at the embedding output (`blocks.0.hook_resid_pre`) and at every
    `hook_mlp_out`.

`readout(deltas)` returns the transcoders' input site at every layer ([L, T, d]) and the logits at
the last position ([V]); its VJP against a target's encoder row gives that target's edges from
every source at once, and the same function run forward with a delta is the "double a feature"
check of circuit-tracer's exactness tests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from penzai import pz

from jaxsae import sites
from jaxsae.causal import interventions as iv


@dataclasses.dataclass(frozen=True)
class Constant:
    """x -> the payload (the prompt's own value): no dependence on anything upstream."""

    def __call__(self, x, value):
        return jax.lax.stop_gradient(value.astype(x.dtype))


@dataclasses.dataclass(frozen=True)
class ConstantPlus:
    """x -> the prompt's own value + a delta (the MLP output as a constant plus written nodes)."""

    def __call__(self, x, payload):
        value, delta = payload
        return jax.lax.stop_gradient(value.astype(x.dtype)) + delta.astype(x.dtype)


@dataclasses.dataclass
class Replacement:
    """A frozen model for one prompt [1, T] and what it was frozen from."""

    slots: object
    values: tuple
    tokens: jax.Array  # [1, T]
    n_layers: int
    input_kind: str  # the transcoders' input site kind (ln2.hook_normalized or hook_resid_mid)
    patterns: dict  # layer -> the prompt's attention pattern at that layer
    mlp_out_ltd: jax.Array  # [L, T, d] the prompt's MLP outputs
    inputs_ltd: jax.Array  # [L, T, d] the transcoders' inputs on the prompt
    embed_td: jax.Array  # [T, d] the embedding output
    logits_v: jax.Array  # [V] the last position's logits


def build(lm, tokens_t, n_layers: int | None = None, input_kind: str = "ln2.hook_normalized") -> Replacement:
    tokens = jnp.asarray(tokens_t, jnp.int32).reshape(1, -1)
    n_layers = n_layers or len(sites._blocks(lm.model))
    in_sites = [f"blocks.{i}.{input_kind}" for i in range(n_layers)]
    need = in_sites + [f"blocks.{i}.hook_mlp_out" for i in range(n_layers)] + ["blocks.0.hook_resid_pre"]
    need += [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    logits, cache = sites.run_with_cache(lm, tokens, need)
    frozen = iv.freeze_norms(lm, tokens)
    tapped = sites.with_taps(frozen.model, in_sites)
    slots, values = iv.freeze(tapped)
    return Replacement(
        slots, values, tokens, n_layers, input_kind,
        {i: cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers)},
        jnp.stack([cache[f"blocks.{i}.hook_mlp_out"][0] for i in range(n_layers)]),
        jnp.stack([cache[s][0] for s in in_sites]), cache["blocks.0.hook_resid_pre"][0], logits[0, -1])


def readout_fn(rep: Replacement):
    """(static structure) -> f(slots, values, tokens, consts, deltas) -> (inputs [L, T, d], logits [V])."""
    n_layers, kind = rep.n_layers, rep.input_kind
    in_sites = [f"blocks.{i}.{kind}" for i in range(n_layers)]

    def f(slots, values, tokens, consts, deltas):
        patterns, mlp_out = consts
        model = iv.bind(slots, values)
        splices = {"blocks.0.hook_resid_pre": (iv.Add(), deltas["embed"][None])}
        for i in range(n_layers):
            splices[f"blocks.{i}.attn.hook_pattern"] = (Constant(), patterns[i])
            splices[f"blocks.{i}.hook_mlp_out"] = (ConstantPlus(), (mlp_out[i][None], deltas["mlp"][i][None]))
        logits = iv.call(iv.rewrite(model, splices), tokens)
        taps = {t.saved.label: t.saved.value for t in pz.select(model).at_instances_of(sites.Tap).get_sequence()}
        inputs = jnp.stack([sites._to_array(taps[s])[0] for s in in_sites])
        return inputs, logits[0, -1]

    return f


def zero_deltas(rep: Replacement) -> dict:
    return {"embed": jnp.zeros_like(rep.embed_td), "mlp": jnp.zeros_like(rep.mlp_out_ltd)}


def consts(rep: Replacement):
    return ([rep.patterns[i] for i in range(rep.n_layers)], rep.mlp_out_ltd)
