"""Synthetic multi-layer activations with known features: ground truth for cross-layer transcoders
and crosscoders (`--config.data.toy.layers=L`).

`mode="clt"`: every layer l has its own n_features features. Feature j of layer l has an input
direction u_j^l (read at layer l) and an output direction v_j^{l->l'} for every layer l' >= l, so

  x^l = sum_j c_j^l u_j^l + noise,        y^l' = sum_{l <= l'} sum_j c_j^l v_j^{l->l'}

which is exactly a cross-layer transcoder's form. A feature's concatenated output directions have
unit norm, and `write_decay` (in (0, 1]) makes later layers' writes weaker.

`mode="crosscoder"`: n_features features shared by all layers, each with a direction per layer
(x^l = y^l = sum_j c_j u_j^l); `exclusive_fraction` of them live in one layer only (zero direction
elsewhere), the case the decoder-norm statistics of a crosscoder must find.

Batches are pure functions of (seed, step), as for the single-site toy (jaxsae/toy/synthetic.py),
and have shape [B, L, d].
"""

from __future__ import annotations

from functools import partial

import flax.struct
import jax
import jax.numpy as jnp

from jaxsae.toy.synthetic import ToySpec

MODES = ("clt", "crosscoder")


@flax.struct.dataclass
class LayeredFeatures:
    spec: ToySpec = flax.struct.field(pytree_node=False)
    in_dirs_lnd: jax.Array  # u_j^l, unit norm (crosscoder: zero where the feature is absent)
    out_dirs: tuple  # clt: per source layer l, [n, L - l, d_out] (concatenation unit norm); crosscoder: ()
    probs_ln: jax.Array  # firing rate of feature j of layer l (crosscoder: the same for every l)
    owner_n: jax.Array  # crosscoder: the one layer an exclusive feature lives in, else -1


def _unit(a, axis):
    return a / jnp.linalg.norm(a, axis=axis, keepdims=True)


def make_features(spec: ToySpec, key: jax.Array) -> LayeredFeatures:
    L, n, d = spec.layers, spec.n_features, spec.d_in
    o = spec.d_out or d
    k_in, k_out, k_p, k_own = jax.random.split(key, 4)
    rates = spec.firing_prob * 2.0 ** jax.random.uniform(k_p, (L, n), minval=-1.0, maxval=1.0)
    probs = jnp.minimum(1.0, rates)
    u = _unit(jax.random.normal(k_in, (L, n, d)), -1)
    if spec.layer_mode == "crosscoder":
        n_excl = int(round(spec.exclusive_fraction * n))
        owner = jnp.where(jnp.arange(n) < n_excl, jnp.arange(n) % L, -1)
        present = (owner[None, :] < 0) | (owner[None, :] == jnp.arange(L)[:, None])
        return LayeredFeatures(spec, u * present[..., None], (), jnp.broadcast_to(probs[0], (L, n)), owner)
    outs = []
    for layer in range(L):
        v = jax.random.normal(jax.random.fold_in(k_out, layer), (n, L - layer, o))
        v = _unit(v, -1) * (spec.write_decay ** jnp.arange(L - layer))[None, :, None]
        outs.append(v / jnp.linalg.norm(v.reshape(n, -1), axis=-1)[:, None, None])
    return LayeredFeatures(spec, u, tuple(outs), probs, -jnp.ones((n,), jnp.int32))


@partial(jax.jit, static_argnums=(2,))
def sample(feats: LayeredFeatures, key: jax.Array, batch: int):
    """(x [B, L, d_in], y [B, L, d_out], coefficients c [B, L, n] (crosscoder: [B, n]))."""
    spec = feats.spec
    L, n = spec.layers, spec.n_features
    k_fire, k_mag, k_noise = jax.random.split(key, 3)
    if spec.layer_mode == "crosscoder":
        fire = jax.random.uniform(k_fire, (batch, n)) < feats.probs_ln[0]
        mag = jnp.abs(spec.magnitude_mean + spec.magnitude_std * jax.random.normal(k_mag, (batch, n)))
        c = fire * mag
        x = jnp.einsum("bn,lnd->bld", c, feats.in_dirs_lnd)
        if spec.noise_std > 0:
            x = x + spec.noise_std * jax.random.normal(k_noise, x.shape)
        return x, x, c
    fire = jax.random.uniform(k_fire, (batch, L, n)) < feats.probs_ln
    mag = jnp.abs(spec.magnitude_mean + spec.magnitude_std * jax.random.normal(k_mag, (batch, L, n)))
    c = fire * mag
    x = jnp.einsum("bln,lnd->bld", c, feats.in_dirs_lnd)
    if spec.noise_std > 0:
        x = x + spec.noise_std * jax.random.normal(k_noise, x.shape)
    y = jnp.zeros((batch, L, spec.d_out or spec.d_in))
    for layer in range(L):
        y = y.at[:, layer:].add(jnp.einsum("bn,nmo->bmo", c[:, layer], feats.out_dirs[layer]))
    return x, y, c


