"""Harvest: text -> token windows -> truncated LM forward (jitted, several sites at once, batch
sharded over the mesh) -> an activation store (jaxsae.data.store).

One store shard per site per batch of `batch_windows` windows, holding the activations of the text
positions (BOS/pad dropped) in window order. Everything is a function of the config, so a harvest
that was killed and started again recomputes from the first batch the manifest does not list and
ends with exactly the rows of an uninterrupted harvest.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import axes, runlock, sharding, sites
from jaxsae.atomic import remove_temporaries
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import store as store_lib
from jaxsae.data import text as text_lib
from jaxsae.data import tokens as tokens_lib

log = logging.getLogger("jaxsae")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_path(lm_cfg: LMConfig) -> str:
    if lm_cfg.path:
        return lm_cfg.path
    from jaxsae import packaged

    return packaged.smollm2_path()


def load_lm(lm_cfg: LMConfig, mesh=None):
    """(model, tokenizer) for the config (the packaged SmolLM2 when no path is given)."""
    from jaxsae import models

    path = model_path(lm_cfg)
    return models.load(path, dtype=DTYPES[lm_cfg.dtype], mesh=mesh), models.load_tokenizer(path)


def token_windows(text_cfg: TextConfig, tokenizer, context: int, seed: int):
    docs = text_lib.read_documents(text_cfg.kind, text_cfg.path or "", text_cfg.field, text_cfg.split)
    return tokens_lib.windows(docs, tokenizer, context, seed)


def identity(lm_cfg: LMConfig, text_cfg: TextConfig, seed: int, n_windows: int) -> dict:
    """What determines a store's contents; a resumed harvest must match it exactly."""
    return {"model": os.path.abspath(model_path(lm_cfg)), "site_names": list(lm_cfg.sites), "context": lm_cfg.context,
            "batch_windows": lm_cfg.batch_windows, "windows_total": n_windows, "dtype": lm_cfg.dtype, "seed": seed,
            "text": dataclasses.asdict(text_cfg)}


def _fresh_manifest(ident: dict) -> dict:
    return {"format": store_lib.FORMAT, **ident, "windows_done": 0, "tokens": 0, "complete": False,
            "sites": {}, "stats": {}}


def _finish_stats(manifest: dict) -> None:
    for site, st in manifest["stats"].items():
        n = max(st["count"], 1)
        mean_sq = st["sum_sq_norm"] / n
        manifest["sites"][site]["mean_sq_norm"] = mean_sq
        manifest["sites"][site]["norm_scale"] = float(np.sqrt(manifest["sites"][site]["d"] / max(mean_sq, 1e-30)))
        manifest["sites"][site]["mean"] = [s / n for s in st["sum"]]


def harvest(lm_cfg: LMConfig, text_cfg: TextConfig, out_dir: str, seed: int = 0, mesh=None,
            progress: bool = True) -> dict:
    """Write (or finish) the store at `out_dir`; returns its manifest. One host writes the store (its
    batch may still be sharded over all of that host's devices)."""
    if jax.process_count() > 1:
        raise ValueError("harvest writes one store from one host; run it as a single process (training from the "
                         "store is multi-host: every process reads its share)")
    with runlock.hold(out_dir, "harvest"):
        try:
            return _harvest(lm_cfg, text_cfg, out_dir, seed, mesh, progress)
        except KeyboardInterrupt:
            done = (store_lib.read_manifest(out_dir) or {}).get("windows_done", 0)
            raise KeyboardInterrupt(f"harvest interrupted after {done} windows (all written and listed in "
                                    f"{out_dir}/manifest.json); rerun the same command to resume from there") from None


def _harvest(lm_cfg: LMConfig, text_cfg: TextConfig, out_dir: str, seed: int, mesh, progress: bool) -> dict:
    lm, tok = load_lm(lm_cfg, mesh)
    ds = token_windows(text_cfg, tok, lm_cfg.context, seed)
    bw = lm_cfg.batch_windows
    available = len(ds) // bw * bw
    n_windows = min(lm_cfg.windows, available) if lm_cfg.windows else available
    if n_windows < bw:
        raise ValueError(f"the corpus gives {len(ds)} windows of {lm_cfg.context} tokens, fewer than one batch of "
                         f"{bw}; lower data.lm.batch_windows or data.lm.context")
    ident = identity(lm_cfg, text_cfg, seed, n_windows)
    os.makedirs(out_dir, exist_ok=True)
    manifest = store_lib.read_manifest(out_dir)
    if manifest is None:
        manifest = _fresh_manifest(ident)
    else:
        diff = {k: (manifest.get(k), v) for k, v in ident.items() if manifest.get(k) != v}
        if diff:
            raise store_lib.StoreError(f"{out_dir} holds a harvest with different settings {diff} (stored, asked); "
                                       "use a new directory or the original settings")
        if manifest["complete"]:
            log.info("store %s is already complete (%d tokens)", out_dir, manifest["tokens"])
            return manifest
        log.info("resuming harvest at window %d of %d", manifest["windows_done"], n_windows)

    remove_temporaries(out_dir)  # half-written files of a killed writer (never listed in the manifest)
    capture = sites.capture_fn(lm, lm_cfg.sites)
    specials = tokens_lib.special_ids(tok)
    tok_sh = sharding.named(mesh, (axes.BATCH, axes.SEQ)) if mesh is not None else None
    out_dtype = np.dtype(DTYPES[lm_cfg.dtype])
    bar = tqdm(total=n_windows, initial=manifest["windows_done"], desc="harvest", unit="win", disable=not progress,
               dynamic_ncols=True)
    for start in range(manifest["windows_done"], n_windows, bw):
        tokens_bt = tokens_lib.batch_array(ds, start, bw)
        placed = jax.device_put(tokens_bt, tok_sh) if tok_sh is not None else jnp.asarray(tokens_bt)
        acts = jax.device_get(capture(placed))
        keep = tokens_lib.content_mask(tokens_bt, specials)
        index = start // bw
        site_rows = {site: tokens_lib.text_rows(acts[site], keep).astype(out_dtype) for site in lm_cfg.sites}
        for site, rows in site_rows.items():  # every site checked before any shard of the batch is written
            if not np.isfinite(rows).all():
                raise store_lib.StoreError(
                    f"the model's activations at {site} hold nan/inf in windows {start}..{start + bw - 1}; nothing of "
                    f"this batch was written ({out_dir} keeps the {manifest['windows_done']} windows before it). "
                    "A bfloat16 model can overflow: harvest with --config.data.lm.dtype=float32")
        for site, rows in site_rows.items():
            entry = store_lib.write_shard(out_dir, site, index, rows)
            info = manifest["sites"].setdefault(site, {"d": rows.shape[1], "shards": []})
            info["shards"].append(entry)
            st = manifest["stats"].setdefault(site, {"count": 0, "sum_sq_norm": 0.0, "sum": [0.0] * rows.shape[1]})
            r64 = rows.astype(np.float64)
            st["count"] += rows.shape[0]
            st["sum_sq_norm"] += float((r64 * r64).sum())
            st["sum"] = (np.asarray(st["sum"]) + r64.sum(0)).tolist()
        manifest["windows_done"] = start + bw
        manifest["tokens"] += int(keep.sum())
        store_lib.write_manifest(out_dir, manifest)  # the shards above are durable before they are listed
        bar.update(bw)
        bar.set_postfix(tokens=manifest["tokens"])
    bar.close()
    manifest["complete"] = True
    _finish_stats(manifest)
    store_lib.write_manifest(out_dir, manifest)
    return manifest
