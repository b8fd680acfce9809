"""Sparse feature circuits (Marks et al. 2403.19647): nodes are dictionary latents and one error
node per site, across several sites' dictionaries; node effects by attribution (AtP or IG) on
a clean/corrupted pair; edges between adjacent sites by the chain rule through the model;
faithfulness and completeness by mean-ablating everything outside (or inside) the circuit.

  circuit = circuits.discover(lm, clean_bt, corrupt_bt, {site: sae, ...}, metric, CircuitConfig())
  circuits.write(circuit, "out/circuit")      # circuit.json + circuit.html (a layered graph)

Node effect (positions summed, batch averaged, normalised like `patch`): IE(u) =
sum_t (u_clean - u_corrupt) . dm/du at the corrupted run (or IG's path average). Kept nodes:
|IE| > node_threshold. Edge u -> d between adjacent sites: dm/dd . dd/du . (u_clean - u_corrupt),
computed for every kept downstream node d at once as vector-Jacobian products with the
cotangent dm/dd injected at d (vmapped over d), dd/du taken with everything between the two
sites recomputed. Kept edges: |weight| > edge_threshold between kept nodes.

Faithfulness of a node set C: (m(C) - m(empty)) / (m(M) - m(empty)) on the clean inputs, where
m(C) keeps C's latents and errors and sets every other latent and error to its mean over the
clean batch's positions; M is the whole model. `complement_faithfulness` is that of M minus C:
near 0 for a complete circuit.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from jaxsae import atomic
from jaxsae import sites as sites_mod
from jaxsae.causal import attribution, patching
from jaxsae.causal import interventions as iv


@dataclasses.dataclass(frozen=True)
class CircuitConfig:
    method: str = "ig"  # node effects: "atp" or "ig" (Marks et al. use IG with 10 steps)
    steps: int = 10
    node_threshold: float = 0.05  # on |normalised effect|
    edge_threshold: float = 0.01
    max_nodes_per_site: int = 64  # the strongest kept nodes of a site whose incoming edges are computed

    def __post_init__(self):
        if self.method not in ("atp", "ig"):
            raise ValueError(f"method={self.method!r}: use 'atp' or 'ig'")
        if self.node_threshold < 0 or self.edge_threshold < 0:
            raise ValueError("thresholds must be >= 0")


def _order(saes: dict) -> list[str]:
    names = list(saes)
    for s in names:
        layer, kind = sites_mod.parse(s)
        if kind in sites_mod.HEAD_KINDS:
            raise ValueError(f"{s}: circuits use residual, attention-output or MLP-output dictionaries")
        if saes[s].spec.is_transcoder:
            raise ValueError(f"{s}: circuits need SAEs that rebuild their own site, not transcoders")
    rank = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "ln2.hook_normalized": 3, "hook_mlp_out": 4,
            "hook_resid_post": 5}
    return sorted(names, key=lambda s: (sites_mod.parse(s)[0], rank[sites_mod.parse(s)[1]]))


@dataclasses.dataclass(frozen=True)
class _Read:
    """fn of a Splice that records its input in `box` (a traced-value holder) and passes it on."""

    box: dict = dataclasses.field(hash=False, compare=False)

    def __call__(self, x, _):
        self.box["x"] = x
        return x


def _downstream_values(slots, values, tokens, up: str, down: str, sae_up, sae_down, d_f, d_err):
    """(latents, error) at `down` as a function of the deltas on `up`'s nodes."""
    model = iv.bind(slots, values)
    box: dict = {}
    model = iv.rewrite(model, {up: (iv.SaeNodes(), (sae_up, jnp.zeros(d_err.shape, d_err.dtype), d_f, d_err)),
                               down: (_Read(box), None)})
    model = sites_mod.truncate(model, sites_mod.parse(down)[0])
    model(pz.nx.wrap(tokens).tag("batch", "seq"), token_positions=pz.nx.arange("seq", tokens.shape[1]))
    x = box["x"]
    f = sae_down.encode(x)
    return f, x - sae_down.decode(f)


@functools.partial(jax.jit, static_argnames=("up", "down"))
def _edge_grads(slots, values, tokens, sae_up, sae_down, f0_up, err0_up, cot_f, cot_err, up: str, down: str):
    """For each of N cotangents on (down's latents, error): the gradients on (up's latent
    deltas, error delta): ([N, b, s, F_up], [N, b, s, d])."""
    def fn(d_f, d_err):
        return _downstream_values(slots, values, tokens, up, down, sae_up, sae_down, d_f, d_err)

    _, vjp = jax.vjp(fn, jnp.zeros_like(f0_up), jnp.zeros_like(err0_up))
    return jax.vmap(lambda cf, ce: vjp((cf, ce)))(cot_f, cot_err)


@dataclasses.dataclass(frozen=True)
class _MeanAblate:
    """Latents outside `keep` set to their means, the error to its mean unless kept."""

    def __call__(self, x, payload):
        sae, keep_f, mean_f, keep_err, mean_err = payload
        f = sae.encode(x)
        err = x - sae.decode(f)
        f = keep_f * f + (1 - keep_f) * mean_f
        err = keep_err * err + (1 - keep_err) * mean_err
        return (sae.decode(f) + err).astype(x.dtype)


