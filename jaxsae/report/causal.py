"""Plots and one self-contained HTML page for causal experiments: heatmaps of (layer x position)
and (layer x head) effects, steering curves (property against coefficient, fluency beside)."""

from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from jaxsae import atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(grid: np.ndarray, path: str, title: str, xlabels=None, ylabel: str = "layer", xlabel: str = "position",
            center: bool = True) -> str:
    plt = _plt()
    grid = np.asarray(grid, np.float64)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * grid.shape[1] + 2), max(3.0, 0.22 * grid.shape[0] + 1.5)))
    vmax = float(np.nanmax(np.abs(grid))) or 1.0
    im = ax.imshow(grid, aspect="auto", cmap="RdBu" if center else "viridis", vmin=-vmax if center else None,
                   vmax=vmax if center else None, origin="lower")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    if xlabels is not None and len(xlabels) == grid.shape[1]:
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(xlabels, rotation=90, fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path: str) -> None:
    atomic.atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def steering_curves(result: dict, path: str, property_name: str = "sentiment") -> str:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in result["directions"].items():
        c = [r["coefficient"] for r in rows]
        a.errorbar(c, [r["property_mean"] for r in rows], yerr=[r["property_sem"] for r in rows], marker="o",
                   label=name, capsize=2)
        b.errorbar(c, [r["fluency_mean"] for r in rows], yerr=[r["fluency_sem"] for r in rows], marker="o",
                   label=name, capsize=2)
    a.set_xlabel("coefficient (x mean activation norm)")
    a.set_ylabel(property_name)
    b.set_xlabel("coefficient (x mean activation norm)")
    b.set_ylabel("log p(continuation) under the unsteered model")
    a.legend(fontsize=7)
    a.set_title(f"steering at {result['site']}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def bars(rows: list[dict], label: str, keys: list[str], path: str, title: str) -> str:
    """One bar group per row (named by rows[i][label]), one panel per key."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    axes = np.atleast_1d(axes)
    names = [str(r[label]) for r in rows]
    for ax, key in zip(axes, keys):
        ax.bar(range(len(rows)), [float(r[key]) for r in rows], color="#60a5fa")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def lines(curves: dict[str, list[dict]], x: str, keys: list[str], path: str, title: str) -> str:
    """One panel per key, one line per curve, against rows[x]."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.4))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for name, rows in curves.items():
            ax.plot([r[x] for r in rows], [r[key] for r in rows], marker="o", label=name)
        ax.set_xlabel(x)
        ax.set_title(key, fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def page(path: str, title: str, summary: dict, images: dict[str, str], tables: dict[str, list[dict]] | None = None) -> str:
    """One HTML file with the images inlined, the summary as a definition list and optional tables."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<body style='font-family:sans-serif;max-width:1200px'>", f"<h1>{html.escape(title)}</h1><dl>"]
    for k, v in summary.items():
        text = v if isinstance(v, str) else json.dumps(v)
        parts.append(f"<dt><b>{html.escape(str(k))}</b></dt><dd>{html.escape(text)}</dd>")
    parts.append("</dl>")
    for caption, img in images.items():
        with open(img, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(f"<h3>{html.escape(caption)}</h3><img src='data:image/png;base64,{data}'>")
    for caption, rows in (tables or {}).items():
        if not rows:
            continue
        cols = list(rows[0])
        parts.append(f"<h3>{html.escape(caption)}</h3><table border=1 cellpadding=3 style='border-collapse:collapse'>"
                     + "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    atomic.atomic_write_text(path, "".join(parts) + "</body>")
    return path


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return " | ".join(map(str, v))
    return str(v)


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic.atomic_write_text(path, json.dumps(obj, indent=1))


def reuse_or_compute(path: str, settings: dict, compute) -> dict:
    """The result at `path` when it was made with exactly `settings` (printing that it is reused),
    else `compute()` with `settings` added, written atomically to `path`."""
    canonical = json.loads(json.dumps(settings))
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous.get("settings") == canonical:
            print(f"{path} already holds this run; redrawing its figures")
            return previous
    result = compute()
    result["settings"] = canonical
    write_json(path, result)
    return result
