"""One output format for every evaluation: `OUT/evals/{eval_type_id}.json` in SAEBench's schema.

  {eval_type_id, eval_config, eval_id, datetime_epoch_millis,
   eval_result_metrics: {category: {metric: number}},      flat: no dict inside a category
   eval_result_details: [per-item records],
   sae_bench_commit_hash, sae_lens_id, sae_lens_release_id, sae_lens_version,
   sae_cfg_dict, eval_result_unstructured}

so SAEBench's own result readers (its pydantic output classes) and plotting code load the files.
As SAEBench does, non-finite numbers are written as -1 (JSON has no nan); `eval_config["jaxsae"]`
says so, and lists where a jaxsae value deliberately differs from SAEBench's (a fixed bug), in
which case both values are written. Files are written atomically; `read` checks the schema.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from typing import Any

from jaxsae.atomic import atomic_write_text

EVAL_TYPES = ("core", "sparse_probing", "absorption_first_letter", "scr", "tpp", "ravel", "unlearning",
              "autointerp", "meta_structure_decoder_variance")
KEYS = ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
        "eval_result_details", "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version",
        "sae_cfg_dict", "eval_result_unstructured")
NAN_AS = -1


class ResultError(ValueError):
    """A result that does not fit the schema; the message names the key."""


def _finite(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        v = value.item() if hasattr(value, "item") else value
        if isinstance(v, float) and not math.isfinite(v):
            return NAN_AS
        return v
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ResultError(f"{where}: {type(value).__name__} is not JSON data")


def check_metrics(metrics: dict) -> None:
    """Categories of flat {metric: number or None} dicts, as SAEBench's validator demands."""
    if not isinstance(metrics, dict) or not metrics:
        raise ResultError("eval_result_metrics must be a non-empty {category: {metric: value}} dict")
    for category, values in metrics.items():
        if not isinstance(values, dict):
            raise ResultError(f"eval_result_metrics[{category!r}] must be a dict of metrics")
        for name, v in values.items():
            if isinstance(v, (dict, list)):
                raise ResultError(f"eval_result_metrics[{category!r}][{name!r}] is a {type(v).__name__}; "
                                  "categories must be flat (one level of metrics)")


def build(eval_type_id: str, eval_config: dict, metrics: dict, details: list | None = None,
          sae_cfg: dict | None = None, unstructured: Any = None, differences: dict[str, str] | None = None) -> dict:
    if eval_type_id not in EVAL_TYPES:
        raise ResultError(f"eval_type_id {eval_type_id!r} is unknown; valid: {', '.join(EVAL_TYPES)}")
    check_metrics(metrics)
    config = dict(eval_config)
    config["jaxsae"] = {"nan_written_as": NAN_AS, "differences_from_saebench": dict(differences or {})}
    meta = (sae_cfg or {}).get("metadata") or {}
    out = {
        "eval_type_id": eval_type_id,
        "eval_config": config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": list(details or []),
        "sae_bench_commit_hash": "jaxsae",  # not produced by SAEBench's code: say who did
        "sae_lens_id": meta.get("sae_lens_id"),
        "sae_lens_release_id": meta.get("sae_lens_release_id"),
        "sae_lens_version": meta.get("sae_lens_version"),
        "sae_cfg_dict": sae_cfg or {},
        "eval_result_unstructured": unstructured,
    }
    return _finite(out, "result")


def write(out_dir: str, result: dict) -> str:
    """Write `result` (from `build`) to OUT/evals/{eval_type_id}.json atomically; returns the path."""
    folder = os.path.join(out_dir, "evals")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{result['eval_type_id']}.json")
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def read(path: str) -> dict:
    """A result file, checked: every schema key present and flat metric categories."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: unreadable result ({e})") from e
    missing = [k for k in KEYS if k not in result]
    if missing:
        raise ResultError(f"{path}: not an evaluation result in SAEBench's schema (missing {missing})")
    check_metrics(result["eval_result_metrics"])
    return result
