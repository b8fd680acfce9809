"""Attribution graphs over a transcoder replacement model (circuit-tracer's algorithm; Ameisen et
al. 2025, "Circuit Tracing"; docs/methods.md section 12).

Nodes, in circuit-tracer's order: active features (layer, position, latent; positions before
`zero_positions` are BOS-like constants and hold none), one error node per (layer, position)
(the MLP output minus the transcoders' reconstruction; layer-major), one token node per position
(the embedding output), and the top logits of the last position until their cumulative
probability reaches `desired_logit_prob` (at most `max_n_logits`).

Edges: `A[target, source]` is the direct effect of the source on the target's pre-activation
(features) or demeaned logit (logits) in the frozen local replacement model
(jaxsae.causal.replacement). For a batch of targets one VJP of the replacement's readout, with
each target's encoder row (or demeaned unembedding) as its cotangent, gives the gradient at every
MLP output and at the embedding; a feature source's edge is that gradient dotted with its
activation times its decoder vectors (every layer it writes, for a CLT), an error's with its
vector, a token's with its embedding. The targets are vmapped; with a mesh they are split over its
data axis, so a long prompt's graph is spread over the devices.

`influence`, `prune` and `scores` follow circuit-tracer's `graph.py` (compute_influence,
prune_graph at 0.8 / 0.98, compute_graph_scores); `to_json` writes its frontend's graph schema.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import axes
from jaxsae import sharding as sh
from jaxsae.causal import replacement as rp


@dataclasses.dataclass
class Graph:
    tokens: np.ndarray  # [T]
    n_layers: int
    features: np.ndarray  # [S, 3] (layer, position, latent) of the feature nodes
    activations: np.ndarray  # [S]
    logit_ids: np.ndarray  # [K]
    logit_probs: np.ndarray  # [K]
    adjacency: np.ndarray  # [N, N] rows are targets, columns sources
    prompt: str = ""
    scan: str = "jaxsae"
    token_strings: list[str] = dataclasses.field(default_factory=list)
    logit_strings: list[str] = dataclasses.field(default_factory=list)
    n_active: int = 0  # active features before max_feature_nodes selected some

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def error_start(self) -> int:
        return len(self.features)

    @property
    def token_start(self) -> int:
        return self.error_start + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def logit_weights(self) -> np.ndarray:
        w = np.zeros(self.adjacency.shape[0])
        w[self.logit_start:] = self.logit_probs
        return w


# ------------------------------------------------------------------------------- transcoders
class _Transcoders:
    """Per-layer transcoders (a list of SAEs) or one cross-layer transcoder, seen uniformly."""

    def __init__(self, transcoders, n_layers: int):
        self.clt = not isinstance(transcoders, (list, tuple))
        if self.clt:
            spec = transcoders.spec
            if spec.name != "clt" or spec.n_layers != n_layers:
                raise ValueError(f"attribution needs one transcoder per layer or a CLT over all {n_layers} layers; "
                                 f"got {spec.describe()}")
        elif len(transcoders) != n_layers:
            raise ValueError(f"attribution needs one transcoder per layer ({n_layers}); got {len(transcoders)}")
        else:
            for i, t in enumerate(transcoders):
                if t.spec.skip:
                    raise ValueError(f"layer {i}: transcoders with a skip path (W_skip) are not supported by "
                                     "attribution yet; use transcoders without --config.sae.skip")
        self.t = transcoders
        self.n_layers = n_layers

    def pre_and_acts(self, inputs_ltd):
        """(pre-activations, activations) [L, T, F]."""
        if self.clt:
            spec, p = self.t.spec, self.t.params
            x = jnp.swapaxes(inputs_ltd, 0, 1)  # [T, L, d]
            pre = spec.pre_acts(p, x)
            return jnp.swapaxes(pre, 0, 1), jnp.swapaxes(spec.encode(p, x), 0, 1)
        pre = jnp.stack([t.spec.pre_acts(t.params, inputs_ltd[i]) for i, t in enumerate(self.t)])
        acts = jnp.stack([t.encode(inputs_ltd[i]) for i, t in enumerate(self.t)])
        return pre, acts

    def reconstruct(self, acts_ltf):
        if self.clt:
            return jnp.swapaxes(self.t.decode(jnp.swapaxes(acts_ltf, 0, 1)), 0, 1)
        return jnp.stack([t.decode(acts_ltf[i]) for i, t in enumerate(self.t)])

    def encoder_rows(self, layers, latents):
        """[n, d]: the input-space direction each target feature's pre-activation reads."""
        if self.clt:
            return jnp.asarray(self.t.params["W_enc"])[layers, :, latents]
        return jnp.stack([jnp.asarray(self.t[int(layer)].params["W_enc"])[:, int(f)] for layer, f in zip(layers, latents)])

    def writes(self, layer: int, latents: np.ndarray) -> jax.Array:
        """[n, L, O]: each layer-`layer` latent's decoder vector into every layer (zero before it)."""
        n, L = len(latents), self.n_layers
        if self.clt:
            w = jnp.asarray(self.t.params[f"W_dec_{layer}"])[latents]  # [n, L - layer, O]
            return jnp.concatenate([jnp.zeros((n, layer, w.shape[-1]), w.dtype), w], axis=1)
        w = jnp.asarray(self.t[layer].params["W_dec"])[latents]  # [n, O]
        out = jnp.zeros((n, L, w.shape[-1]), w.dtype)
        return out.at[:, layer].set(w)


