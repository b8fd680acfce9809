"""Patchscopes (Ghandeharioun et al. 2401.06102): read a hidden state from a source prompt, write
it into a target prompt, and let the model say what it holds.

  scope = patchscopes.identity_accuracy(lm, tokenizer, words, layers=range(30))
  scope["accuracy"]      # per layer: how often the target prompt decodes the source word

The default target is the identity prompt "cat->cat; 1135->1135; hello->hello; ?": the source
word's hidden state (read after "The word is") at block l's output replaces the " ?" token's at block l's output, and the
patch counts as decoded when greedy decoding continues with "->" and the word, exactly the
way the prompt's examples copy. Greedy decoding of a known continuation is checked by teacher
forcing (the argmax at every position of the continuation equals its next token), so every
(layer, word) is one forward pass of one compiled, batched program (`patching.run_cells`).
`patch_into` is the general form: any source states, target prompt, positions and layers, and
free generation.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from jaxsae import generate, sites
from jaxsae.causal import patching

IDENTITY_PROMPT = "cat->cat; 1135->1135; hello->hello; ?"


@flax.struct.dataclass
class GreedyMatch:
    """1 where the argmax at positions [start, start + n) predicts tokens[start + 1 .. start + n]."""

    tokens: jax.Array
    start: int = flax.struct.field(pytree_node=False)
    n: int = flax.struct.field(pytree_node=False)

    def __call__(self, logits_bsv):
        pred = jnp.argmax(logits_bsv[:, self.start : self.start + self.n], axis=-1)
        want = self.tokens[:, self.start + 1 : self.start + 1 + self.n]
        return jnp.all(pred == want, axis=1).astype(jnp.float32)


def source_states(lm, source_tokens, layers, positions) -> dict[int, np.ndarray]:
    """{layer: [n, d]} block outputs (hook_resid_post) of each source row at its position."""
    tokens = np.asarray(source_tokens, np.int32)
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    _, cache = sites.run_with_cache(lm, tokens, names)
    rows = np.arange(len(tokens))
    pos = np.broadcast_to(np.asarray(positions), rows.shape)
    return {layer: np.asarray(cache[n])[rows, pos] for layer, n in zip(layers, names)}


def identity_words(tokenizer, words) -> list[str]:
    """The words the identity prompt can test: " word" one token (the slot " ?" fills) and "->word"
    tokenised as "->" then one token (the copy)."""
    arrow = tokenizer.encode("->")
    keep = []
    for w in words:
        spaced, copied = tokenizer.encode(" " + w), tokenizer.encode("->" + w)
        if len(spaced) == 1 and len(arrow) == 1 and len(copied) == 2 and copied[0] == arrow[0]:
            keep.append(w)
    return keep


def identity_accuracy(lm, tokenizer, words, layers=None, target_prompt: str = IDENTITY_PROMPT,
                      target_layer_offset: int = 0, source_prefix: str = "The word is") -> dict:
    """Per-layer decoding accuracy of the identity patchscope: {"layers", "accuracy", "words",
    "baseline"}; baseline is the accuracy with the word itself written in place of the " ?"
    (no patching: how well the prompt copies at all). Source: [BOS, source_prefix, " word"] (a
    context: the state of a word right after BOS is an attention-sink outlier that decodes
    poorly); the state of block l's output at the word replaces the target's at block
    l + target_layer_offset."""
    n_blocks = patching.n_blocks(lm)
    layers = list(range(n_blocks)) if layers is None else [int(layer) for layer in layers]
    words = identity_words(tokenizer, words)
    if not words:
        raise ValueError("no word passes the identity prompt's tokenisation check (' word' one token, '->word' = "
                         "'->' + one token); pass common single-token words")
    if not target_prompt.endswith("?"):
        raise ValueError("the target prompt must end with the placeholder '?' that the patched state replaces")
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    target = bos + tokenizer.encode(target_prompt)
    slot = len(target) - 1
    word_ids = [tokenizer.encode(" " + w)[0] for w in words]
    copies = [tokenizer.encode("->" + w) for w in words]
    rows = np.asarray([target + c for c in copies], np.int32)  # target, then the expected continuation
    metric = GreedyMatch(jnp.asarray(rows), slot, 2)
    baseline_rows = rows.copy()
    baseline_rows[:, slot] = [tokenizer.encode(" " + w)[0] for w in words]
    baseline = float(np.asarray(metric(lm(baseline_rows))).mean())
    prefix = tokenizer.encode(source_prefix) if source_prefix else []
    src = source_states(lm, np.asarray([bos + prefix + [w] for w in word_ids], np.int32), layers,
                        len(bos) + len(prefix))
    cells, site_src = [], {}
    for layer in layers:
        t = layer + target_layer_offset
        if not 0 <= t < n_blocks:
            raise ValueError(f"target layer {t} (layer {layer} + offset {target_layer_offset}) is outside "
                             f"0..{n_blocks - 1}")
        site = f"blocks.{t}.hook_resid_post"
        value = np.zeros((len(rows), rows.shape[1], src[layer].shape[-1]), np.float32)
        value[:, slot] = src[layer]
        site_src.setdefault(site, []).append((layer, value))
    # one source array per target site; several source layers into one target site run as separate calls
    accuracy = {}
    for rep in range(max(len(v) for v in site_src.values())):
        src_now = {s: jnp.asarray(v[rep][1]) for s, v in site_src.items() if len(v) > rep}
        mask = np.zeros(rows.shape[1], np.float32)
        mask[slot] = 1
        cells = [(s, mask) for s in src_now]
        got = patching.run_cells(lm, rows, src_now, cells, metric)
        for (s, _), g in zip(cells, got):
            accuracy[site_src[s][rep][0]] = float(g)
    return {"layers": layers, "accuracy": [accuracy[layer] for layer in layers], "words": words, "baseline": baseline,
            "target_prompt": target_prompt, "target_layer_offset": target_layer_offset}


@pz.pytree_dataclass
class _WriteAt(pz.nn.Layer):
    """Replaces the value at absolute position `position` (the model's token_positions) by h [batch, d]."""

    h: jax.Array
    position: int = dataclasses.field(metadata={"pytree_node": False})
    inserted_at_site = True

    def __call__(self, value, /, **side):
        positions = side["token_positions"]
        new = pz.nx.wrap(self.h.astype(value.dtype)).tag("batch", "embedding")
        return pz.nx.nmap(jnp.where)(positions == self.position, new, value)


def patch_into(lm, states_bd, target_tokens, layer: int, position: int, max_new_tokens: int = 8) -> np.ndarray:
    """Greedy continuation [batch, max_new_tokens] of `target_tokens` ([batch, T], or [T] for every
    row) with block `layer`'s output at `position` replaced by states_bd [batch, d], at the prompt's
    forward pass (the KV cache then carries it to every generated token)."""
    states = jnp.asarray(states_bd, jnp.float32)
    target = np.asarray(target_tokens, np.int32)
    if target.ndim == 1:
        target = np.broadcast_to(target, (states.shape[0], target.shape[0]))
    position = position % target.shape[1]
    site = f"blocks.{layer}.hook_resid_post"
    surgery = lambda m: sites._rewrite(m, {site: _WriteAt(states, position)})  # noqa: E731
    return np.asarray(generate.greedy(lm, target, max_new_tokens, model_surgery=surgery))
