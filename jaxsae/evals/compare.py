"""Compare a family of dictionaries, as SAEBench's plots do: read every run's `evals/*.json`, write
one table (CSV and Markdown) with a row per dictionary and a column per metric, and one PNG per
metric plotted against L0 (one point per dictionary).

  rows = compare.collect(["runs/k16", "runs/k32", "runs/k64"])   # {run, l0, "core/sparsity/l0": ...}
  compare.write(rows, "runs/compare")                           # table.csv, table.md, plots/*.png
"""

from __future__ import annotations

import csv
import glob
import io
import math
import os
import re

from jaxsae.atomic import atomic_write_bytes, atomic_write_text
from jaxsae.evals import results

L0_KEY = "core/sparsity/l0"


def flatten(result: dict) -> dict[str, float]:
    """{"{eval_type_id}/{category}/{metric}": number} of one result (nulls and -1 nan markers kept out)."""
    out = {}
    for category, values in result["eval_result_metrics"].items():
        for name, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v != results.NAN_AS:
                out[f"{result['eval_type_id']}/{category}/{name}"] = float(v)
    return out


def collect(run_dirs: list[str]) -> list[dict]:
    """One row per run directory (its evals/ folder, or the folder itself if it holds the JSON files)."""
    rows = []
    for d in run_dirs:
        folder = os.path.join(d, "evals") if os.path.isdir(os.path.join(d, "evals")) else d
        files = sorted(glob.glob(os.path.join(folder, "*.json")))
        if not files:
            raise FileNotFoundError(f"{d}: no evals/*.json result files (run experiments.eval_sae on it first)")
        row = {"run": os.path.basename(os.path.abspath(d))}
        for f in files:
            row.update(flatten(results.read(f)))
        rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r if k != "run"})
    return ["run"] + ([L0_KEY] if L0_KEY in keys else []) + [k for k in keys if k != L0_KEY]


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def write(rows: list[dict], out_dir: str) -> dict[str, str]:
    """table.csv, table.md and plots/<metric>.png (against L0, when every run has core results)."""
    os.makedirs(out_dir, exist_ok=True)
    cols = columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows([[_fmt(r.get(c)) for c in cols] for r in rows])
    paths = {"csv": os.path.join(out_dir, "table.csv"), "md": os.path.join(out_dir, "table.md")}
    atomic_write_text(paths["csv"], buf.getvalue())
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    if all(L0_KEY in r for r in rows):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
        for c in cols[2:]:
            pts = [(r[L0_KEY], r[c], r["run"]) for r in rows if c in r and math.isfinite(r[c])]
            if not pts:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.scatter([p[0] for p in pts], [p[1] for p in pts])
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_ylabel(c.split("/")[-1])
            ax.set_title(c, fontsize=9)
            fig.tight_layout()
            path = os.path.join(out_dir, "plots", re.sub(r"[^A-Za-z0-9_.-]+", "_", c) + ".png")
            atomic_write_bytes(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
            plt.close(fig)
            paths[c] = path
    return paths