def _node_key(site: str, node) -> str:
    return f"{site}/error" if node == "error" else f"{site}/{int(node)}"


def ablated_metric(lm, tokens, saes: dict, keep: dict[str, tuple[np.ndarray, bool]], means: dict, metric) -> float:
    """Batch-mean metric on `tokens` with every site's latents outside keep[site][0] ([d_sae]
    bool) and its error (unless keep[site][1]) set to their means."""
    model = lm
    for s, sae in saes.items():
        keep_f, keep_err = keep[s]
        mean_f, mean_err = means[s]
        model = sites_mod.splice(model, s, _MeanAblate(), (sae, jnp.asarray(keep_f, jnp.float32), mean_f,
                                                            jnp.float32(keep_err), mean_err))
    return patching._metric_mean(metric, model(tokens))


def node_means(lm, tokens, saes: dict) -> dict:
    """{site: (mean latents [d_sae], mean error [d])} over the batch and positions of `tokens`."""
    _, cache = sites_mod.run_with_cache(lm, tokens, list(saes))
    out = {}
    for s, sae in saes.items():
        x = cache[s]
        f = sae.encode(x)
        out[s] = (f.mean(axis=(0, 1)), (x - sae.decode(f)).mean(axis=(0, 1)))
    return out


def faithfulness(lm, clean_bt, saes: dict, nodes: set[str], metric, means: dict | None = None) -> dict:
    """{"faithfulness", "complement_faithfulness", "m_full", "m_empty", "m_circuit", "m_complement"}
    for the node set (keys "{site}/{latent}" and "{site}/error"), on the clean tokens."""
    tokens = jnp.asarray(clean_bt, jnp.int32)
    means = means or node_means(lm, tokens, saes)

    def keep_of(inside: bool):
        keep = {}
        for s, sae in saes.items():
            in_c = np.zeros(sae.d_sae, bool)
            for key in nodes:
                site, _, node = key.rpartition("/")
                if site == s and node != "error":
                    in_c[int(node)] = True
            err_in = f"{s}/error" in nodes
            keep[s] = (in_c if inside else ~in_c, err_in if inside else not err_in)
        return keep

    none = {s: (np.zeros(sae.d_sae, bool), False) for s, sae in saes.items()}
    m_full = patching._metric_mean(metric, lm(tokens))
    m_empty = ablated_metric(lm, tokens, saes, none, means, metric)
    m_c = ablated_metric(lm, tokens, saes, keep_of(True), means, metric)
    m_comp = ablated_metric(lm, tokens, saes, keep_of(False), means, metric)
    span = m_full - m_empty
    return {"faithfulness": (m_c - m_empty) / span, "complement_faithfulness": (m_comp - m_empty) / span,
            "m_full": m_full, "m_empty": m_empty, "m_circuit": m_c, "m_complement": m_comp}


def discover(lm, clean_tokens, corrupt_tokens, saes: dict, metric, cfg: CircuitConfig = CircuitConfig()) -> dict:
    """The circuit as a JSON-ready dict: {"nodes": [{id, site, latent, effect}], "edges": [{source,
    target, weight}], "faithfulness": {...}, "config", "sites", "metric": {clean, corrupt}}."""
    if not saes:
        raise ValueError("discover needs at least one site's dictionary")
    order = _order(saes)
    parts = attribution.gradients(lm, clean_tokens, corrupt_tokens, order, metric, method=cfg.method, steps=cfg.steps,
                                  saes=saes)
    denom = parts.m_clean - parts.m_corrupt
    vb, vs, g = parts.values_base, parts.values_source, parts.grads
    effect = {}  # site -> ([d_sae] latent effects, error effect)
    for s in order:
        lat = np.asarray(((vs[s + "/latents"] - vb[s + "/latents"]) * g[s + "/latents"]).sum(1).mean(0)) / denom
        err = float(((vs[s + "/error"] - vb[s + "/error"]) * g[s + "/error"]).sum((1, 2)).mean()) / denom
        effect[s] = (lat, err)
    nodes = []
    kept: dict[str, list] = {}
    for s in order:
        lat, err = effect[s]
        chosen = [int(i) for i in np.flatnonzero(np.abs(lat) > cfg.node_threshold)]
        chosen.sort(key=lambda i: -abs(lat[i]))
        kept[s] = chosen + (["error"] if abs(err) > cfg.node_threshold else [])
        for node in kept[s]:
            value = err if node == "error" else float(lat[node])
            nodes.append({"id": _node_key(s, node), "site": s, "latent": node, "effect": float(value)})

    # edges: every kept node of a site from every node of the site before it
    atp_grads = g if cfg.method == "atp" else attribution.gradients(
        lm, clean_tokens, corrupt_tokens, order, metric, method="atp", saes=saes).grads
    slots, values = iv.freeze(lm)
    edges = []
    for up, down in zip(order, order[1:]):
        targets = kept[down][: cfg.max_nodes_per_site] + (["error"] if "error" in kept[down][cfg.max_nodes_per_site:]
                                                            else [])
        if not targets or not kept[up]:
            continue
        gf, ge = atp_grads[down + "/latents"], atp_grads[down + "/error"]
        cot_f = jnp.stack([jnp.zeros_like(gf) if t == "error" else jnp.zeros_like(gf).at[..., t].set(gf[..., t])
                           for t in targets])
        cot_e = jnp.stack([ge if t == "error" else jnp.zeros_like(ge) for t in targets])
        d_up_f, d_up_e = _edge_grads(slots, values, parts.base, saes[up], saes[down], vb[up + "/latents"],
                                     vb[up + "/error"], cot_f, cot_e, up=up, down=down)
        w_f = np.asarray(((vs[up + "/latents"] - vb[up + "/latents"])[None] * d_up_f).sum(2).mean(1)) / denom
        w_e = np.asarray(((vs[up + "/error"] - vb[up + "/error"])[None] * d_up_e).sum((2, 3)).mean(1)) / denom
        for j, t in enumerate(targets):
            for src in kept[up]:
                w = float(w_e[j]) if src == "error" else float(w_f[j, src])
                if abs(w) > cfg.edge_threshold:
                    edges.append({"source": _node_key(up, src), "target": _node_key(down, t), "weight": w})
    faith = faithfulness(lm, clean_tokens, saes, {n["id"] for n in nodes}, metric)
    return {"sites": order, "nodes": nodes, "edges": edges, "faithfulness": faith,
            "metric": {"clean": parts.m_clean, "corrupt": parts.m_corrupt},
            "config": dataclasses.asdict(cfg), "n_latents": {s: saes[s].d_sae for s in order}}


