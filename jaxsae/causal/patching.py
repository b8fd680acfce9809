"""Activation patching over (site x position [x head]) grids as one compiled, batched computation,
and path patching.

  effects = causal.patch(lm, clean_bt, corrupt_bt, ["blocks.3.hook_resid_pre", ...],
                         causal.logit_diff(good, bad))      # {site: [seq]} normalised effects

Every cell of the grid is one intervention: the source run's value at one site and position
(and head, for per-head sites) replaces the base run's. Denoising (the default) takes the clean
value into the corrupted run; noising the corrupted value into the clean run. The result is
(m_patched - m_corrupt) / (m_clean - m_corrupt) with each m the batch mean of the metric, in both
directions: denoising a cell that restores the clean behaviour scores 1, noising a cell whose
loss destroys it scores 0.

How it runs: the cells are an axis vmapped through one rewritten model (a Blend splice at every
site, its mask one-hot at the cell's site, zero elsewhere), in chunks of `tokens_per_call`
tokens; cells are ordered by layer and every block before a chunk's first layer returns the
base run's cached output instead of being recomputed (an exact saving of about half the
layers over a full sweep). A cell whose source and base values are equal in every row changes
nothing and is not run. One program is compiled per call of `patch`, whatever the number of
sites and positions.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import sites as sites_mod
from jaxsae.causal import interventions as iv
from jaxsae.causal import metrics as mx


def check_tokens(clean_bt, corrupt_bt) -> tuple[jax.Array, jax.Array]:
    clean, corrupt = np.asarray(clean_bt), np.asarray(corrupt_bt)
    if clean.ndim != 2 or corrupt.ndim != 2:
        raise ValueError(f"clean and corrupt tokens must be [batch, seq] ids; got shapes {clean.shape} and "
                         f"{corrupt.shape}")
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean tokens {clean.shape} and corrupt tokens {corrupt.shape} differ in shape; patching "
                         "aligns positions, so build corrupted prompts of the same length (e.g. replace the "
                         "tokens that differ one for one)")
    if not np.issubdtype(clean.dtype, np.integer) or not np.issubdtype(corrupt.dtype, np.integer):
        raise ValueError("clean and corrupt tokens must be integer token ids")
    return jnp.asarray(clean, jnp.int32), jnp.asarray(corrupt, jnp.int32)


def n_blocks(lm) -> int:
    return len(sites_mod._blocks(lm.model if hasattr(lm, "model") else lm))


def _resid_sites(lm) -> list[str]:
    return [f"blocks.{i}.hook_resid_post" for i in range(n_blocks(lm))]


def cells_for(site: str, shape: tuple[int, ...], positions) -> tuple[np.ndarray, tuple[int, ...]]:
    """(masks [n_cells, *mask_shape], result shape) for one site whose value has `shape` (batch
    first). positions: None (each position), a list of positions, or "all" (all at once)."""
    layout = iv.value_shape_kind(sites_mod.parse(site)[1])
    seq = shape[2] if layout == "pattern" else shape[1]
    if positions is None:
        pos_list: list | None = list(range(seq))
    elif isinstance(positions, str):
        if positions != "all":
            raise ValueError(f"positions={positions!r}: pass None (each position), a list of positions, or 'all'")
        pos_list = None
    else:
        pos_list = [int(p) % seq if -seq <= int(p) < seq else _bad_pos(p, seq) for p in positions]
    if layout == "resid":
        mshape = (seq,)
        groups = [[(p,)] for p in pos_list] if pos_list is not None else [[(p,) for p in range(seq)]]
        out_shape = (len(pos_list),) if pos_list is not None else ()
    else:
        heads = shape[1] if layout == "pattern" else shape[2]
        mshape = (heads, seq) if layout == "pattern" else (seq, heads)
        order = (lambda p, h: (h, p)) if layout == "pattern" else (lambda p, h: (p, h))
        if pos_list is not None:
            groups = [[order(p, h)] for p, h in itertools.product(pos_list, range(heads))]
            out_shape = (len(pos_list), heads)
        else:
            groups = [[order(p, h) for p in range(seq)] for h in range(heads)]
            out_shape = (heads,)
    masks = np.zeros((len(groups), *mshape), np.float32)
    for c, idx in enumerate(groups):
        for i in idx:
            masks[(c, *i)] = 1.0
    return masks, out_shape


def _bad_pos(p, seq):
    raise ValueError(f"position {p} is outside the sequence (length {seq})")


def _metric_mean(metric, logits) -> float:
    return float(np.mean(np.asarray(metric(jnp.asarray(logits)))))


@functools.partial(jax.jit, static_argnames=("site_names", "layouts", "metric_def"))
def _grid_chunk(slots, values, tokens_bt, src, masks, cached_lbsd, start, metric_leaves, site_names, layouts,
                metric_def):
    metric = mx.join(metric_def, metric_leaves)

    def one(masks_c):
        model = iv.bind(slots, values)
        model = iv.rewrite(model, {s: (iv.Blend(lay), (src[s], masks_c[s])) for s, lay in zip(site_names, layouts)})
        model = iv.skipping_blocks(model, cached_lbsd, start)
        return metric(iv.call(model, tokens_bt)).mean()

    return jax.vmap(one)(masks)


def patch(lm, clean_tokens, corrupt_tokens, sites, metric, *, positions=None, direction: str = "denoise",
          tokens_per_call: int = 2048, skip_unchanged: bool = True) -> dict[str, np.ndarray]:
    """Activation patching: {site: normalised effect per position} ([seq], or [seq, heads] for
    per-head sites; with positions="all" one value, or [heads]), averaged over the batch.

    lm: a jaxsae LanguageModel; clean/corrupt_tokens: [batch, seq] ids of equal shape; sites:
    hook-site names; metric: logits [batch, seq, vocab] -> [batch] (e.g. `logit_diff`);
    positions: None (each position), a list, or "all"; direction: "denoise" (clean into
    corrupt) or "noise" (corrupt into clean)."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction={direction!r}: use 'denoise' (clean values into the corrupted run) or 'noise'")
    sites = list(sites)
    if not sites:
        raise ValueError("patch needs at least one site")
    for s in sites:
        sites_mod.parse(s)
    clean, corrupt = check_tokens(clean_tokens, corrupt_tokens)
    base, source = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    resid = _resid_sites(lm)
    logits_base, cache_base = sites_mod.run_with_cache(lm, base, list(dict.fromkeys(sites + resid)))
    logits_src, cache_src = sites_mod.run_with_cache(lm, source, sites)
    m_base, m_src = _metric_mean(metric, logits_base), _metric_mean(metric, logits_src)
    m_clean, m_corrupt = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
    if m_clean == m_corrupt:
        raise ValueError(f"the metric is {m_clean:.6g} on both the clean and the corrupted run, so no effect can be "
                         "normalised; choose inputs or a metric that tell them apart")
    cached = jnp.stack([cache_base[r] for r in resid])
    per_site = {s: cells_for(s, cache_base[s].shape, positions) for s in sites}
    results = {s: np.full(len(per_site[s][0]), m_base, np.float64) for s in sites}
    cells = []  # (site, cell index)
    for s in sites:
        masks = per_site[s][0]
        differs = _differs(cache_src[s], cache_base[s], masks, iv.value_shape_kind(sites_mod.parse(s)[1]))
        cells.extend((s, c) for c in range(len(masks)) if differs[c] or not skip_unchanged)
    values = run_cells(lm, base, {s: cache_src[s] for s in sites}, [(s, per_site[s][0][c]) for s, c in cells],
                       metric, cached, tokens_per_call)
    for (s, c), v in zip(cells, values):
        results[s][c] = v
    return {s: mx.normalized_effect(results[s], m_clean, m_corrupt).reshape(per_site[s][1]) for s in sites}