# ------------------------------------------------------------------------------- attribution
def logit_targets(logits_v, max_n_logits: int = 10, desired_logit_prob: float = 0.95):
    """(ids, probs): the most likely next tokens until their cumulative probability reaches
    desired_logit_prob (the first index where it does, inclusive), at most max_n_logits."""
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits_v, jnp.float32)), np.float64)
    order = np.argsort(-probs, kind="stable")[:max_n_logits]
    cum = np.cumsum(probs[order])
    n = min(int(np.searchsorted(cum, desired_logit_prob)) + 1, max_n_logits)
    return order[:n], probs[order[:n]]


@functools.partial(jax.jit, static_argnames=("readout",))
def _rows(readout, slots, values, tokens, consts, deltas0, tgt_layer, tgt_pos, tgt_vec, tgt_logit,
          src_write_tpld, errors_ltd, embed_td):
    """Edges into a batch of targets: (feature sources [N, T, P] in the padded per-position layout,
    errors [N, L, T], tokens [N, T])."""
    def f(deltas):
        return readout(slots, values, tokens, consts, deltas)

    (inputs, _), vjp = jax.vjp(f, deltas0)

    def one(layer, pos, vec, logit_vec):
        ct_in = jnp.zeros_like(inputs).at[layer, pos].set(vec)
        g = vjp((ct_in, logit_vec))[0]
        feat = jnp.einsum("ltd,tpld->tp", g["mlp"], src_write_tpld)
        err = jnp.einsum("ltd,ltd->lt", g["mlp"], errors_ltd)
        tok = jnp.einsum("td,td->t", g["embed"], embed_td)
        return feat, err, tok

    return jax.vmap(one)(tgt_layer, tgt_pos, tgt_vec, tgt_logit)


