"""Feature dashboards: one self-contained HTML page per run (and per latent on demand).

For each latent shown: its activation histogram (non-zero values), its top-activating contexts and
samples from each activation quantile with every token shaded by the latent's activation, its
logit effects (the tokens its decoder direction promotes and suppresses most, through the model's
final norm and unembedding), its density, its nearest latents by decoder cosine, and the autointerp
explanation when one exists. The data travel inside the page as JSON and a small inline script
draws them: no network, no external files.

`latent_data` computes everything from activations at the site (`acts_nd`, one row per text token,
`rows` giving each row's (window, position) in `tokens_wt`); `activations` runs the model to get
them; `write` renders the page.
"""

from __future__ import annotations

import html
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.atomic import atomic_write_bytes
from jaxsae.data import tokens as tokens_lib

HIST_BINS = 30


def logit_effects(lm, w_dec_fd, k: int = 10, tokenizer=None, chunk: int = 256) -> list[dict]:
    """Per latent: the k tokens whose logits its decoder direction raises most and lowers most: the
    direction through the layers after the last transformer block (final norm, unembedding, any
    logit soft-cap) minus the zero vector's logits, so a LayerNorm's bias and the unembedding's
    bias, shared by every direction, drop out (for RMSNorm models that is W_U of the scaled
    direction, SAELens dashboards' W_dec W_U up to the norm's scale)."""
    body = lm.model.body.sublayers
    last = max(i for i, s in enumerate(body) if isinstance(s, model_parts.TransformerBlock))
    tail = pz.nn.Sequential(list(body[last + 1 :]))

    @jax.jit
    def run(d_fd):
        out = tail(pz.nx.wrap(d_fd).tag("latent", "embedding"))
        return out.untag("latent", "vocabulary").unwrap().astype(jnp.float32)

    w = np.asarray(w_dec_fd, np.float32)
    zero = np.asarray(run(jnp.zeros((chunk, w.shape[1]), jnp.float32)))[:1]
    out = []
    for s in range(0, len(w), chunk):
        part = w[s : s + chunk]
        padded = np.concatenate([part, np.zeros((chunk - len(part), w.shape[1]), np.float32)]) if len(part) < chunk else part
        logits = np.asarray(run(jnp.asarray(padded)))[: len(part)] - zero
        logits = logits - logits.mean(1, keepdims=True)  # an effect on the distribution: the mean shift is moot
        for row in logits:
            up, down = np.argsort(-row)[:k], np.argsort(row)[:k]
            name = (lambda t: tokenizer.decode([int(t)])) if tokenizer is not None else str  # noqa: E731
            out.append({"promoted": [[name(t), float(row[t])] for t in up],
                        "suppressed": [[name(t), float(row[t])] for t in down]})
    return out


