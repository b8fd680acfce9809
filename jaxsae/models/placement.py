"""Putting checkpoint tensors on devices as a model is bound: each tensor goes from the (memory-
mapped) file straight to its shards, cast on the way, so no device ever holds a whole model and
the host holds at most one tensor's cast copy at a time.

Shardings come from the Penzai axis names through `jaxsae.axes.PENZAI` and the one rules table
(`jaxsae.sharding.RULES`): vocabulary, MLP neurons and attention heads over the `model` mesh axis.
On a multi-host mesh every process reads only the slices its own devices hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from jaxsae import axes, sharding


def sharding_for(mesh, names, shape, dtype) -> jax.sharding.NamedSharding:
    """The NamedSharding of a parameter whose Penzai axes are `names` (a mesh axis that does not
    divide its dimension is dropped for it)."""
    logical = tuple(axes.PENZAI.get(n) for n in names)
    return sharding.fit_shardings(mesh, logical, jax.ShapeDtypeStruct(tuple(shape), dtype))


class Placer:
    """`put(array, *axis_names) -> NamedArray` on one device (mesh=None) or sharded over `mesh`.
    Floating arrays are cast to `dtype`; others keep theirs."""

    def __init__(self, dtype=jnp.float32, mesh=None):
        self.dtype, self.mesh = dtype, mesh

    def __call__(self, array, *names: str) -> pz.nx.NamedArray:
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        if array.ndim != len(names):
            raise ValueError(f"array of shape {array.shape} tagged with {len(names)} axis names {names}")
        dtype = self.dtype if np.issubdtype(array.dtype, np.floating) or array.dtype == jnp.bfloat16 else array.dtype
        if self.mesh is None:
            data = jnp.asarray(np.asarray(array).astype(dtype))
        else:
            sh = sharding_for(self.mesh, names, array.shape, dtype)
            data = jax.make_array_from_callback(array.shape, sh, lambda idx: np.asarray(array[idx]).astype(dtype))
        return pz.nx.wrap(data).tag(*names)


def bind(model_def: pz.nn.Layer, params: dict[str, pz.nx.NamedArray], prefix: str = "transformer/") -> pz.nn.Layer:
    """Fill a Penzai model definition's parameter slots from {label without prefix: value};
    every slot must be filled."""
    model = pz.bind_variables(model_def, [pz.Parameter(value=v, label=prefix + k) for k, v in params.items()])
    pz.nn.assert_no_parameter_slots(model)
    return model
