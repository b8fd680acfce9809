"""Evaluate an exported dictionary end to end: load the LM (once) and the SAELens-format export, run
the requested evaluations (core: metrics.json, PNG plots, report.html and evals/core.json; the
others: evals/{eval_type_id}.json) into one output directory, one writer at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from jaxsae import runlock
from jaxsae.atomic import atomic_write_text
from jaxsae.config import DataConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import store as store_lib
from jaxsae.data import tokens as tokens_lib
from jaxsae.evals import (
    absorption,
    autointerp,
    core,
    core_saebench,
    judges,
    meta_structure,
    pooled,
    ravel,
    results,
    scr_tpp,
    sparse_probing,
    unlearning,
)
from jaxsae.evals.absorption import AbsorptionConfig
from jaxsae.evals.autointerp import AutointerpConfig
from jaxsae.evals.ravel import RavelConfig
from jaxsae.evals.scr_tpp import ScrTppConfig
from jaxsae.evals.sparse_probing import SparseProbingConfig
from jaxsae.evals.unlearning import UnlearningConfig
from jaxsae.interop import saelens
from jaxsae.report import dashboard
from jaxsae.report import html as report

log = logging.getLogger("jaxsae")
PROGRESS = ".eval_progress.pkl"
PROGRESS_FORMAT = 2  # bump when the saved evaluation state changes shape


def site_of(export_dir: str, data: DataConfig) -> str:
    with open(os.path.join(export_dir, "cfg.json")) as f:
        cfg = json.load(f)
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or data.site or data.lm.sites[0]


EVALS = ("core", "sparse_probing", "scr", "tpp", "absorption", "ravel", "unlearning", "meta_structure", "autointerp",
         "dashboard")  # the evaluations `evaluate` runs
PROBING = ("sparse_probing", "scr", "tpp")  # read mean-pooled activations of labelled text: one forward serves all


def check_evals(names) -> tuple[str, ...]:
    names = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in names if n not in EVALS]
    if bad or not names:
        raise ValueError(f"unknown evaluation(s) {bad or names}; valid: {', '.join(EVALS)}")
    return names


def _sae_cfg(export_dir: str) -> dict:
    """The export's cfg.json (saelens.load has already validated it)."""
    with open(os.path.join(export_dir, saelens.CFG)) as f:
        return json.load(f)


class _LazyLM:
    """Loads the model and tokenizer on first use, once for every evaluation of a call."""

    def __init__(self, lm_cfg):
        self.lm_cfg, self.value = lm_cfg, None

    def __call__(self):
        if self.value is None:
            self.value = harvest_lib.load_lm(self.lm_cfg)
        return self.value