class LayeredToySource:
    """Deterministic [B, L, d] batches: batch(step) depends only on (seed, step)."""

    def __init__(self, spec: ToySpec, seed: int, batch_size: int):
        if spec.layer_mode not in MODES:
            raise ValueError(f"toy.layer_mode={spec.layer_mode!r} is unknown; valid: {', '.join(MODES)}")
        key = jax.random.key(seed)
        self.features = make_features(spec, jax.random.fold_in(key, 0))
        self._key = jax.random.fold_in(key, 1)
        self.batch_size = batch_size
        self.n_layers = spec.layers
        self.d_in = spec.d_in
        self.d_out = spec.d_out or spec.d_in

    def batch(self, step: int):
        x, y, _ = sample(self.features, jax.random.fold_in(self._key, step), self.batch_size)
        return x, y


def clt_recovery(params: dict, feats: LayeredFeatures) -> dict:
    """Per source layer: recovery (jaxsae.evals.ground_truth) of the true concatenated write
    directions by the CLT's concatenated decoders, and of the true read directions by its encoder
    columns; with the means over layers."""
    import numpy as np

    from jaxsae.evals.ground_truth import recovery

    out = {"decoder": [], "encoder": []}
    for layer in range(feats.spec.layers):
        w = np.asarray(params[f"W_dec_{layer}"])
        truth = np.asarray(feats.out_dirs[layer])
        out["decoder"].append(recovery(w.reshape(w.shape[0], -1), truth.reshape(truth.shape[0], -1)))
        out["encoder"].append(recovery(np.asarray(params["W_enc"][layer]).T, np.asarray(feats.in_dirs_lnd[layer])))
    for part in ("decoder", "encoder"):
        keys = out[part][0].keys()
        out[f"{part}_mean"] = {k: float(np.mean([r[k] for r in out[part]])) for k in keys}
    return out


def crosscoder_recovery(params: dict, feats: LayeredFeatures) -> dict:
    """Recovery of the true per-layer directions (concatenated over layers) by the crosscoder's
    decoder, and whether the decoder-norm analysis classes every recovered exclusive feature into
    its own layer's class (two layers) and shared ones as shared."""
    import numpy as np

    from jaxsae.evals import crosscoder_diff
    from jaxsae.evals.ground_truth import max_cosines, recovery

    w = np.asarray(params["W_dec"])  # [F, L, d]
    truth = np.asarray(jnp.transpose(feats.in_dirs_lnd, (1, 0, 2)))  # [n, L, d]
    out = {"decoder": recovery(w.reshape(w.shape[0], -1), truth.reshape(truth.shape[0], -1))}
    owner = np.asarray(feats.owner_n)
    if feats.spec.layers == 2:
        cls = np.asarray(crosscoder_diff.classify(crosscoder_diff.relative_norm(w)))
        flat_w = w.reshape(w.shape[0], -1)
        unit = flat_w / np.maximum(np.linalg.norm(flat_w, axis=-1, keepdims=True), 1e-12)
        t = truth.reshape(truth.shape[0], -1)
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        best = np.argmax(t @ unit.T, axis=1)  # each true feature's best latent
        cos = max_cosines(flat_w, t)
        want = np.where(owner == 0, "a_only", np.where(owner == 1, "b_only", "shared"))
        ok = (cls[best] == want) & (cos > 0.9)
        out["exclusive_found"] = float(ok[owner >= 0].mean()) if (owner >= 0).any() else float("nan")
        out["shared_found"] = float(ok[owner < 0].mean()) if (owner < 0).any() else float("nan")
    return out
