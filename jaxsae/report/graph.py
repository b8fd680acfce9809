"""An attribution graph (circuit-tracer's JSON, jaxsae.causal.attribution_graph.to_json) as one
self-contained HTML page: an SVG with a column per prompt position and a row per layer (tokens at
the bottom, logits on top), node size by influence, edges blue positive / red negative with width
by |weight|, the replacement and completeness scores and the strongest path listed above it."""

from __future__ import annotations

import html


def render(data: dict, summary: dict) -> str:
    meta = data["metadata"]
    tokens = meta["prompt_tokens"]
    n_pos = len(tokens)
    layers = sorted({int(n["layer"]) for n in data["nodes"] if n["layer"] != "E"})
    top_layer = max(layers + [0])
    col_w, row_h = 90, 46
    width, height = 80 + col_w * n_pos, 80 + row_h * (top_layer + 2)

    def y_of(node):
        layer = -1 if node["layer"] == "E" else int(node["layer"])
        return height - 40 - row_h * (layer + 1)

    cells: dict[tuple, int] = {}
    where = {}
    for i, n in enumerate(data["nodes"]):
        key = (n["ctx_idx"], n["layer"])
        k = cells.get(key, 0)
        cells[key] = k + 1
        where[i] = (60 + col_w * n["ctx_idx"] + 14 * (k % 5), y_of(n) - 9 * (k // 5))
    index = {}
    for i, n in enumerate(data["nodes"]):
        index.setdefault(n["node_id"], i)  # circuit-tracer ids may repeat (feature 0_f_p, error layer f at p)
    parts = []
    top = max([abs(x["weight"]) for x in data["links"]] + [1e-12])
    for link in data["links"]:
        a, b = index.get(link["source"]), index.get(link["target"])
        if a is None or b is None:
            continue
        (x1, y1), (x2, y2) = where[a], where[b]
        color = "#2563eb" if link["weight"] > 0 else "#dc2626"
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" opacity="0.5" '
                     f'stroke-width="{0.4 + 3 * abs(link["weight"]) / top:.2f}"><title>{html.escape(link["source"])} -> '
                     f'{html.escape(link["target"])}: {link["weight"]:+.4g}</title></line>')
    fills = {"cross layer transcoder": "#93c5fd", "mlp reconstruction error": "#fde68a", "embedding": "#d1d5db",
             "logit": "#86efac"}
    for i, n in enumerate(data["nodes"]):
        x, y = where[i]
        infl = n.get("influence")
        rad = 4 if infl is None else 3 + 6 * (1 - min(max(infl, 0.0), 1.0))
        act = "" if n.get("activation") is None else f", activation {n['activation']:.3g}"
        label = n["clerp"] or n["node_id"]
        parts.append(f'<circle cx="{x}" cy="{y}" r="{rad:.1f}" fill="{fills.get(n["feature_type"], "#eee")}" '
                     f'stroke="#333"><title>{html.escape(label)} ({html.escape(n["feature_type"])}{act})</title></circle>')
    for p, t in enumerate(tokens):
        parts.append(f'<text x="{60 + col_w * p}" y="{height - 8}" font-size="11" text-anchor="middle">'
                     f'{html.escape(repr(t)[1:-1])}</text>')
    for layer in range(top_layer + 1):
        name = "logits" if layer == top_layer and any(n["feature_type"] == "logit" for n in data["nodes"]) else f"L{layer}"
        parts.append(f'<text x="4" y="{height - 40 - row_h * (layer + 1) + 4}" font-size="11">{name}</text>')
    parts.append(f'<text x="4" y="{height - 36}" font-size="11">emb</text>')
    s = summary
    path = " &larr; ".join(html.escape(p) for p in s.get("top_path", []))
    return ("<!doctype html><meta charset='utf-8'><title>jaxsae attribution graph</title>"
            "<body style='font-family:sans-serif'>"
            f"<h2>Attribution graph: {html.escape(meta['prompt'])!s}</h2>"
            f"<p>replacement score {s['replacement']:.3f}, completeness {s['completeness']:.3f}; "
            f"{s['kept_nodes']} nodes and {s['kept_links']} links kept of {s['n_active_features']} active features "
            f"(node threshold {meta['node_threshold']}); top path: {path}</p>"
            f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg></body>")