def attribute(lm, tokens_t, transcoders, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
              batch_size: int = 64, max_feature_nodes: int | None = None, zero_positions: int = 1,
              input_kind: str = "ln2.hook_normalized", mesh=None, tokenizer=None, prompt: str = "",
              progress: bool = False, update_interval: int = 4) -> Graph:
    """The attribution graph of the next-token prediction after `tokens_t` ([T], BOS first)."""
    tokens_t = np.asarray(tokens_t, np.int32).reshape(-1)
    n_layers = (transcoders.spec.n_layers if not isinstance(transcoders, (list, tuple)) else len(transcoders))
    tc = _Transcoders(transcoders, n_layers)
    rep = rp.build(lm, tokens_t, n_layers, input_kind)
    T = len(tokens_t)
    pre, acts = tc.pre_and_acts(rep.inputs_ltd)
    acts = acts.at[:, :zero_positions].set(0.0)
    errors = rep.mlp_out_ltd - tc.reconstruct(acts)
    errors = errors.at[:, :zero_positions].set(0.0)
    acts_np = np.asarray(acts)
    feats = np.argwhere(acts_np != 0)  # (layer, pos, latent), lexicographic: circuit-tracer's order
    feat_act = acts_np[feats[:, 0], feats[:, 1], feats[:, 2]] if len(feats) else np.zeros((0,), np.float32)
    S = len(feats)

    # sources: activation x decoder writes, padded per position [T, P, L, O]
    per_pos = [np.nonzero(feats[:, 1] == t)[0] for t in range(T)]
    P = max(1, max(len(ix) for ix in per_pos))
    o = rep.mlp_out_ltd.shape[-1]
    src = np.zeros((T, P, n_layers, o), np.float32)
    slot = np.zeros((S,), np.int64)
    for t, ix in enumerate(per_pos):
        slot[ix] = np.arange(len(ix))
    for layer in range(n_layers):
        ix = np.nonzero(feats[:, 0] == layer)[0]
        if len(ix):
            w = np.asarray(tc.writes(layer, feats[ix, 2])) * feat_act[ix, None, None]
            src[feats[ix, 1], slot[ix]] = w
    src = jnp.asarray(src)

    logit_ids, logit_probs = logit_targets(rep.logits_v, max_n_logits, desired_logit_prob)
    V = rep.logits_v.shape[-1]
    logit_vecs = np.zeros((len(logit_ids), V), np.float32)
    logit_vecs[np.arange(len(logit_ids)), logit_ids] = 1.0
    logit_vecs -= 1.0 / V  # the demeaned logit: logit_v - mean over the vocabulary

    readout = rp.readout_fn(rep)
    key = _Readout(readout, n_layers, input_kind)
    d_in = rep.inputs_ltd.shape[-1]
    if mesh is not None:  # the batch of targets is split over the data axis
        batch_size = -(-batch_size // mesh.shape[sh.DATA]) * mesh.shape[sh.DATA]

    def run_batch(kinds: list[tuple]):
        """kinds: ("feature", s) or ("logit", k); returns (feature-source rows [n, S], err [n, L*T], tok [n, T])."""
        n = len(kinds)
        layer = np.zeros((batch_size,), np.int32)
        pos = np.zeros((batch_size,), np.int32)
        vec = np.zeros((batch_size, d_in), np.float32)
        lvec = np.zeros((batch_size, V), np.float32)
        f_ix = [i for i, (k, _) in enumerate(kinds) if k == "feature"]
        if f_ix:
            s_ix = np.array([kinds[i][1] for i in f_ix])
            layer[f_ix], pos[f_ix] = feats[s_ix, 0], feats[s_ix, 1]
            vec[f_ix] = np.asarray(tc.encoder_rows(feats[s_ix, 0], feats[s_ix, 2]))
        for i, (k, j) in enumerate(kinds):
            if k == "logit":
                lvec[i] = logit_vecs[j]
        args = [jnp.asarray(a) for a in (layer, pos, vec, lvec)]
        if mesh is not None:
            args = [jax.device_put(a, sh.named(mesh, (axes.BATCH,) + (None,) * (a.ndim - 1))) for a in args]
        feat_tp, err, tok = _rows(key, rep.slots, rep.values, rep.tokens, rp.consts(rep), rp.zero_deltas(rep),
                                  *args, src, errors, rep.embed_td)
        feat_tp, err, tok = (np.asarray(a)[:n] for a in (feat_tp, err, tok))
        feat_rows = feat_tp[:, feats[:, 1], slot] if S else np.zeros((n, 0), np.float32)
        return feat_rows, err.reshape(n, -1), tok

    n_err, K = n_layers * T, len(logit_ids)
    full = np.zeros((S + n_err + T + K, S + n_err + T + K), np.float32)
    logit_row0 = S + n_err + T

    def fill(kinds):
        for start in range(0, len(kinds), batch_size):
            chunk = kinds[start : start + batch_size]
            fr, er, tr = run_batch(chunk)
            rows = [s if k == "feature" else logit_row0 + s for k, s in chunk]
            full[rows, :S] = fr
            full[rows, S : S + n_err] = er
            full[rows, S + n_err : S + n_err + T] = tr

    fill([("logit", k) for k in range(K)])
    if max_feature_nodes is None or max_feature_nodes >= S:
        selected = np.arange(S)
        fill([("feature", s) for s in range(S)])
    else:  # visit features in order of their influence on the logits so far (circuit-tracer's loop)
        visited = np.zeros((S,), bool)
        while visited.sum() < max_feature_nodes:
            rows = np.concatenate([np.nonzero(visited)[0], np.arange(logit_row0, logit_row0 + K)])
            w = np.zeros(full.shape[0])
            w[logit_row0:] = logit_probs
            infl = _partial_influence(full, rows, w)[:S]
            infl[visited] = -np.inf
            take = min(update_interval * batch_size, max_feature_nodes - int(visited.sum()))
            order = np.argsort(-infl, kind="stable")[:take]
            fill([("feature", int(s)) for s in order])
            visited[order] = True
        selected = np.nonzero(visited)[0]
    keep = np.concatenate([selected, np.arange(S, full.shape[0])])
    adjacency = full[np.ix_(keep, keep)]
    def decode(ids):
        return [tokenizer.decode([int(t)]) if tokenizer is not None else str(int(t)) for t in ids]

    return Graph(tokens_t, n_layers, feats[selected], feat_act[selected], logit_ids, logit_probs, adjacency,
                 prompt=prompt, token_strings=decode(tokens_t), logit_strings=decode(logit_ids), n_active=S)


@dataclasses.dataclass(frozen=True)
class _Readout:
    """The readout function as a hashable static argument (its structure, not its arrays)."""

    fn: object = dataclasses.field(compare=False, hash=False)
    n_layers: int
    input_kind: str

    def __call__(self, *a):
        return self.fn(*a)


def _partial_influence(full, rows, w):
    """Influence on the logits through the rows computed so far (circuit-tracer's
    compute_partial_influences): the rest of the graph counts as having no inputs."""
    a = np.zeros_like(full, dtype=np.float64)
    a[rows] = full[rows]
    return influence(a, w)


# ------------------------------------------------------------------------------- influence / pruning
def normalize(a: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(a, np.float64))
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)