def run_cells(lm, base_bt, src: dict, cells: list[tuple[str, np.ndarray]], metric, cached_lbsd=None,
              tokens_per_call: int = 2048) -> np.ndarray:
    """[n_cells] batch-mean metric of the base run with, per cell, src[site] blended in where the
    cell's mask is 1 (a mask [seq], [seq, heads] or [heads, q] as `cells_for` builds). Every site
    in `src` carries a Blend in one compiled program; cells run vmapped in chunks ordered by layer,
    the blocks before a chunk's first layer replaced by `cached_lbsd` (the base run's
    hook_resid_post of every block; computed here when None)."""
    base = jnp.asarray(base_bt, jnp.int32)
    site_names = tuple(src)
    if cached_lbsd is None:
        resid = _resid_sites(lm)
        _, cache = sites_mod.run_with_cache(lm, base, resid)
        cached_lbsd = jnp.stack([cache[r] for r in resid])
    order = sorted(range(len(cells)), key=lambda j: sites_mod.parse(cells[j][0])[0])
    layouts = tuple(iv.value_shape_kind(sites_mod.parse(s)[1]) for s in site_names)
    mask_shape = {s: cells_for(s, src[s].shape, "all")[0].shape[1:] for s in site_names}
    chunk = max(1, min(len(cells) or 1, tokens_per_call // int(np.prod(base.shape))))
    slots, values = iv.freeze(lm)
    mdef, mleaves = mx.split(metric)
    out = np.zeros(len(cells), np.float64)
    for at in range(0, len(order), chunk):
        part = order[at : at + chunk]
        masks = {s: np.zeros((chunk, *mask_shape[s]), np.float32) for s in site_names}
        for j, c in enumerate(part):
            masks[cells[c][0]][j] = cells[c][1]
        start = jnp.int32(sites_mod.parse(cells[part[0]][0])[0])
        got = np.asarray(_grid_chunk(slots, values, base, src, {s: jnp.asarray(m) for s, m in masks.items()},
                                     cached_lbsd, start, mleaves, site_names, layouts, mdef))
        out[part] = got[: len(part)]
    return out


def _differs(src, base, masks, layout) -> np.ndarray:
    """[n_cells] whether any value a cell replaces differs between the runs (in any row)."""
    src, base = np.asarray(src), np.asarray(base)
    diff = (src != base).any(axis=0)  # [seq, d] / [seq, heads, d] / [heads, q, k]
    diff = diff.any(axis=-1)  # [seq] / [seq, heads] / [heads, q]
    return (masks.reshape(len(masks), -1) * diff.reshape(1, -1)).any(axis=1)


# --- path patching --------------------------------------------------------------------------


def path_patch(lm, clean_tokens, corrupt_tokens, sender: tuple[int, int], receivers: list[tuple[str, int | None]],
               metric, *, direction: str = "denoise") -> float:
    """Path patching (Wang et al. 2022): the normalised effect of head `sender` = (layer, head)
    acting on the metric *only through* the `receivers`, [(site, head or None)] with sites such
    as blocks.L.attn.hook_k / hook_q / hook_v (per key-value or query head) or a residual site.

    Pass 1 runs the base input with the sender's hook_z taken from the source run and every other
    head's hook_z, at every layer, fixed to its base value (MLPs and norms recompute), and records
    the receivers. Pass 2 runs the base input with only the receivers (their heads) set to the
    recorded values."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction={direction!r}: use 'denoise' or 'noise'")
    clean, corrupt = check_tokens(clean_tokens, corrupt_tokens)
    base, source = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    layer, head = sender
    L = n_blocks(lm)
    z_sites = [f"blocks.{i}.attn.hook_z" for i in range(L)]
    recv_sites = [r for r, _ in receivers]
    for r in recv_sites:
        if sites_mod.parse(r)[0] <= layer and sites_mod.parse(r)[1] != "hook_resid_post":
            raise ValueError(f"receiver {r} is not downstream of the sender's layer {layer}")
    logits_base, cache_base = sites_mod.run_with_cache(lm, base, z_sites)
    logits_src, cache_src = sites_mod.run_with_cache(lm, source, [z_sites[layer]])
    m_base, m_src = _metric_mean(metric, logits_base), _metric_mean(metric, logits_src)
    m_clean, m_corrupt = (m_src, m_base) if direction == "denoise" else (m_base, m_src)

    # pass 1: every head frozen at its base output except the sender, which takes the source's
    frozen = lm
    for i, s in enumerate(z_sites):
        z = np.array(cache_base[s])
        if i == layer:
            z[:, :, head] = np.asarray(cache_src[s])[:, :, head]
        ones = np.ones(z.shape[1:3], np.float32)
        frozen = sites_mod.splice(frozen, s, iv.Blend("heads"), (jnp.asarray(z), jnp.asarray(ones)))
    _, recorded = sites_mod.run_with_cache(frozen, base, recv_sites)

    # pass 2: only the receivers change
    patched = lm
    for r, h in receivers:
        value = recorded[r]
        layout = iv.value_shape_kind(sites_mod.parse(r)[1])
        if layout == "resid":
            mask = np.ones(value.shape[1:2], np.float32)
        elif layout == "heads":
            mask = np.zeros(value.shape[1:3], np.float32)
            if h is None:
                mask[:] = 1
            else:
                mask[:, h] = 1
        else:
            raise ValueError(f"receiver {r}: patterns are not receivers; use hook_q / hook_k / hook_v")
        patched = sites_mod.splice(patched, r, iv.Blend(layout), (value, jnp.asarray(mask)))
    m_patched = _metric_mean(metric, patched(base))
    return float(mx.normalized_effect(m_patched, m_clean, m_corrupt))