def write(circuit: dict, out_dir: str) -> dict[str, str]:
    """circuit.json and circuit.html (a layered SVG graph: one column per site, node area by
    |effect|, edges blue positive / red negative), written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "circuit.json"), "html": os.path.join(out_dir, "circuit.html")}
    atomic.atomic_write_text(paths["json"], json.dumps(circuit, indent=1))
    atomic.atomic_write_text(paths["html"], render_html(circuit))
    return paths


def render_html(circuit: dict) -> str:
    cols = circuit["sites"]
    by_site = {s: [n for n in circuit["nodes"] if n["site"] == s] for s in cols}
    width, height = max(240, 220 * len(cols)), max(200, 40 + 34 * max([len(v) for v in by_site.values()] + [1]))
    pos, parts = {}, []
    for c, s in enumerate(cols):
        x = 110 + 220 * c
        parts.append(f'<text x="{x}" y="18" text-anchor="middle" font-size="12">{html.escape(s)}</text>')
        for r, n in enumerate(sorted(by_site[s], key=lambda n: -abs(n["effect"]))):
            pos[n["id"]] = (x, 44 + 34 * r)
    top = max([abs(e["weight"]) for e in circuit["edges"]] + [1e-12])
    for e in circuit["edges"]:
        if e["source"] in pos and e["target"] in pos:
            (x1, y1), (x2, y2) = pos[e["source"]], pos[e["target"]]
            color = "#2563eb" if e["weight"] > 0 else "#dc2626"
            parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" '
                         f'stroke-width="{0.5 + 4 * abs(e["weight"]) / top:.2f}" opacity="0.6">'
                         f'<title>{e["weight"]:+.4f}</title></line>')
    top_n = max([abs(n["effect"]) for n in circuit["nodes"]] + [1e-12])
    for n in circuit["nodes"]:
        x, y = pos[n["id"]]
        rad = 4 + 10 * (abs(n["effect"]) / top_n) ** 0.5
        fill = "#fde68a" if n["latent"] == "error" else ("#93c5fd" if n["effect"] > 0 else "#fca5a5")
        label = "err" if n["latent"] == "error" else str(n["latent"])
        parts.append(f'<circle cx="{x}" cy="{y}" r="{rad:.1f}" fill="{fill}" stroke="#333"><title>'
                     f'{html.escape(n["id"])}: {n["effect"]:+.4f}</title></circle>'
                     f'<text x="{x + rad + 3:.0f}" y="{y + 4}" font-size="11">{html.escape(label)}</text>')
    f = circuit["faithfulness"]
    return ("<!doctype html><meta charset='utf-8'><title>jaxsae circuit</title>"
            "<body style='font-family:sans-serif'>"
            f"<h2>Sparse feature circuit: {len(circuit['nodes'])} nodes, {len(circuit['edges'])} edges</h2>"
            f"<p>faithfulness {f['faithfulness']:.3f}, complement faithfulness {f['complement_faithfulness']:.3f} "
            f"(metric clean {circuit['metric']['clean']:.3f}, corrupt {circuit['metric']['corrupt']:.3f}); "
            f"thresholds node {circuit['config']['node_threshold']}, edge {circuit['config']['edge_threshold']}</p>"
            f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg></body>")


__all__ = ["CircuitConfig", "ablated_metric", "discover", "faithfulness", "node_means", "render_html", "write"]
