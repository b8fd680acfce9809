"""The train state pytree and its logical axes (for sharding and checkpoint restore)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxsae import sharding
from jaxsae.dictionaries.base import Dictionary


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimiser steps taken
    params: dict
    opt_state: Any
    dict_state: dict  # dead-latent counters, BatchTopK threshold, ...
    scale_in: jax.Array  # fixed input normalisation: the model sees scale_in * x
    scale_out: jax.Array  # and predicts scale_out * y (transcoders; = scale_in for SAEs)


def create(spec: Dictionary, tx: optax.GradientTransformation, key: jax.Array, b_dec_init: jax.Array | None,
           scale_in: jax.Array, scale_out: jax.Array) -> TrainState:
    params = spec.init(key, b_dec_init)
    return TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(params), dict_state=spec.init_state(),
        scale_in=jnp.asarray(scale_in, jnp.float32), scale_out=jnp.asarray(scale_out, jnp.float32),
    )


def logical_axes(spec: Dictionary, tx: optax.GradientTransformation, abstract: TrainState) -> TrainState:
    """A TrainState-shaped tree of logical-axis tuples: params by the spec, optimiser moments like
    their params (via optax.tree_map_params), scalars replicated."""
    p_axes = spec.param_axes()
    opt_axes = optax.tree_map_params(
        tx, lambda _, ax: ax, abstract.opt_state, p_axes,
        transform_non_params=lambda leaf: (None,) * len(leaf.shape), is_leaf=sharding.is_axes,
    )
    # the scales are a scalar, or one per layer ([L, 1]): replicated either way
    return TrainState(step=(), params=p_axes, opt_state=opt_axes, dict_state=spec.state_axes(),
                      scale_in=(None,) * abstract.scale_in.ndim, scale_out=(None,) * abstract.scale_out.ndim)