def influence(a: np.ndarray, w: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """w^T (A + A^2 + ...) with A the row-normalised |adjacency| (exact: the graph is a DAG)."""
    an = normalize(a)
    cur = w @ an
    total = cur.copy()
    for _ in range(max_iter):
        if not cur.any():
            return total
        cur = cur @ an
        total += cur
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the adjacency is not a DAG")


def _threshold(scores: np.ndarray, fraction: float) -> float:
    s = np.sort(np.asarray(scores, np.float64).ravel())[::-1]
    total = s.sum()
    cum = np.cumsum(s) / total if total > 0 else np.ones_like(s)
    return float(s[min(int(np.searchsorted(cum, fraction)), len(s) - 1)])


def prune(g: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    """(node_mask, edge_mask, cumulative_scores) as circuit-tracer's prune_graph: keep the nodes
    holding node_threshold of the logits' influence (tokens and logits always), the edges holding
    edge_threshold of the pruned graph's edge influence, then drop features and errors left
    without outgoing edges and features without incoming ones, until nothing changes."""
    for t in (node_threshold, edge_threshold):
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"pruning thresholds must be in [0, 1], got {t}")
    a, w = g.adjacency.astype(np.float64), g.logit_weights()
    n_tok_logit = g.n_pos + len(g.logit_ids)
    n_feat = len(g.features)
    node_infl = influence(a, w)
    node_mask = node_infl >= _threshold(node_infl, node_threshold)
    node_mask[-n_tok_logit:] = True
    pruned = a.copy()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    pn = normalize(pruned)
    edge_scores = pn * (influence(pruned, w) + w)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores, edge_threshold)
    while True:
        old = node_mask.copy()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_tok_logit] &= edge_mask[:, :-n_tok_logit].any(0)
        node_mask[:n_feat] &= edge_mask[:n_feat].any(1)
        if (node_mask == old).all():
            break
    edge_mask[~node_mask] = False
    edge_mask[:, ~node_mask] = False
    order = np.argsort(-node_infl, kind="stable")
    cum = np.zeros_like(node_infl)
    total = node_infl.sum()
    cum[order] = np.cumsum(node_infl[order]) / (total if total > 0 else 1.0)
    return node_mask, edge_mask, cum


def scores(g: Graph) -> dict[str, float]:
    """circuit-tracer's replacement score (the tokens' share of token+error influence on the
    logits) and completeness score (the influence-weighted share of inputs not from errors)."""
    a, w = g.adjacency.astype(np.float64), g.logit_weights()
    an = normalize(a)
    infl = influence(a, w)
    err = slice(g.error_start, g.token_start)
    tok = slice(g.token_start, g.logit_start)
    t_inf, e_inf = infl[tok].sum(), infl[err].sum()
    out = infl + w
    return {"replacement": float(t_inf / max(t_inf + e_inf, 1e-30)),
            "completeness": float(((1 - an[:, err].sum(-1)) * out).sum() / out.sum())}


# ------------------------------------------------------------------------------- circuit-tracer JSON
def _cantor(a: int, b: int) -> int:
    return (a + b) * (a + b + 1) // 2 + b


