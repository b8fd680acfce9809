"""Synthetic activations built from known sparse feature directions (Sharkey et al. 2022 style).

n_features unit directions G in R^d_in (more features than dimensions: superposition). Each token
draws which features fire (Bernoulli with per-feature rates spread log-uniformly around
`firing_prob`), a magnitude per firing feature (|N(mean, std)|), optional structure, and noise:

  x = sum_i c_i g_i + noise,     y = sum_i c_i h_i   (h_i in R^d_out: a ground-truth transcoder)

Structure: `correlated_pairs` pairs (2i, 2i+1) where the second copies the first's firing with
prob 0.8; `hierarchy_children` c > 0 makes the last quarter of the features blocks of one parent
and c children that can fire only when their parent fires. Every batch is a pure function of
(seed, step), so resumed runs see exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ToySpec:
    d_in: int = 64
    n_features: int = 512
    d_out: int | None = None
    firing_prob: float = 0.01
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    correlated_pairs: int = 0
    hierarchy_children: int = 0
    noise_std: float = 0.0
    # multi-layer toy (jaxsae/toy/layered.py) when layers > 0: batches [B, layers, d]
    layers: int = 0
    layer_mode: str = "clt"  # clt: per-layer features writing forward | crosscoder: features shared by layers
    write_decay: float = 0.7  # clt: each later layer's write is this much weaker
    exclusive_fraction: float = 0.0  # crosscoder: features present in one layer only

    def __post_init__(self):
        if self.d_in <= 0 or self.n_features <= 0:
            raise ValueError("toy: d_in and n_features must be positive")
        if not 0 < self.firing_prob <= 1:
            raise ValueError(f"toy: firing_prob must be in (0, 1], got {self.firing_prob}")
        if 2 * self.correlated_pairs > self.n_features:
            raise ValueError("toy: correlated_pairs needs 2 features per pair")
        if self.layers < 0 or not 0 < self.write_decay <= 1 or not 0 <= self.exclusive_fraction <= 1:
            raise ValueError("toy: layers must be >= 0, write_decay in (0, 1], exclusive_fraction in [0, 1]")


@flax.struct.dataclass
class ToyFeatures:
    spec: ToySpec = flax.struct.field(pytree_node=False)
    dirs_nd: jax.Array  # unit feature directions (ground truth for x)
    out_dirs_no: jax.Array  # their images in the target space (ground truth for y)
    probs_n: jax.Array  # marginal firing rate of each feature (before structure)
    parent_n: jax.Array  # index of the feature's parent, or -1


def make_features(spec: ToySpec, key: jax.Array) -> ToyFeatures:
    k_dir, k_out, k_p = jax.random.split(key, 3)
    n = spec.n_features
    dirs = jax.random.normal(k_dir, (n, spec.d_in))
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    d_out = spec.d_out or spec.d_in
    if spec.d_out is None:
        out_dirs = dirs
    else:
        out_dirs = jax.random.normal(k_out, (n, d_out))
        out_dirs = out_dirs / jnp.linalg.norm(out_dirs, axis=-1, keepdims=True)
    # rates spread log-uniformly over [p/2, 2p], capped at 1
    probs = jnp.minimum(1.0, spec.firing_prob * 2.0 ** jax.random.uniform(k_p, (n,), minval=-1.0, maxval=1.0))
    parent = -jnp.ones((n,), jnp.int32)
    c = spec.hierarchy_children
    if c > 0:
        block = c + 1
        start = n - (n // 4) // block * block
        idx = jnp.arange(start, n)
        is_child = (idx - start) % block != 0
        parent = parent.at[idx].set(jnp.where(is_child, idx - (idx - start) % block, -1))
    return ToyFeatures(spec, dirs, out_dirs, probs, parent)


@partial(jax.jit, static_argnums=(2,))
def sample(feats: ToyFeatures, key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x [B, d_in], y [B, d_out], coefficients c [B, n_features])."""
    spec = feats.spec
    k_fire, k_mag, k_corr, k_noise, k_child = jax.random.split(key, 5)
    n = spec.n_features
    fire = jax.random.uniform(k_fire, (batch, n)) < feats.probs_n
    if spec.correlated_pairs:
        p = spec.correlated_pairs
        first, second = fire[:, 0 : 2 * p : 2], fire[:, 1 : 2 * p : 2]
        copy = jax.random.uniform(k_corr, (batch, p)) < 0.8
        fire = fire.at[:, 1 : 2 * p : 2].set(jnp.where(copy, first, second))
    if spec.hierarchy_children:
        has_parent = feats.parent_n >= 0
        parent_fire = fire[:, jnp.maximum(feats.parent_n, 0)]
        # children fire (with prob 1/2) only together with their parent
        child_fire = parent_fire & (jax.random.uniform(k_child, (batch, n)) < 0.5)
        fire = jnp.where(has_parent, child_fire, fire)
    mag = jnp.abs(spec.magnitude_mean + spec.magnitude_std * jax.random.normal(k_mag, (batch, n)))
    c_bn = fire * mag
    x = c_bn @ feats.dirs_nd
    if spec.noise_std > 0:
        x = x + spec.noise_std * jax.random.normal(k_noise, x.shape)
    y = c_bn @ feats.out_dirs_no
    return x, y, c_bn


class ToySource:
    """Deterministic batches: batch(step) depends only on (seed, step)."""

    def __init__(self, spec: ToySpec, seed: int, batch_size: int):
        key = jax.random.key(seed)
        self.features = make_features(spec, jax.random.fold_in(key, 0))
        self._key = jax.random.fold_in(key, 1)
        self.batch_size = batch_size
        self.d_in = spec.d_in
        self.d_out = spec.d_out or spec.d_in

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        x, y, _ = sample(self.features, jax.random.fold_in(self._key, step), self.batch_size)
        return x, y
