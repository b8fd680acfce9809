"""The pure train step: (state, batch) -> (state, metrics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxsae.dictionaries.base import Dictionary, LossContext
from jaxsae.train import optim
from jaxsae.train.recipes import Schedule
from jaxsae.train.state import TrainState


def make_train_step(spec: Dictionary, tx: optax.GradientTransformation, sched: Schedule, dead_tokens: int):
    """Returns step(state, x_bd, y_bo) -> (state, metrics); x and y are raw (un-normalised)."""

    def train_step(state: TrainState, x_bd: jax.Array, y_bo: jax.Array):
        nonfinite_inputs = jnp.sum(~jnp.isfinite(x_bd)) + jnp.sum(~jnp.isfinite(y_bo))
        x_bd = spec.scale_inputs(x_bd.astype(jnp.float32), state.scale_in)
        y_bo = y_bo.astype(jnp.float32) * state.scale_out
        dead_f = state.dict_state["tokens_since_fired"] >= dead_tokens
        ctx = LossContext(sparsity_scale=optim.sparsity_scale(sched, state.step), dead_f=dead_f)

        def loss_fn(params):
            out = spec.loss(params, x_bd, y_bo, ctx)
            return out.loss, out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if spec.unit_norm_decoder:
            params = optim.renormalize_decoder(params)
        dict_state = spec.update_state(state.dict_state, out, x_bd.shape[0] * spec.tokens_per_example, state.step)
        metrics = {
            **out.metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": optim.lr_schedule(sched)(state.step),
            "dead_fraction": jnp.mean((dict_state["tokens_since_fired"] >= dead_tokens).astype(jnp.float32)),
            "nonfinite_inputs": nonfinite_inputs,  # the loop's divergence diagnosis; not logged
        }
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, dict_state=dict_state)
        return new, metrics

    return train_step