def to_json(g: Graph, slug: str, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """The graph in circuit-tracer's frontend schema (metadata, qParams, nodes, links), pruned.
    Its node ids are circuit-tracer's, which can collide (feature `0_f_p` of layer 0 and the
    error node of layer f at position p); graph.npz keeps the unambiguous adjacency."""
    node_mask, edge_mask, cum = prune(g, node_threshold, edge_threshold)
    T, L = g.n_pos, g.n_layers
    nodes, ids = [], {}
    for i in np.nonzero(node_mask)[0]:
        i = int(i)
        base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
                "influence": float(cum[i]), "activation": None}
        if i < g.error_start:
            layer, pos, f = (int(v) for v in g.features[i])
            node = {**base, "node_id": f"{layer}_{f}_{pos}", "feature": _cantor(layer, f), "layer": str(layer),
                    "ctx_idx": pos, "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{f}-0",
                    "activation": float(g.activations[i])}
        elif i < g.token_start:
            layer, pos = divmod(i - g.error_start, T)
            node = {**base, "node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
        elif i < g.logit_start:
            pos = i - g.token_start
            tok = int(g.tokens[pos])
            node = {**base, "node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                    "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}", "clerp": g.token_strings[pos]}
        else:
            k = i - g.logit_start
            v, p = int(g.logit_ids[k]), float(g.logit_probs[k])
            text = g.logit_strings[k] if k < len(g.logit_strings) else str(v)
            node = {**base, "node_id": f"{L + 1}_{v}_{T - 1}", "feature": v, "layer": str(L + 1), "ctx_idx": T - 1,
                    "feature_type": "logit", "jsNodeId": f"L_{v}-{T - 1}", "token_prob": p,
                    "is_target_logit": k == 0, "clerp": f'Output "{text}" (p={p:.3f})', "influence": None}
        ids[i] = node["node_id"]
        nodes.append(node)
    links = []
    for t, s in zip(*np.nonzero(edge_mask)):
        if int(t) in ids and int(s) in ids:
            links.append({"source": ids[int(s)], "target": ids[int(t)], "weight": float(g.adjacency[t, s])})
    # nodes with no kept edge are dropped, except tokens and logits (circuit-tracer's build_model)
    used = {x["source"] for x in links} | {x["target"] for x in links}
    nodes = [n for n in nodes if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": g.scan, "transcoder_list": [], "prompt_tokens": list(g.token_strings),
            "prompt": g.prompt, "node_threshold": node_threshold, "schema_version": 1}
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def write(g: Graph, out_dir: str, slug: str = "graph", node_threshold: float = 0.8,
          edge_threshold: float = 0.98, settings: dict | None = None) -> dict:
    """{out_dir}/{slug}.json (circuit-tracer's schema), graph-metadata.json, graph.npz (the full
    adjacency) and summary.json (scores, sizes, the top path); written atomically."""
    from jaxsae.atomic import atomic_write_bytes, atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    data = to_json(g, slug, node_threshold, edge_threshold)
    atomic_write_text(os.path.join(out_dir, f"{slug}.json"), json.dumps(data))
    atomic_write_text(os.path.join(out_dir, "graph-metadata.json"), json.dumps({"graphs": [data["metadata"]]}))
    atomic_write_bytes(os.path.join(out_dir, "graph.npz"), lambda f: np.savez(
        f, adjacency=g.adjacency, features=g.features, activations=g.activations, tokens=g.tokens,
        logit_ids=g.logit_ids, logit_probs=g.logit_probs, n_layers=g.n_layers))
    summary = {"slug": slug, "prompt": g.prompt, **scores(g), "n_active_features": g.n_active,
               "n_feature_nodes": len(g.features), "n_logits": len(g.logit_ids),
               "kept_nodes": len(data["nodes"]), "kept_links": len(data["links"]), "top_path": top_path(g, data),
               "top_feature_path": top_path(g, data, through_features=True),
               "logits": [[t, round(float(p), 4)] for t, p in zip(g.logit_strings, g.logit_probs)],
               "settings": settings or {}}
    from jaxsae.report.graph import render

    atomic_write_text(os.path.join(out_dir, "graph.html"), render(data, summary))
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2))  # last: marks it done
    return summary


def top_path(g: Graph, data: dict, through_features: bool = False) -> list[str]:
    """From the top logit back towards a token, following the strongest kept incoming edge (with
    through_features, the strongest from a feature or token: error nodes have no inputs, so the
    plain path stops at the first error it meets)."""
    kinds = {n["node_id"]: n["feature_type"] for n in data["nodes"]}
    incoming: dict[str, list] = {}
    for link in data["links"]:
        if through_features and kinds.get(link["source"]) == "mlp reconstruction error":
            continue
        incoming.setdefault(link["target"], []).append(link)
    logit = next((n["node_id"] for n in data["nodes"] if n.get("is_target_logit")), None)
    path, node = [], logit
    while node is not None and len(path) < 4 * g.n_layers + 4:
        path.append(node)
        ins = incoming.get(node, [])
        node = max(ins, key=lambda link: link["weight"])["source"] if ins else None
    return path
