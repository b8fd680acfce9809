"""Evaluation artefacts: PNG plots (matplotlib, headless) and one self-contained HTML report (plots
inlined as base64, no external assets) with the metrics and, for a sample of latents, their
top-activating contexts with every token shaded by the latent's activation."""

from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from jaxsae.atomic import atomic_write_bytes


def plots(result: dict, out_dir: str) -> dict[str, str]:
    """Density histogram and per-token L0 histogram as PNG files; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(result["density"] + 1e-10), bins=60, color="#3b6ea8")
    ax.set_xlabel("log10 latent firing frequency (dead latents at -10)")
    ax.set_ylabel("latents")
    ax.set_title("Latent density")
    fig.tight_layout()
    paths["density"] = os.path.join(out_dir, "density_histogram.png")
    atomic_write_bytes(paths["density"], lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    l0 = result["l0_tokens"]
    ax.hist(l0, bins=min(60, int(l0.max()) + 1 if len(l0) else 1), color="#a85b3b")
    ax.set_xlabel("active latents per token (L0)")
    ax.set_ylabel("tokens")
    ax.set_title(f"L0 per token (mean {l0.mean():.1f})" if len(l0) else "L0 per token")
    fig.tight_layout()
    paths["l0"] = os.path.join(out_dir, "l0_histogram.png")
    atomic_write_bytes(paths["l0"], lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return paths


def context_rows(result: dict, latents, tokenizer, width: int = 12, batch: int = 16) -> dict[int, list[dict]]:
    """For each latent: its top contexts as {"value", "pieces": [(text, activation), ...], "at"}
    around the top token. The windows involved are re-run once, in fixed-size batches (one compiled
    shape), keeping only the sampled latents' activations."""
    tokens, capture, encode, site = result["tokens"], result["capture"], result["encode"], result["site"]
    latents = [int(i) for i in latents if result["top"].get(int(i))]
    wins = sorted({w for i in latents for _, w, _ in result["top"][i]})
    acts = {}  # window -> [seq, len(latents)]
    for start in range(0, len(wins), batch):
        chunk = wins[start : start + batch]
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        x = np.asarray(capture(np.asarray(tokens[padded], np.int32))[site], np.float32)
        f = np.asarray(encode(x.reshape(-1, x.shape[-1])))[:, latents].reshape(batch, x.shape[1], len(latents))
        acts.update({w: f[j] for j, w in enumerate(chunk)})
    out = {}
    for col, latent in enumerate(latents):
        rows = []
        for value, w, t in result["top"][latent]:
            lo, hi = max(1, t - width), min(tokens.shape[1], t + 4)
            pieces = [(tokenizer.decode([int(tokens[w, j])]), float(acts[w][j, col])) for j in range(lo, hi)]
            rows.append({"value": value, "pieces": pieces, "at": t - lo})
        out[latent] = rows
    return out


def _img(path: str) -> str:
    with open(path, "rb") as f:
        return f"<img src='data:image/png;base64,{base64.b64encode(f.read()).decode()}'/>"


def _context_html(row: dict, vmax: float) -> str:
    spans = []
    for j, (text, a) in enumerate(row["pieces"]):
        alpha = 0.0 if vmax <= 0 else min(1.0, max(0.0, a / vmax))
        style = f"background: rgba(230, 120, 20, {alpha:.2f});" + (" outline: 1px solid #333;" if j == row["at"] else "")
        spans.append(f"<span title='{a:.3f}' style='{style}'>{html.escape(text).replace(chr(10), '⏎')}</span>")
    return f"<div class='ctx'><b>{row['value']:.2f}</b> " + "".join(spans) + "</div>"


def write_report(out_dir: str, title: str, metrics: dict, plot_paths: dict, contexts: dict[int, list[dict]],
                 density: np.ndarray) -> str:
    """report.html (self-contained) in out_dir; returns its path."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
    feats = []
    for latent, ctxs in contexts.items():
        vmax = max(r["value"] for r in ctxs)
        feats.append(f"<h3>latent {latent} <small>density {density[latent]:.2e}</small></h3>" +
                     "".join(_context_html(r, vmax) for r in ctxs))
    doc = f"""<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} td{{padding:2px 10px}}
.ctx{{font-family:monospace;white-space:pre-wrap;margin:3px 0;font-size:13px}} img{{max-width:48%}}</style></head>
<body><h1>{html.escape(title)}</h1><h2>Metrics</h2><table>{rows}</table>
<h2>Plots</h2>{''.join(_img(p) for p in plot_paths.values())}
<h2>Top-activating contexts</h2><p>Each line: the latent's activation at the outlined token, with every
token shaded by its activation (hover for values).</p>{''.join(feats)}
<script type='application/json' id='metrics'>{html.escape(json.dumps(metrics))}</script></body></html>"""
    path = os.path.join(out_dir, "report.html")
    atomic_write_bytes(path, lambda f: f.write(doc.encode("utf-8")))
    return path
