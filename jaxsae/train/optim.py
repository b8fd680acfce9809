"""Optax chains: grad-norm clipping, unit-norm decoder projection, Adam, LR schedule.

Order per step (dictionary_learning's): project out each decoder row's parallel gradient
component, clip the global norm, Adam, scale by the LR schedule; after the update the train step
renormalises the rows (Adam's per-coordinate scaling leaves the sphere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxsae.train.recipes import Schedule

EPS = 1e-8


def lr_schedule(s: Schedule) -> optax.Schedule:
    """Linear warm-up from 0, constant, linear decay to 0 over the last `lr_decay_steps`."""
    warm, decay, total = s.lr_warmup_steps, s.lr_decay_steps, s.total_steps

    def sched(step):
        step = jnp.asarray(step, jnp.float32)
        w = jnp.where(warm > 0, jnp.minimum(1.0, (step + 1) / max(warm, 1)), 1.0)
        d = jnp.where(decay > 0, jnp.clip((total - step) / max(decay, 1), 0.0, 1.0), 1.0)
        return s.lr * w * d

    return sched


def sparsity_scale(s: Schedule, step: jax.Array) -> jax.Array:
    """Linear warm-up of the sparsity coefficient from 0 to 1."""
    if s.sparsity_warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / s.sparsity_warmup_steps)


def project_decoder_grads(key: str = "W_dec") -> optax.GradientTransformation:
    """Remove the component of each decoder-row gradient parallel to that row."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("project_decoder_grads needs params")
        w = params[key]
        w_hat = w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + EPS)
        g = updates[key]
        updates = {**updates, key: g - jnp.sum(g * w_hat, axis=-1, keepdims=True) * w_hat}
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_by_leading_norm(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping done separately for each index of every leaf's leading axis (the
    dictionaries of a sweep: one dictionary's large gradient never shrinks another's step)."""

    def update(updates, state, params=None):
        sq = sum(jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1) for g in jax.tree.leaves(updates))
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(jnp.sqrt(sq), EPS))
        return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_leading(factors) -> optax.GradientTransformation:
    """Multiply index i of every leaf's leading axis by factors[i] (a sweep's per-dictionary LR)."""
    f = jnp.asarray(factors, jnp.float32)

    def update(updates, state, params=None):
        return jax.tree.map(lambda g: g * f.reshape((-1,) + (1,) * (g.ndim - 1)), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(s: Schedule, unit_norm_decoder: bool, lr_factors=None) -> optax.GradientTransformation:
    """lr_factors: a sweep's per-dictionary LR multipliers (leading axis of every parameter); with
    them gradient clipping is per dictionary too."""
    parts = []
    if unit_norm_decoder:
        parts.append(project_decoder_grads())
    if s.grad_clip and s.grad_clip > 0:
        parts.append(clip_by_leading_norm(s.grad_clip) if lr_factors is not None else optax.clip_by_global_norm(s.grad_clip))
    parts.append(optax.scale_by_adam(b1=s.b1, b2=s.b2, eps=s.eps))
    parts.append(optax.scale_by_learning_rate(lr_schedule(s)))
    if lr_factors is not None:
        parts.append(scale_leading(lr_factors))
    return optax.chain(*parts)


def renormalize_decoder(params: dict, key: str = "W_dec") -> dict:
    w = params[key]
    return {**params, key: w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + EPS)}
