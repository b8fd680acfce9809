"""Steering, clamping and latent ablation as model rewrites, active at every position after BOS:
the prompt's and, under `jaxsae.generate`, every generated one.

  v = steering.diff_in_means(lm, site, positive_prompts, negative_prompts)   # CAA vector [d]
  steered = steering.add(lm, site, v, coefficient=4.0)
  steered = steering.add_latent(lm, site, sae, latent=123, alpha=8.0)        # x + alpha d_i
  clamped = steering.clamp_latents(lm, site, sae, [123], [10.0])            # x + (c - f_i(x)) d_i
  ablated = steering.ablate_latents(lm, site, sae, [123], mean=None)        # c = 0 (or E[f_i])
  new = generate.greedy(steered, prompt_bt, 20)

Clamping and ablation keep the dictionary's error term: only the named latents' contributions
change, so clamping a latent to its own value is an identity. Positions are read from the
model's `token_positions` side input (also in Penzai's sampling mode), so BOS (position 0) and
left padding (position -1) are never steered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from jaxsae import sites


@pz.pytree_dataclass
class Steer(pz.nn.Layer):
    """x -> fn(x, payload) at positions >= first_position, x elsewhere."""

    payload: Any
    fn: Any = dataclasses.field(metadata={"pytree_node": False})
    first_position: int = dataclasses.field(default=1, metadata={"pytree_node": False})
    inserted_at_site: ClassVar[bool] = True

    def __call__(self, value, /, **side):
        array, names, shape = sites._positional(value)
        out = pz.nx.wrap(self.fn(array, self.payload).astype(value.dtype).reshape(shape)).tag(*names)
        positions = side.get("token_positions")
        if positions is None:
            return out
        return pz.nx.nmap(jnp.where)(positions >= self.first_position, out, value)


def _insert(lm, site: str, layer):
    kind = sites.parse(site)[1]
    if kind in sites.HEAD_KINDS:
        raise ValueError(f"steering at {site}: steer a residual, attention-output or MLP-output site "
                         "(per-head sites are not steering targets)")
    model = lm.model if hasattr(lm, "model") and hasattr(lm, "config") else lm
    new = sites._rewrite(model, {site: layer})
    return dataclasses.replace(lm, model=new) if model is not lm else new


@dataclasses.dataclass(frozen=True)
class _AddVector:
    def __call__(self, x, payload):
        v, c = payload
        return x + c * v.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class _Clamp:
    """x + sum_i (c_i - f_i(x)) d_i for latents i (error kept)."""

    def __call__(self, x, payload):
        sae, idx, values = payload
        f_sel = sae.encode(x)[..., idx]  # [..., n]
        d_nd = sae.params["W_dec"][idx]
        return x + jnp.einsum("...n,nd->...d", values.astype(x.dtype) - f_sel, d_nd.astype(x.dtype))


def _width_check(lm, site, d):
    width = sites.model_width(lm)
    if width is not None and d != width:
        raise ValueError(f"steering at {site}: the vector has width {d} but the model's residual width is {width}")


def add(lm, site: str, vector, coefficient: float, first_position: int = 1):
    """A copy of `lm` that adds coefficient * vector [d] at `site` at every position from
    `first_position` on (1: all but BOS)."""
    v = jnp.asarray(vector, jnp.float32)
    if v.ndim != 1:
        raise ValueError(f"steering vector must be one vector [d], got shape {v.shape}")
    _width_check(lm, site, v.shape[0])
    return _insert(lm, site, Steer((v, jnp.float32(coefficient)), _AddVector(), first_position))


def decoder_row(sae, latent: int) -> jax.Array:
    if not 0 <= int(latent) < sae.d_sae:
        raise ValueError(f"latent {latent} is outside the dictionary (0..{sae.d_sae - 1})")
    return jnp.asarray(sae.params["W_dec"][int(latent)], jnp.float32)


def add_latent(lm, site: str, sae, latent: int, alpha: float, first_position: int = 1):
    """x + alpha * d_latent: the dictionary's decoder row (raw activation units) as a steering vector."""
    _check_sae(lm, site, sae)
    return add(lm, site, decoder_row(sae, latent), alpha, first_position)


def _check_sae(lm, site, sae):
    sites.require_reconstruction(sae, site, "latent steering")
    _width_check(lm, site, sae.d_in)


def clamp_latents(lm, site: str, sae, latents, values, first_position: int = 1):
    """Set latents to `values` (one per latent) with the error term kept: x + sum (c - f(x)) d."""
    _check_sae(lm, site, sae)
    idx = np.asarray(list(latents), np.int32)
    vals = np.broadcast_to(np.asarray(values, np.float32), idx.shape)
    if idx.size == 0:
        raise ValueError("clamp_latents needs at least one latent")
    if idx.min() < 0 or idx.max() >= sae.d_sae:
        raise ValueError(f"latents {idx.tolist()} must lie in 0..{sae.d_sae - 1}")
    return _insert(lm, site, Steer((sae, jnp.asarray(idx), jnp.asarray(vals)), _Clamp(), first_position))


def ablate_latents(lm, site: str, sae, latents, mean=None, first_position: int = 1):
    """Zero-ablate latents (or mean-ablate to `mean`, one value per latent) keeping the error."""
    latents = list(latents)
    values = np.zeros(len(latents), np.float32) if mean is None else np.asarray(mean, np.float32)
    return clamp_latents(lm, site, sae, latents, values, first_position)


def _right_pad(prompts, width: int | None = None, rows_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [max(n, rows_to), width] right-padded with 0, lengths [n])."""
    rows = [list(map(int, p)) for p in prompts]
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("every prompt needs at least one token")
    width = width or max(len(r) for r in rows)
    tokens = np.zeros((max(len(rows), rows_to or 0), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, np.asarray([len(r) for r in rows])


def activations(lm, site: str, prompts, reduce: str = "last", batch_size: int = 16, skip_first: bool = True) -> np.ndarray:
    """[n, d] the site's value per prompt (token-id lists of any length): at the last token
    ("last") or averaged over the tokens after the first ("mean"; BOS excluded)."""
    if reduce not in ("last", "mean"):
        raise ValueError(f"reduce={reduce!r}: use 'last' or 'mean'")
    capture = sites.capture_fn(lm, [site])
    out = []
    prompts = list(prompts)
    width = max(len(p) for p in prompts)
    batch_size = min(batch_size, len(prompts))
    for at in range(0, len(prompts), batch_size):
        # causal attention: right padding changes no real token; one shape for every batch, one compile
        tokens, lengths = _right_pad(prompts[at : at + batch_size], width, batch_size)
        acts = np.asarray(capture(jnp.asarray(tokens))[site], np.float32)
        for r, n in enumerate(lengths):
            if reduce == "last":
                out.append(acts[r, n - 1])
            else:
                lo = 1 if skip_first and n > 1 else 0
                out.append(acts[r, lo:n].mean(0))
    return np.stack(out)


def diff_in_means(lm, site: str, positive, negative, reduce: str = "last") -> np.ndarray:
    """Contrastive activation addition's vector (Rimsky et al. 2312.06681): mean activation on
    the positive prompts minus on the negative ones, [d]."""
    pos, neg = activations(lm, site, positive, reduce), activations(lm, site, negative, reduce)
    return pos.mean(0) - neg.mean(0)
