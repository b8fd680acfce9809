"""Text generation on Penzai's key/value-cached sampling mode, batched and jitted once per shape.

  new_bn = generate.greedy(lm, prompt_bt, max_new_tokens=6)
  new_bn = generate.sample(lm, prompt_bt, 20, key=jax.random.key(0), temperature=0.8, top_k=50)
  steered = generate.greedy(lm, prompt_bt, 20, model_surgery=lambda m: sites.splice(m, site, fn, v))

`prompt_bt` is [batch, seq] token ids, every row the same length, or prompts of different lengths
left-padded with `pad_id` (`left_pad(prompts, pad_id=pad_id_for(lm))` builds both): Penzai's sampler
gives pad positions no position and masks them out of attention, so a padded row generates what it
generates alone. The result holds only the new tokens,
[batch, max_new_tokens]. `model_surgery` rewrites the Penzai model before it enters sampling mode,
so a splice or an intervention applies at the prompt's positions and at every generated one.

The whole decode (prefill, then `max_new_tokens - 1` single-token steps in a `fori_loop`) is one
jitted function of the model's variable values, so a second call with the same shapes reuses the
compiled program, whatever the weights, the surgery payload or the key.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import sampling_mode

_NO_PAD = -1  # no token id is negative: Penzai's sampler then treats no position as padding


def _penzai(lm):
    return lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm


def _pick(logits_bv: jax.Array, key: jax.Array | None, temperature: float, top_k: int | None) -> jax.Array:
    logits_bv = logits_bv.astype(jnp.float32)
    if key is None:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    if top_k is not None:
        kth = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("n_new", "sampled", "top_k"))
def _decode(slots, params, state, prompt_bt, key, temperature, n_new: int, sampled: bool, top_k: int | None):
    def call(state_values, tokens_bt):
        model = pz.bind_variables(slots, (*params, *state_values), unfreeze_as_copy=True)
        logits = model(pz.nx.wrap(tokens_bt).tag("batch", "seq"))
        _, new_state = pz.unbind_state_vars(model, freeze=True)
        return logits.untag("batch", "seq", "vocabulary").unwrap()[:, -1], new_state

    def key_at(i):
        return jax.random.fold_in(key, i) if sampled else None

    last_bv, state = call(state, prompt_bt)
    out_bn = jnp.zeros((prompt_bt.shape[0], n_new), jnp.int32)
    out_bn = out_bn.at[:, 0].set(_pick(last_bv, key_at(0), temperature, top_k))

    def step(i, carry):
        state_values, out = carry
        logits_bv, state_values = call(state_values, jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1))
        return state_values, out.at[:, i].set(_pick(logits_bv, key_at(i), temperature, top_k))

    _, out_bn = jax.lax.fori_loop(1, n_new, step, (state, out_bn))
    return out_bn


def pad_id_for(lm) -> int:
    """An id past the model's vocabulary: never generated, so never mistaken for padding (Penzai
    masks every cached token equal to pad_id, generated ones included); its embedding lookup clamps."""
    return int(_penzai(lm).metadata.vocab_size)


def left_pad(prompts, width: int | None = None, pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens [batch, width] left-padded, pads per row [batch], pad_id) for prompts (lists of ids)
    of any lengths. Pass `pad_id=pad_id_for(lm)`; without it the smallest id no prompt uses is taken,
    which is only safe when the model never generates that id."""
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("left_pad: every prompt needs at least one token")
    width = width or max(len(p) for p in prompts)
    if width < max(len(p) for p in prompts):
        raise ValueError(f"left_pad: width {width} is shorter than the longest prompt ({max(map(len, prompts))})")
    used = set().union(*map(set, prompts))
    if pad_id is None:
        pad_id = next(i for i in range(len(used) + 1) if i not in used)
    elif pad_id in used:
        raise ValueError(f"left_pad: pad_id {pad_id} is a token of a prompt")
    out = np.full((len(prompts), width), pad_id, np.int32)
    pads = np.array([width - len(p) for p in prompts], np.int64)
    for r, p in enumerate(prompts):
        out[r, pads[r]:] = p
    return out, pads, pad_id


def _run(lm, prompt_bt, max_new_tokens: int, model_surgery, key, temperature: float, top_k: int | None,
         pad_id: int | None = None):
    prompt_bt = jnp.asarray(prompt_bt, jnp.int32)
    if prompt_bt.ndim != 2 or prompt_bt.shape[1] == 0:
        raise ValueError(f"prompt tokens must be [batch, seq] with seq >= 1, got shape {tuple(prompt_bt.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if bool(np.any(np.asarray(prompt_bt) < 0)):
        raise ValueError("prompt tokens must be non-negative ids")
    model = _penzai(lm)
    if model_surgery is not None:
        model = _penzai(model_surgery(model))
    batch, seq = prompt_bt.shape
    sampler = sampling_mode.KVCachingTransformerLM.from_uncached(
        model, cache_len=seq + max_new_tokens, batch_axes={"batch": batch}, pad_id=_NO_PAD if pad_id is None else pad_id)
    slots, values = pz.unbind_variables(sampler, freeze=True)
    params = tuple(v for v in values if isinstance(v, pz.ParameterValue))
    state = tuple(v for v in values if not isinstance(v, pz.ParameterValue))
    sampled = key is not None
    key = key if sampled else jax.random.key(0)
    return _decode(slots, params, state, prompt_bt, key, jnp.float32(temperature), n_new=max_new_tokens,
                   sampled=sampled, top_k=top_k)


def greedy(lm, tokens, max_new_tokens: int, *, model_surgery=None, pad_id: int | None = None) -> jax.Array:
    """The `max_new_tokens` most likely next tokens, one at a time: [batch, max_new_tokens] int32.
    `model_surgery`: a function Penzai model -> model applied before decoding (e.g. a splice).
    `pad_id`: the id of left padding in `tokens` (see `left_pad`)."""
    return _run(lm, tokens, max_new_tokens, model_surgery, None, 1.0, None, pad_id)


def sample(lm, tokens, max_new_tokens: int, *, key: jax.Array, temperature: float = 1.0, top_k: int | None = None,
           model_surgery=None, pad_id: int | None = None) -> jax.Array:
    """Sampled continuations [batch, max_new_tokens]: softmax(logits / temperature), restricted to
    the `top_k` most likely tokens when given. The same key gives the same tokens."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy() for temperature 0), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return _run(lm, tokens, max_new_tokens, model_surgery, key, temperature, top_k, pad_id)