def evaluate(export_dir: str, data: DataConfig, out_dir: str, evals=("core",), seed: int = 1, windows: int = 64,
             downstream_windows: int = 16, n_latents: int = 12, probing: SparseProbingConfig | None = None,
             interp: AutointerpConfig | None = None, judge=None, model=None, progress: bool = True,
             scr_tpp_config: ScrTppConfig | None = None, absorption_config: AbsorptionConfig | None = None,
             dashboard_latents=None, ravel_config: RavelConfig | None = None,
             unlearning_config: UnlearningConfig | None = None) -> dict:
    """Run the named evaluations of the export at `export_dir` into `out_dir` (one writer; the model
    loaded once): core -> metrics.json, plots, report.html and evals/core.json; sparse_probing, scr,
    tpp -> evals/{sparse_probing,scr,tpp}.json (one forward per distinct prompt serves the three:
    jaxsae.evals.pooled; `probing` and `scr_tpp_config` set them); absorption ->
    evals/absorption_first_letter.json (activations cached in OUT/absorption_cache/: resumes); ravel ->
    evals/ravel.json (`ravel_config`); unlearning -> evals/unlearning.json (a topic-forgetting proxy:
    `unlearning_config.forget_topic`, one news section, against the others); meta_structure ->
    evals/meta_structure_decoder_variance.json (its training run in OUT/meta_structure/); autointerp ->
    evals/autointerp.json, judged by `judge` (default: the evaluated model itself, a smoke test).
    Each is skipped when its outputs already hold the same evaluation (meta_structure resumes its
    training run).
    `model`: an already loaded (lm, tokenizer) for data.lm, else it is loaded on first use.
    Returns {eval name: its metrics}."""
    evals = check_evals(evals)
    lm = (lambda: model) if model is not None else _LazyLM(data.lm)
    out, shared = {}, {}  # shared: the core pass's activations, reused by the dashboard
    with runlock.hold(out_dir, "evaluation"):
        if "core" in evals:
            try:
                out["core"] = _evaluate(export_dir, data, out_dir, seed, windows, downstream_windows, n_latents,
                                        progress, lm, shared if "dashboard" in evals else None)
            except KeyboardInterrupt:
                saved = os.path.join(out_dir, PROGRESS)
                where = f"its progress is saved in {saved}" if os.path.isfile(saved) else "no batch had finished"
                raise KeyboardInterrupt(f"evaluation interrupted; {where}: rerun the same command to resume") from None
        pools: dict[int, pooled.Pooler] = {}  # by context: the probing evals share pooled activations
        configs = {"sparse_probing": probing or SparseProbingConfig(), "scr": scr_tpp_config or ScrTppConfig(),
                   "tpp": scr_tpp_config or ScrTppConfig()}
        for name in (n for n in PROBING if n in evals):
            out[name] = _probing(name, export_dir, data, out_dir, configs[name], progress, lm, pools)
        if "absorption" in evals:
            out["absorption"] = _absorption(export_dir, data, out_dir, absorption_config or AbsorptionConfig(),
                                            progress, lm)
        if "ravel" in evals:
            out["ravel"] = _ravel(export_dir, data, out_dir, ravel_config or RavelConfig(), progress, lm)
        if "unlearning" in evals:
            out["unlearning"] = _unlearning(export_dir, data, out_dir, unlearning_config or UnlearningConfig(),
                                            progress, lm)
        if "meta_structure" in evals:  # weights only: no model needed
            result = meta_structure.run(saelens.load(export_dir), out_dir, sae_cfg=_sae_cfg(export_dir),
                                        progress=progress)
            results.write(out_dir, result)
            out["meta_structure"] = result["eval_result_metrics"]
        if "autointerp" in evals:
            out["autointerp"] = _autointerp(export_dir, data, out_dir, interp or AutointerpConfig(), judge, seed,
                                            progress, lm)
        if "dashboard" in evals:  # last: it shows the autointerp explanations when there are some
            out["dashboard"] = _dashboard(export_dir, data, out_dir, seed, windows, n_latents, dashboard_latents,
                                          progress, lm, shared)
    return out


def _autointerp(export_dir, data, out_dir, cfg: AutointerpConfig, judge, seed: int, progress: bool, lm) -> dict:
    model_lm, tok = lm()
    if judge is None:  # the evaluated model judges itself: a smoke test, see jaxsae.evals.judges
        judge = judges.PenzaiLMJudge(model_lm, tok)
    sae_cfg = _sae_cfg(export_dir)
    ds = harvest_lib.token_windows(data.text, tok, cfg.context, seed)
    result = autointerp.run(model_lm, saelens.load(export_dir), site_of(export_dir, data), tok, ds, judge, cfg,
                            sae_cfg=sae_cfg, progress=progress)
    results.write(out_dir, result)
    return result["eval_result_metrics"]


def evaluate_export(export_dir: str, data: DataConfig, out_dir: str, seed: int = 1, windows: int = 64,
                    downstream_windows: int = 16, n_latents: int = 12, progress: bool = True) -> dict:
    """The core evaluation alone (see `evaluate`); returns its metrics. `seed` picks the evaluation
    windows (use a different one from the harvest's for held-out text)."""
    return evaluate(export_dir, data, out_dir, ("core",), seed, windows, downstream_windows, n_latents,
                    progress=progress)["core"]


