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


def make_optimizer(s: Schedule, unit_norm_decoder: bool) -> optax.GradientTransformation:
    parts = []
    if unit_norm_decoder:
        parts.append(project_decoder_grads())
    if s.grad_clip and s.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(s.grad_clip))
    parts.append(optax.scale_by_adam(b1=s.b1, b2=s.b2, eps=s.eps))
    parts.append(optax.scale_by_learning_rate(lr_schedule(s)))
    return optax.chain(*parts)


def renormalize_decoder(params: dict, key: str = "W_dec") -> dict:
    w = params[key]
    return {**params, key: w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + EPS)}