def nearest_latents(w_dec_fd, latents, k: int = 5) -> dict[int, list[list]]:
    """For each latent: the k others whose decoder rows have the largest cosine with its own."""
    w = np.asarray(w_dec_fd, np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    out = {}
    for latent in latents:
        cos = w @ w[latent]
        cos[latent] = -np.inf
        best = np.argsort(-cos)[:k]
        out[int(latent)] = [[int(j), float(cos[j])] for j in best]
    return out


def activations(lm, site: str, tokens_wt: np.ndarray, specials, batch: int = 16, progress: bool = False):
    """(acts [n, d] at `site` for every text token, rows [n, 2] = (window, position))."""
    capture = sites.capture_fn(lm, [site])
    xs, rows = [], []
    for s in tqdm(range(0, len(tokens_wt), batch), desc="dashboard: activations", disable=not progress, leave=False):
        tok = tokens_wt[s : s + batch]
        real = len(tok)
        if real < batch:
            tok = np.concatenate([tok, np.repeat(tok[-1:], batch - real, 0)])
        keep = tokens_lib.content_mask(tok, specials)
        keep[real:] = False
        w, t = np.nonzero(keep)
        xs.append(tokens_lib.text_rows(capture(jnp.asarray(tok))[site], keep).astype(np.float32))
        rows.append(np.stack([w + s, t], 1))
    return np.concatenate(xs), np.concatenate(rows)


def _context(tokens_wt, acts_wt, w: int, t: int, tokenizer, before: int, after: int) -> dict:
    lo, hi = max(1, t - before), min(tokens_wt.shape[1], t + after + 1)
    return {"value": float(acts_wt[w, t]), "at": t - lo,
            "pieces": [[tokenizer.decode([int(tokens_wt[w, j])]), float(acts_wt[w, j])] for j in range(lo, hi)]}


def latent_data(sae, acts_nd, rows, tokens_wt, tokenizer, latents, *, lm=None, site: str | None = None, n_top: int = 10,
                n_quantiles: int = 4, per_quantile: int = 3, before: int = 12, after: int = 4, seed: int = 0,
                explanations: dict[int, str] | None = None) -> list[dict]:
    """JSON-ready records of `latents` from text-token activations `acts_nd` (see the module docstring)."""
    latents = [int(i) for i in latents]
    bad = [i for i in latents if not 0 <= i < sae.d_sae]
    if bad:
        raise ValueError(f"dashboard: latent(s) {bad} out of range; the dictionary has {sae.d_sae} latents")
    encode = jax.jit(lambda s, x: s.encode(x)[:, jnp.asarray(latents)])
    f_nk = np.concatenate([np.asarray(encode(sae, jnp.asarray(acts_nd[s : s + 4096])))
                           for s in range(0, len(acts_nd), 4096)]) if len(acts_nd) else np.zeros((0, len(latents)))
    w_dec = np.asarray(sae.params["W_dec"], np.float32)
    direct = lm is not None and not sae.spec.is_transcoder and not (site and sites.parse(site)[1] == "attn.hook_z")
    # (per-head decoder rows do not live in the residual stream: no logit effects for them)
    effects = logit_effects(lm, w_dec[latents], tokenizer=tokenizer) if direct else [None] * len(latents)
    neighbours = nearest_latents(w_dec, latents)
    rng = np.random.default_rng(seed)
    out = []
    for col, latent in enumerate(latents):
        a_n = f_nk[:, col]
        dense = np.zeros(tokens_wt.shape, np.float32)
        dense[rows[:, 0], rows[:, 1]] = a_n
        fired = np.nonzero(a_n > 0)[0]
        rec = {"latent": latent, "density": float(len(fired) / max(len(a_n), 1)), "tokens_scanned": int(len(a_n)),
               "max": float(a_n.max()) if len(a_n) else 0.0, "histogram": None, "top": [], "quantiles": [],
               "logits": effects[col], "neighbours": neighbours[latent],
               "explanation": (explanations or {}).get(latent)}
        if len(fired):
            vals = a_n[fired]
            counts, edges = np.histogram(vals, bins=HIST_BINS, range=(0.0, float(vals.max())))
            rec["histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
            order = fired[np.argsort(-vals, kind="stable")]
            seen, top = set(), []
            for r in order:  # the strongest firing per window, so the contexts differ
                w, t = rows[r]
                if int(w) in seen:
                    continue
                seen.add(int(w))
                top.append(_context(tokens_wt, dense, int(w), int(t), tokenizer, before, after))
                if len(top) == n_top:
                    break
            rec["top"] = top
            qs = np.quantile(vals, np.linspace(0, 1, n_quantiles + 1))
            for q in range(n_quantiles):
                lo, hi = qs[q], qs[q + 1]
                inside = fired[(vals >= lo) & ((vals <= hi) if q == n_quantiles - 1 else (vals < hi))]
                pick = rng.choice(inside, size=min(per_quantile, len(inside)), replace=False) if len(inside) else []
                rec["quantiles"].append({"range": [float(lo), float(hi)], "examples": [
                    _context(tokens_wt, dense, int(rows[r][0]), int(rows[r][1]), tokenizer, before, after)
                    for r in sorted(pick, key=lambda r: -a_n[r])]})
        out.append(rec)
    return out


def explanations_from(out_dir: str) -> dict[int, str]:
    """Autointerp explanations written by jaxsae.evals.autointerp into OUT/evals/autointerp.json."""
    path = os.path.join(out_dir, "evals", "autointerp.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        logs = json.load(f).get("eval_result_unstructured") or []
    return {int(r["latent"]): r["explanation"] for r in logs if isinstance(r, dict) and "latent" in r}


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;display:flex;color:#222}
nav{width:150px;height:100vh;overflow-y:auto;position:sticky;top:0;border-right:1px solid #ddd;padding:8px;
font-size:13px;flex-shrink:0}
nav a{display:block;color:#0645ad;text-decoration:none;padding:1px 0}
main{padding:12px 24px;max-width:1100px}
.card{border:1px solid #ccc;border-radius:6px;padding:10px 14px;margin:0 0 18px 0}
.card h2{margin:0 0 4px 0;font-size:18px}
.meta{color:#555;font-size:13px}
.cols{display:flex;gap:24px;flex-wrap:wrap}
.ctx{font-family:monospace;white-space:pre-wrap;font-size:12.5px;margin:2px 0}
.ctx b{display:inline-block;min-width:48px;color:#333}
.tok.at{outline:1px solid #333}
table.logits td{font-family:monospace;font-size:12px;padding:0 8px}
.up{color:#1a7f37}.down{color:#b42318}
.expl{background:#f3f6fb;border-left:3px solid #4a78c2;padding:4px 8px;margin:6px 0}
"""

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('dashboard-data').textContent);
  const main = document.getElementById('latents');
  const nav = document.getElementById('index');
  const shown = new Set(data.latents.map(r => r.latent));
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function context(row, vmax) {
    const div = el('div', {class: 'ctx'});
    div.appendChild(el('b', {}, row.value.toFixed(2)));
    row.pieces.forEach(function (p, j) {
      const a = vmax > 0 ? Math.max(0, Math.min(1, p[1] / vmax)) : 0;
      const s = el('span', {class: 'tok' + (j === row.at ? ' at' : ''), title: p[1].toFixed(3)},
                   p[0].replace(/\n/g, '\u23CE'));
      s.style.background = 'rgba(230,120,20,' + a.toFixed(2) + ')';
      div.appendChild(s);
    });
    return div;
  }
  function histogram(h) {
    const ns = 'http://www.w3.org/2000/svg', W = 320, H = 90;
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('width', W); svg.setAttribute('height', H + 16); svg.setAttribute('class', 'hist');
    const top = Math.max.apply(null, h.counts) || 1, bw = W / h.counts.length;
    h.counts.forEach(function (c, i) {
      const r = document.createElementNS(ns, 'rect');
      const bh = H * c / top;
      r.setAttribute('x', i * bw); r.setAttribute('y', H - bh);
      r.setAttribute('width', Math.max(1, bw - 1)); r.setAttribute('height', bh);
      r.setAttribute('fill', '#e07814');
      const t = document.createElementNS(ns, 'title');
      t.textContent = h.edges[i].toFixed(3) + '-' + h.edges[i + 1].toFixed(3) + ': ' + c;
      r.appendChild(t); svg.appendChild(r);
    });
    const lab = document.createElementNS(ns, 'text');
    lab.setAttribute('x', 0); lab.setAttribute('y', H + 13); lab.setAttribute('font-size', '11');
    lab.textContent = '0 \u2026 ' + h.edges[h.edges.length - 1].toFixed(2) + ' (non-zero activations)';
    svg.appendChild(lab);
    return svg;
  }
  function logits(eff) {
    const t = el('table', {class: 'logits'});
    const n = Math.max(eff.promoted.length, eff.suppressed.length);
    const head = el('tr'); head.appendChild(el('th', {}, 'promoted')); head.appendChild(el('th'));
    head.appendChild(el('th', {}, 'suppressed')); head.appendChild(el('th')); t.appendChild(head);
    for (let i = 0; i < n; i++) {
      const tr = el('tr');
      [[eff.promoted[i], 'up'], [eff.suppressed[i], 'down']].forEach(function (pair) {
        const v = pair[0];
        tr.appendChild(el('td', {class: pair[1]}, v ? JSON.stringify(v[0]) : ''));
        tr.appendChild(el('td', {class: pair[1]}, v ? v[1].toFixed(2) : ''));
      });
      t.appendChild(tr);
    }
    return t;
  }
  data.latents.forEach(function (r) {
    const card = el('section', {class: 'card', id: 'latent-' + r.latent, 'data-latent': r.latent});
    card.appendChild(el('h2', {}, 'Latent ' + r.latent));
    card.appendChild(el('div', {class: 'meta'}, 'density ' + r.density.toExponential(2) + ' of ' +
        r.tokens_scanned + ' tokens; max activation ' + r.max.toFixed(3)));
    if (r.explanation) card.appendChild(el('div', {class: 'expl'}, 'Explanation: ' + r.explanation));
    const cols = el('div', {class: 'cols'});
    const left = el('div');
    if (r.histogram) left.appendChild(histogram(r.histogram));
    else left.appendChild(el('p', {class: 'meta'}, 'never fired on the scanned tokens'));
    if (r.logits) { left.appendChild(el('h4', {}, 'Logit effects')); left.appendChild(logits(r.logits)); }
    left.appendChild(el('h4', {}, 'Nearest latents (decoder cosine)'));
    const nb = el('div', {class: 'neighbours'});
    r.neighbours.forEach(function (p) {
      const a = el('a', shown.has(p[0]) ? {href: '#latent-' + p[0]} : {}, p[0] + ' (' + p[1].toFixed(2) + ')');
      nb.appendChild(a); nb.appendChild(document.createTextNode(' '));
    });
    left.appendChild(nb);
    const right = el('div');
    right.appendChild(el('h4', {}, 'Top activations'));
    r.top.forEach(function (row) { right.appendChild(context(row, r.max)); });
    r.quantiles.forEach(function (q, i) {
      right.appendChild(el('h4', {}, 'Quantile ' + (i + 1) + ': ' + q.range[0].toFixed(3) + '\u2013' +
                                     q.range[1].toFixed(3)));
      q.examples.forEach(function (row) { right.appendChild(context(row, r.max)); });
    });
    cols.appendChild(left); cols.appendChild(right); card.appendChild(cols);
    main.appendChild(card);
    nav.appendChild(el('a', {href: '#latent-' + r.latent}, 'latent ' + r.latent));
  });
  document.body.setAttribute('data-rendered', data.latents.length);
})();
"""


def page(title: str, records: list[dict], meta: dict | None = None) -> str:
    """The HTML document (self-contained) for `records` from `latent_data`."""
    payload = json.dumps({"title": title, "meta": meta or {}, "latents": records}).replace("</", "<\\/")
    meta_html = "".join(f"<span class='meta'>{html.escape(str(k))}: {html.escape(str(v))}</span> "
                        for k, v in (meta or {}).items() if k != "identity")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><nav id='index'><b>Latents</b></nav><main>"
            f"<h1>{html.escape(title)}</h1><p>{meta_html}</p><p class='meta'>Tokens are shaded by the latent's "
            f"activation (hover for values); the outlined token is the example's own.</p><div id='latents'></div>"
            f"</main><script type='application/json' id='dashboard-data'>{payload}</script>"
            f"<script>{_SCRIPT}</script></body></html>")


def write(path: str, title: str, records: list[dict], meta: dict | None = None) -> str:
    """Write the page atomically; returns its path."""
    doc = page(title, records, meta)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, lambda f: f.write(doc.encode("utf-8")))
    return path


def _payload(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    start = doc.find("id='dashboard-data'>")
    end = doc.find("</script>", start)
    if start < 0 or end < 0:
        return {}
    try:
        return json.loads(doc[start + len("id='dashboard-data'>") : end].replace("<\\/", "</"))
    except json.JSONDecodeError:
        return {}


def identity_of(path: str) -> dict | None:
    """The `identity` a page was written with (in its meta), or None."""
    return (_payload(path).get("meta") or {}).get("identity")


def latents_of(path: str) -> list[int]:
    return [r["latent"] for r in _payload(path).get("latents", [])]
