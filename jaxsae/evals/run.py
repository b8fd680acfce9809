"""Evaluate an exported dictionary end to end: load the LM and the SAELens-format export, build the
evaluation windows from the configured text, compute the core metrics, and write metrics.json,
PNG plots and report.html into one directory."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from jaxsae.config import DataConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import tokens as tokens_lib
from jaxsae.evals import core
from jaxsae.interop import saelens
from jaxsae.report import html as report

log = logging.getLogger("jaxsae")


def site_of(export_dir: str, data: DataConfig) -> str:
    with open(os.path.join(export_dir, "cfg.json")) as f:
        cfg = json.load(f)
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or data.site or data.lm.sites[0]


def evaluate_export(export_dir: str, data: DataConfig, out_dir: str, seed: int = 1, windows: int = 64,
                    downstream_windows: int = 16, n_latents: int = 12, progress: bool = True) -> dict:
    """metrics.json, density/L0 plots and report.html for the export at `export_dir`; returns the metrics.
    `seed` picks the evaluation windows (use a different one from the harvest's for held-out text)."""
    sae = saelens.load(export_dir)
    site = site_of(export_dir, data)
    lm, tok = harvest_lib.load_lm(data.lm)
    ds = harvest_lib.token_windows(data.text, tok, data.lm.context, seed)
    result = core.evaluate(lm, sae, site, ds, windows, data.lm.batch_windows, tokens_lib.special_ids(tok),
                           downstream_windows, progress=progress)
    metrics = {"site": site, "export": os.path.abspath(export_dir), "model": harvest_lib.model_path(data.lm),
               **result["metrics"]}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    paths = report.plots(result, out_dir)
    alive = np.nonzero(result["density"] > 0)[0]
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(alive, size=min(n_latents, len(alive)), replace=False).tolist()) if len(alive) else []
    contexts = report.context_rows(result, sample, tok, batch=data.lm.batch_windows)
    report.write_report(out_dir, f"{os.path.basename(os.path.abspath(export_dir))} at {site}", metrics, paths,
                        contexts, result["density"])
    log.info("wrote %s", os.path.join(out_dir, "report.html"))
    return metrics
