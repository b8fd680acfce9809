"""Attribution patching (AtP) and integrated gradients: first-order estimates of `patch`'s grid,
for every site, position, head and dictionary latent at once.

  est = causal.attribution_patch(lm, clean_bt, corrupt_bt, sites, causal.logit_diff(g, b))
  est = causal.attribution_patch(..., method="ig", steps=10, saes={site: sae})

AtP (Nanda 2023; Syed et al. 2310.10348): with an additive delta at every site of the base run
(the corrupted one when denoising), one backward pass gives grad_a m at all of them, and the
estimate of patching node a is (a_source - a_base) . grad_a m, summed over the node's features.
Integrated gradients (Marks et al. 2403.19647, as their feature-circuits code does it): for one
site at a time, the site's value is moved to a_base + alpha (a_source - a_base) for alpha =
k/steps, k = 0..steps-1 (vmapped), and the gradients there are averaged before the dot product.
Both are normalised like `patch`: by m_clean - m_corrupt, plus 1 when noising.

With `saes={site: sae}` the site's value is rebuilt as decode(f + delta_f) + error + delta_err,
the error node not stop-gradiented; the result then also holds `"{site}/latents"` [seq, d_sae]
and `"{site}/error"` [seq] (IG interpolates latents and error, as Marks et al.).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import sites as sites_mod
from jaxsae.causal import interventions as iv
from jaxsae.causal import metrics as mx
from jaxsae.causal import patching


def _reduce(delta_grad, layout: str, positions):
    """[batch, ...] products -> per position ([seq] or [seq, heads]), batch-averaged, over `positions`."""
    x = delta_grad.sum(-1)  # [b, seq] / [b, seq, heads] / [b, heads, q]
    if layout == "pattern":
        x = jnp.swapaxes(x, 1, 2)  # [b, q, heads]
    x = np.asarray(x.mean(0), np.float64)
    if positions is None:
        return x
    if isinstance(positions, str):
        return x.sum(0)
    return x[np.asarray(list(positions))]


@functools.partial(jax.jit, static_argnames=("site_names", "sae_sites", "metric_def"))
def _atp_grads(slots, values, tokens_bt, deltas, saes, metric_leaves, site_names, sae_sites, metric_def):
    metric = mx.join(metric_def, metric_leaves)

    def m(deltas):
        splices = {}
        for s in site_names:
            if s in sae_sites:
                splices[s] = (iv.SaeNodes(), (saes[s], deltas[s], deltas[s + "/latents"], deltas[s + "/error"]))
            else:
                splices[s] = (iv.Add(), deltas[s])
        return metric(iv.call(iv.rewrite(iv.bind(slots, values), splices), tokens_bt)).sum()

    return jax.grad(m)(deltas)


@functools.partial(jax.jit, static_argnames=("site_names", "sae_sites", "metric_def"))
def _ig_grads(slots, values, tokens_bt, src, alphas_s, deltas, saes, cached, start, metric_leaves, site_names,
              sae_sites, metric_def):
    """Mean over alpha of the gradient at every delta, the site with alpha_s[site] != 0 rows
    interpolated (alphas_s: {site: [steps]}, zero for every other site)."""
    metric = mx.join(metric_def, metric_leaves)

    def m(deltas, alpha):
        splices = {}
        for s in site_names:
            if s in sae_sites:
                f_src, err_src = src[s + "/latents"], src[s + "/error"]
                splices[s] = (iv.SaeInterp(), (saes[s], f_src, err_src, alpha[s], deltas[s + "/latents"],
                                               deltas[s + "/error"]))
            else:
                x_src = src[s]
                ones = jnp.ones(x_src.shape[1:-1], jnp.float32)
                layout = iv.value_shape_kind(sites_mod.parse(s)[1])
                splices[s] = (_AddThenBlend(layout), (deltas[s], x_src, alpha[s] * ones))
        model = iv.skipping_blocks(iv.rewrite(iv.bind(slots, values), splices), cached, start)
        return metric(iv.call(model, tokens_bt)).sum()

    grads = jax.vmap(lambda a: jax.grad(m)(deltas, a))(alphas_s)
    return jax.tree.map(lambda g: g.mean(0), grads)


class _AddThenBlend(iv.Blend):
    """x -> blend(x, src, alpha) + delta (delta after the interpolation, so its gradient is the
    metric's gradient at the interpolated value)."""

    def __call__(self, x, payload):
        delta, src, m = payload
        return super().__call__(x, (src, m)) + delta.astype(x.dtype)


def _sae_nodes(sae, x):
    f = sae.encode(x)
    return f, x - sae.decode(f)


class Parts(NamedTuple):
    """What an attribution pass computed: the base run's tokens, node values in both runs and the
    metric's gradients ({node: [batch, ...]}, nodes being sites, "{site}/latents" and
    "{site}/error"), and the metric on the clean and corrupted runs."""

    base: jax.Array
    values_base: dict
    values_source: dict
    grads: dict
    m_clean: float
    m_corrupt: float
    direction: str


def gradients(lm, clean_tokens, corrupt_tokens, sites, metric, *, method: str = "atp", steps: int = 10,
              direction: str = "denoise", saes: dict | None = None) -> Parts:
    """The gradients behind `attribution_patch` (AtP: at the base run; IG: averaged along the path)."""
    if method not in ("atp", "ig"):
        raise ValueError(f"method={method!r}: use 'atp' (attribution patching) or 'ig' (integrated gradients)")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction={direction!r}: use 'denoise' or 'noise'")
    if method == "ig" and steps < 1:
        raise ValueError(f"steps={steps}: integrated gradients needs at least one step")
    sites = list(sites)
    saes = dict(saes or {})
    unknown = sorted(set(saes) - set(sites))
    if unknown:
        raise ValueError(f"saes given for {unknown}, which are not among the sites {sites}")
    for s in sites:
        sites_mod.parse(s)
    for s, sae in saes.items():
        if sae.spec.is_transcoder:
            raise ValueError(f"{s}: the dictionary is a transcoder; latent attribution needs an SAE that rebuilds "
                             "its own site")
    clean, corrupt = patching.check_tokens(clean_tokens, corrupt_tokens)
    base, source = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    resid = patching._resid_sites(lm)
    logits_b, cache_b = sites_mod.run_with_cache(lm, base, list(dict.fromkeys(sites + resid)))
    logits_s, cache_s = sites_mod.run_with_cache(lm, source, sites)
    m_base = patching._metric_mean(metric, logits_b)
    m_src = patching._metric_mean(metric, logits_s)
    m_clean, m_corrupt = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
    if m_clean == m_corrupt:
        raise ValueError("the metric is equal on the clean and the corrupted run, so no effect can be normalised")

    values_b, values_s = {}, {}
    for s in sites:
        values_b[s], values_s[s] = cache_b[s], cache_s[s]
        if s in saes:
            values_b[s + "/latents"], values_b[s + "/error"] = _sae_nodes(saes[s], cache_b[s])
            values_s[s + "/latents"], values_s[s + "/error"] = _sae_nodes(saes[s], cache_s[s])
    deltas = {k: jnp.zeros_like(v) for k, v in values_b.items()}
    slots, vals = iv.freeze(lm)
    mdef, mleaves = mx.split(metric)
    sae_sites = tuple(s for s in sites if s in saes)
    if method == "atp":
        grads = _atp_grads(slots, vals, base, deltas, saes, mleaves, tuple(sites), sae_sites, mdef)
    else:
        cached = jnp.stack([cache_b[r] for r in resid])
        alphas = jnp.arange(steps, dtype=jnp.float32) / steps
        grads = {}
        for s in sorted(sites, key=lambda s: sites_mod.parse(s)[0]):
            a = {t: (alphas if t == s else jnp.zeros_like(alphas)) for t in sites}
            g = _ig_grads(slots, vals, base, values_s, a, deltas, saes, cached, jnp.int32(sites_mod.parse(s)[0]),
                          mleaves, tuple(sites), sae_sites, mdef)
            for k in ([s] if s not in saes else [s, s + "/latents", s + "/error"]):
                grads[k] = g[k]
    if method == "ig":  # an SAE site's own estimate: its latents' and error's (the site is rebuilt from them)
        for s in sae_sites:
            grads.pop(s)
    return Parts(base, values_b, values_s, grads, m_clean, m_corrupt, direction)


def attribution_patch(lm, clean_tokens, corrupt_tokens, sites, metric, *, method: str = "atp", steps: int = 10,
                      direction: str = "denoise", saes: dict | None = None, positions=None) -> dict[str, np.ndarray]:
    """AtP or IG estimates of `patch(...)` for every site (same keys and shapes; per-head sites
    [seq, heads]); with `saes`, "{site}/latents" [seq, d_sae] and "{site}/error" [seq] as well.
    positions: None (each), a list, or "all" (summed over positions, the estimate of patching
    them all at once)."""
    parts = gradients(lm, clean_tokens, corrupt_tokens, sites, metric, method=method, steps=steps,
                      direction=direction, saes=saes)
    values_b, values_s, grads = parts.values_base, parts.values_source, parts.grads
    denom = parts.m_clean - parts.m_corrupt
    offset = 0.0 if direction == "denoise" else 1.0
    sae_sites = tuple(s for s in sites if s in (saes or {}))
    out = {}
    for k, g in grads.items():
        delta = values_s[k] - values_b[k]
        site = k.split("/")[0]
        if k.endswith("/latents"):
            est = np.asarray((delta * g).mean(0), np.float64)  # [seq, d_sae]
            est = est if positions is None else (est.sum(0) if isinstance(positions, str) else est[list(positions)])
        else:
            layout = iv.value_shape_kind(sites_mod.parse(site)[1])
            est = _reduce(delta * g, layout, positions)
        out[k] = est / denom + offset
    for s in sae_sites:
        if s not in out:
            lat = out[s + "/latents"] - offset
            out[s] = lat.sum(-1) + out[s + "/error"]
    return {k: out[k] for k in values_b}
