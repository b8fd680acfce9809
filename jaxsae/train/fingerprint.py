"""Checksums and finiteness of a (sharded) pytree of arrays, computed on device.

`inspect(tree)` gives each leaf a 64-bit hash of its bits and positions: every element's bits
are mixed with its flat index (murmur3's 32-bit finaliser) and summed modulo 2**32, twice with
different mixes. Integer sums are exact in any order, so the hash is the same however the array is
sharded, on one device or a pod, and it never gathers an array to a host. A flipped bit anywhere
changes it; it also lists the float leaves holding nan or inf (`nonfinite(tree)`). One jitted pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _fmix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits_u32(a: jax.Array) -> jax.Array:
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    if a.dtype == jnp.bool_:
        return a.astype(jnp.uint32)
    size = jnp.dtype(a.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(a, jnp.uint32)
    if size == 2:
        return jax.lax.bitcast_convert_type(a, jnp.uint16).astype(jnp.uint32)
    if size == 1:
        return jax.lax.bitcast_convert_type(a, jnp.uint8).astype(jnp.uint32)
    if size == 8:  # -> [..., 2] uint32 halves
        return jax.lax.bitcast_convert_type(a, jnp.uint32)
    raise TypeError(f"cannot fingerprint dtype {a.dtype}")


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """The row-major flat index of every element (uint32, wrapping), built from iotas so it shards
    like the array instead of being one long vector."""
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % (1 << 32))
        stride *= shape[dim]
    return idx


def _leaf(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    u = _bits_u32(a)
    idx = _flat_index(u.shape)
    h1 = jnp.sum(_fmix(u ^ _fmix(idx * jnp.uint32(2) + jnp.uint32(1))), dtype=jnp.uint32)
    h2 = jnp.sum(_fmix((u + jnp.uint32(0x9E3779B9)) ^ _fmix(idx + jnp.uint32(0x7F4A7C15))), dtype=jnp.uint32)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        finite = jnp.all(jnp.isfinite(a))
    else:
        finite = jnp.bool_(True)
    return h1, h2, finite


@functools.partial(jax.jit)
def _all_leaves(leaves):
    return [_leaf(a) for a in leaves]


def leaf_paths(tree) -> tuple[list[str], list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [v for _, v in flat]


def inspect(tree) -> tuple[dict[str, dict], list[str]]:
    """({leaf path: {"hash", "shape", "dtype"}}, [paths of leaves holding nan/inf]) in one pass."""
    names, leaves = leaf_paths(tree)
    results = jax.device_get(_all_leaves(leaves))
    info, bad = {}, []
    for name, leaf, (h1, h2, finite) in zip(names, leaves, results):
        info[name] = {"hash": f"{int(h1):08x}{int(h2):08x}", "shape": list(np.shape(leaf)), "dtype": str(leaf.dtype)}
        if not bool(finite):
            bad.append(name)
    return info, bad


def nonfinite(tree) -> list[str]:
    return inspect(tree)[1]


def mismatches(saved: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """Leaf paths whose hash, shape or dtype differ (or that exist on one side only)."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
