"""Device meshes and the one table that maps logical axes onto mesh axes.

This is the only module that spells mesh axis names. Everything else names logical axes
(`jaxsae.axes`) and asks this module for shardings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsae import axes

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

# logical axis -> mesh axis (None: replicated). The single source of truth for placement.
RULES: Mapping[str, str | None] = {
    axes.BATCH: DATA,
    axes.SEQ: None,
    axes.D_IN: None,
    axes.D_OUT: None,
    axes.D_SAE: MODEL,
    axes.LAYER: None,
    axes.VOCAB: MODEL,
    axes.NEURONS: MODEL,
    axes.HEADS: MODEL,
    axes.SWEEP: None,  # every device trains every dictionary of a sweep on its batch and latent shard
}

AxisNames = Sequence[str | None]


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (default: all). -1 means "whatever is left"."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and model == -1:
        raise ValueError("mesh: at most one of data/model may be -1")
    if data == -1:
        data = n // model if model > 0 and n % model == 0 else 0
    if model == -1:
        model = n // data if data > 0 and n % data == 0 else 0
    if data <= 0 or model <= 0 or data * model != n:
        raise ValueError(
            f"mesh: data={data} x model={model} does not tile the {n} available devices; "
            f"choose sizes whose product is {n} (e.g. data={n}, model=1)"
        )
    arr = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(arr, MESH_AXES)


def spec(logical: AxisNames | None, rules: Mapping[str, str | None] = RULES) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have these logical names."""
    if logical is None:
        return PartitionSpec()
    out = []
    for name in logical:
        if name is None:
            out.append(None)
        elif name not in rules:
            raise KeyError(f"unknown logical axis {name!r}; known: {sorted(rules)}")
        else:
            out.append(rules[name])
    return PartitionSpec(*out)


def named(mesh: Mesh, logical: AxisNames | None) -> NamedSharding:
    return NamedSharding(mesh, spec(logical))


def is_axes(x: Any) -> bool:
    # exactly a tuple: NamedTuples (optax's EmptyState, ...) are tree nodes, not axis names
    return x is None or (type(x) is tuple and all(a is None or isinstance(a, str) for a in x))


def tree_shardings(mesh: Mesh, logical_tree: Any) -> Any:
    """Map a pytree of logical-axis tuples to a pytree of NamedShardings."""
    return jax.tree.map(lambda a: named(mesh, a), logical_tree, is_leaf=is_axes)


def fit_shardings(mesh: Mesh, logical_tree: Any, shape_tree: Any) -> Any:
    """Like tree_shardings, but drops a mesh axis from any dimension it does not divide, and from
    every dimension after the first it shards (grouped-query weights have two head axes that both
    map to `model`; the first that divides takes it).

    Small models on big meshes (a 16-dim toy on 8 devices) then still run; `check_placement`
    reports the large arrays that end up replicated.
    """

    def one(a, sds):
        s = spec(a)
        parts, used = [], set()
        for dim, p in zip(sds.shape, tuple(s) + (None,) * (len(sds.shape) - len(s))):
            size = mesh.shape[p] if p is not None else 1
            ok = p is not None and p not in used and dim % size == 0
            parts.append(p if ok else None)
            used.add(p if ok else None)
        return NamedSharding(mesh, PartitionSpec(*parts))

    return jax.tree.map(one, logical_tree, shape_tree, is_leaf=is_axes)


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{n}={s}" for n, s in mesh.shape.items()) + f" ({mesh.devices.size} devices)"


def check_placement(shape_tree: Any, sharding_tree: Any, min_bytes: int = 64 << 20) -> list[str]:
    """Names (paths) of arrays of at least `min_bytes` that would be fully replicated on a mesh
    with more than one device. Logged as a warning at start-up; empty is healthy."""
    bad = []
    flat_s = jax.tree_util.tree_leaves_with_path(sharding_tree)
    flat_x = jax.tree.leaves(shape_tree)
    for (path, s), x in zip(flat_s, flat_x):
        nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        if nbytes >= min_bytes and s.mesh.devices.size > 1 and s.is_fully_replicated:
            bad.append(f"{jax.tree_util.keystr(path)} {tuple(x.shape)} ({nbytes / 2**20:.0f} MiB)")
    if bad:
        logging.warning("large arrays replicated on every device: %s", ", ".join(bad))
    return bad