def _eval_identity(export_dir, data, cfg) -> dict:
    model = os.path.abspath(harvest_lib.model_path(data.lm))
    st = os.stat(model)
    return {"format": PROGRESS_FORMAT, "site": site_of(export_dir, data), "model": model, "dtype": data.lm.dtype,
            "model_size_mtime": [st.st_size, st.st_mtime_ns],
            "export_sha256": {f: store_lib.sha256(os.path.join(export_dir, f)) for f in (saelens.CFG, saelens.WEIGHTS)},
            "config": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def _already(out_dir: str, eval_type_id: str, ident: dict) -> dict | None:
    """The metrics of OUT/evals/{eval_type_id}.json when it holds this very evaluation, else None."""
    path = os.path.join(out_dir, "evals", f"{eval_type_id}.json")
    if not os.path.isfile(path):
        return None
    try:
        old = results.read(path)
    except results.ResultError:
        return None
    if old["eval_config"].get("identity") != ident:
        return None
    log.info("%s already holds this evaluation: nothing to do", path)
    return old["eval_result_metrics"]


def _once(eval_type_id: str, export_dir, data, out_dir, cfg, lm, compute) -> dict:
    """Run `compute(model, tokenizer, sae, identity) -> result` and write OUT/evals/{eval_type_id}.json,
    unless that file already holds this very evaluation; returns its metrics."""
    ident = _eval_identity(export_dir, data, cfg)
    done = _already(out_dir, eval_type_id, ident)
    if done is not None:
        return done
    model_lm, tok = lm()
    result = compute(model_lm, tok, saelens.load(export_dir), ident)
    result["eval_config"]["identity"] = ident
    results.write(out_dir, result)
    return result["eval_result_metrics"]


def _common(ident: dict, export_dir: str) -> dict:
    return {"sae_cfg": _sae_cfg(export_dir), "model_name": os.path.basename(ident["model"])}


def _absorption(export_dir, data, out_dir, cfg: AbsorptionConfig, progress: bool, lm) -> dict:
    def compute(model_lm, tok, sae, ident):
        st = os.stat(ident["model"])
        key = hashlib.sha256(json.dumps([ident["model"], st.st_size, st.st_mtime_ns, ident["dtype"]]).encode())
        cache = os.path.join(out_dir, "absorption_cache", key.hexdigest()[:16])  # a killed run resumes from it
        return absorption.run(model_lm, sae, ident["site"], tok, cfg, llm_dtype=data.lm.dtype, cache_dir=cache,
                              progress=progress, **_common(ident, export_dir))

    return _once("absorption_first_letter", export_dir, data, out_dir, cfg, lm, compute)


def _ravel(export_dir, data, out_dir, cfg: RavelConfig, progress: bool, lm) -> dict:
    def compute(model_lm, tok, sae, ident):
        return ravel.run(model_lm, sae, ident["site"], tok, cfg, llm_dtype=data.lm.dtype, progress=progress,
                         **_common(ident, export_dir))

    return _once("ravel", export_dir, data, out_dir, cfg, lm, compute)


def _unlearning(export_dir, data, out_dir, cfg: UnlearningConfig, progress: bool, lm) -> dict:
    def compute(model_lm, tok, sae, ident):
        name, forget, retain = unlearning.topic_proxy(cfg.forget_topic, n=cfg.texts_per_side)
        return unlearning.run(model_lm, sae, ident["site"], tok, forget, retain, cfg, data_name=name,
                              progress=progress, **_common(ident, export_dir))

    return _once("unlearning", export_dir, data, out_dir, cfg, lm, compute)


def _probing(name: str, export_dir, data, out_dir, cfg, progress: bool, lm, pools: dict) -> dict:
    """One probing evaluation (sparse_probing, scr or tpp) into OUT/evals/, skipped when the file
    there already holds it (same export, model, site and config); `pools` shares pooled activations."""
    def compute(model_lm, tok, sae, ident):
        if cfg.context not in pools:
            pools[cfg.context] = pooled.Pooler(model_lm, sae, ident["site"], tok, cfg.context, cfg.batch_prompts,
                                               progress)
        run_fn = {"sparse_probing": sparse_probing.run_suite, "scr": scr_tpp.scr, "tpp": scr_tpp.tpp}[name]
        return run_fn(model_lm, pools[cfg.context].sae, ident["site"], tok, cfg, llm_dtype=data.lm.dtype,
                      progress=progress, pooler=pools[cfg.context], **_common(ident, export_dir))

    return _once(name, export_dir, data, out_dir, cfg, lm, compute)


def _identity(export_dir: str, data: DataConfig, site: str, seed: int, windows: int, downstream_windows: int,
              n_latents: int) -> dict:
    """What an evaluation's results depend on (the export by content, not by name)."""
    model = os.path.abspath(harvest_lib.model_path(data.lm))
    st = os.stat(model)
    return {"format": PROGRESS_FORMAT,
            "export_sha256": {f: store_lib.sha256(os.path.join(export_dir, f)) for f in (saelens.CFG, saelens.WEIGHTS)},
            "site": site, "model": model, "model_size_mtime": [st.st_size, st.st_mtime_ns], "dtype": data.lm.dtype,
            "text": dataclasses.asdict(data.text),
            "context": data.lm.context, "batch_windows": data.lm.batch_windows, "seed": seed, "windows": windows,
            "downstream_windows": downstream_windows, "latents": n_latents}


def _dashboard(export_dir, data, out_dir, seed: int, windows: int, n_latents: int, on_demand, progress: bool, lm,
               shared: dict) -> dict:
    sae = saelens.load(export_dir)
    site = site_of(export_dir, data)
    ident = {**_identity(export_dir, data, site, seed, windows, 0, n_latents),
             "on_demand": sorted(int(i) for i in on_demand or ()),
             "explanations": store_lib.sha256(p) if os.path.isfile(p := os.path.join(out_dir, "evals", "autointerp.json"))
             else None}
    path = os.path.join(out_dir, "dashboard.html")
    if os.path.isfile(path) and dashboard.identity_of(path) == ident:
        log.info("%s already holds this dashboard: nothing to do", path)
        return {"path": path, "latents": dashboard.latents_of(path)}
    model_lm, tok = lm()
    if shared.get("activations") is not None:
        tokens, acts, rows = shared["tokens"], shared["activations"], shared["rows"]
    else:
        ds = harvest_lib.token_windows(data.text, tok, data.lm.context, seed)
        n = min(windows, len(ds)) // data.lm.batch_windows * data.lm.batch_windows  # the windows core scans
        tokens = tokens_lib.batch_array(ds, 0, n or min(windows, len(ds)))
        acts, rows = dashboard.activations(model_lm, site, tokens, tokens_lib.special_ids(tok), data.lm.batch_windows,
                                           progress)
    fired = np.zeros(sae.d_sae, np.int64)
    for s0 in range(0, len(acts), 4096):
        fired += np.asarray(sae.encode(acts[s0 : s0 + 4096]) > 0).sum(0)
    alive = np.nonzero(fired)[0]
    explanations = {i: e for i, e in dashboard.explanations_from(out_dir).items() if 0 <= i < sae.d_sae}
    explained = [i for i in sorted(explanations) if fired[i]][:n_latents]  # latents with an explanation first
    rest = np.setdiff1d(alive, explained)
    rng = np.random.default_rng(seed)
    fill = rng.choice(rest, size=min(n_latents - len(explained), len(rest)), replace=False).tolist() if len(rest) else []
    sample = sorted(explained + [int(i) for i in fill])
    title = f"{os.path.basename(os.path.abspath(export_dir))} at {site}"
    meta = {"site": site, "model": os.path.basename(harvest_lib.model_path(data.lm)), "tokens_scanned": len(acts),
            "latents_alive": f"{len(alive)} of {sae.d_sae}", "identity": ident}
    for latent in ident["on_demand"]:
        rec = dashboard.latent_data(sae, acts, rows, tokens, tok, [latent], lm=model_lm, site=site,
                                    explanations=explanations)
        dashboard.write(os.path.join(out_dir, "dashboard", f"latent_{latent}.html"), f"{title}: latent {latent}", rec,
                        {k: v for k, v in meta.items() if k != "identity"})
    records = dashboard.latent_data(sae, acts, rows, tokens, tok, sample, lm=model_lm, site=site,
                                    explanations=explanations)
    dashboard.write(path, title, records, meta)  # last: its identity means the rest is there
    log.info("wrote %s (%d latents)", path, len(records))
    return {"path": path, "latents": sample}


def _evaluate(export_dir, data, out_dir, seed, windows, downstream_windows, n_latents, progress, lm,
              shared: dict | None = None) -> dict:
    sae = saelens.load(export_dir)
    site = site_of(export_dir, data)
    ident = _identity(export_dir, data, site, seed, windows, downstream_windows, n_latents)
    metrics_path = os.path.join(out_dir, "metrics.json")
    outputs = (metrics_path, os.path.join(out_dir, "report.html"), os.path.join(out_dir, "evals", "core.json"))
    if all(os.path.isfile(p) for p in outputs):
        with open(metrics_path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError:
                old = {}
        if isinstance(old, dict) and old.get("identity") == ident:
            log.info("%s already holds this evaluation (same export, model, text and settings): nothing to do",
                     out_dir)
            return old
    lm, tok = lm()
    ds = harvest_lib.token_windows(data.text, tok, data.lm.context, seed)
    result = core.evaluate(lm, sae, site, ds, windows, data.lm.batch_windows, tokens_lib.special_ids(tok),
                           downstream_windows, progress=progress, progress_path=os.path.join(out_dir, PROGRESS),
                           identity=ident, keep_activations=shared is not None)
    if shared is not None:
        shared.update(tokens=result["tokens"], activations=result["activations"], rows=result["rows"])
    metrics = {"site": site, "export": os.path.abspath(export_dir), "model": harvest_lib.model_path(data.lm),
               **result["metrics"], "identity": ident}
    paths = report.plots(result, out_dir)
    alive = np.nonzero(result["density"] > 0)[0]
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(alive, size=min(n_latents, len(alive)), replace=False).tolist()) if len(alive) else []
    contexts = report.context_rows(result, sample, tok, batch=data.lm.batch_windows)
    sae_cfg = _sae_cfg(export_dir)
    bw = data.lm.batch_windows
    eval_config = {  # SAEBench's CoreEvalConfig fields, then jaxsae's own
        "model_name": os.path.basename(harvest_lib.model_path(data.lm)), "llm_dtype": data.lm.dtype,
        "batch_size_prompts": bw, "n_eval_reconstruction_batches": min(downstream_windows, windows) // bw,
        "n_eval_sparsity_variance_batches": windows // bw, "dataset": data.text.path or data.text.kind,
        "context_size": data.lm.context, "compute_kl": True, "compute_ce_loss": True, "compute_l2_norms": True,
        "compute_sparsity_metrics": True, "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True, "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": True, "verbose": False,
        "site": site, "seed": seed, "text": dataclasses.asdict(data.text), "mean_ablation_also": True,
    }
    core_json = core_saebench.core_result(result["metrics"], result["density"], result["consistent_activation"],
                                          sae.params, eval_config, sae_cfg)
    results.write(out_dir, core_json)
    shown = {k: v for k, v in metrics.items() if k != "identity"}
    report.write_report(out_dir, f"{os.path.basename(os.path.abspath(export_dir))} at {site}", shown, paths,
                        contexts, result["density"])
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))  # last: its presence means the rest is there
    core.discard_progress(os.path.join(out_dir, PROGRESS))
    log.info("wrote %s", os.path.join(out_dir, "report.html"))
    return metrics
