"""Attribution graphs: circuit-tracer's exactness tests (doubling a feature, an error or a token
under frozen attention, norms and MLPs moves every feature's pre-activation and the demeaned
logits by exactly the adjacency column) on tiny random models of several families with random
per-layer transcoders and a random CLT; the frozen replacement model equals the model on the
prompt; pruning, influence and scores equal circuit-tracer's own functions on our adjacency; the
graph JSON validates against circuit-tracer's schema and equals what its builder writes; the
graph is the same on one device and split over an 8-device mesh."""

import importlib
import json

import jax
import numpy as np
import pytest
from tiny_models import CASES, save_tiny

from jaxsae import models, sharding
from jaxsae.causal import attribution_graph as ag
from jaxsae.causal import replacement as rp
from jaxsae.dictionaries import registry
from jaxsae.dictionaries.bound import SAE

D, F = 32, 64
TOKENS = np.array([1, 5, 9, 3, 7, 2, 8, 4])


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    out = {}
    for case in ("llama_gqa", "gemma2_softcap_local_global", "pythia_parallel_partial_rotary", "gpt2_learned_positions"):
        kind, extra = CASES[case]
        d = tmp_path_factory.mktemp(case)
        if kind == "gemma2":
            extra = {**extra, "final_logit_softcapping": None}  # the logits are then affine in the residual
        save_tiny(d, kind, **extra)
        out[case] = models.load(str(d))
    return out


def _plts(seed, n_layers=2, topk=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_layers):
        if topk:
            spec = registry.build("transcoder", activation="topk", d_in=D, d_sae=F, d_out=D, k=6)
        else:
            spec = registry.build("transcoder", activation="jumprelu", d_in=D, d_sae=F, d_out=D)
        p = {"W_enc": rng.normal(0, 1, (D, F)), "b_enc": rng.normal(0, 0.5, F), "W_dec": rng.normal(0, 0.3, (F, D)),
             "b_dec": rng.normal(0, 0.1, D)}
        if not topk:
            p["log_threshold"] = np.log(rng.uniform(0.5, 2.0, F))
        out.append(SAE(spec, {k: np.asarray(v, np.float32) for k, v in p.items()}))
    return out


def _clt(seed, n_layers=2):
    rng = np.random.default_rng(seed)
    spec = registry.build("clt", d_in=D, d_sae=F, d_out=D, n_layers=n_layers, activation="jumprelu")
    p = {"W_enc": rng.normal(0, 1, (n_layers, D, F)), "b_enc": rng.normal(0, 0.5, (n_layers, F)),
         "b_dec": rng.normal(0, 0.1, (n_layers, D)), "log_threshold": np.log(rng.uniform(0.5, 2.0, (n_layers, F)))}
    for layer in range(n_layers):
        p[f"W_dec_{layer}"] = rng.normal(0, 0.3, (F, n_layers - layer, D))
    return SAE(spec, {k: np.asarray(v, np.float32) for k, v in p.items()})


def _check_exact(lm, transcoders, g):
    """circuit-tracer's verify_feature_edges and verify_token_and_error_edges, run forward through
    the frozen replacement model with the source doubled."""
    tc = ag._Transcoders(transcoders, g.n_layers)
    rep = rp.build(lm, g.tokens, g.n_layers)
    f = jax.jit(rp.readout_fn(rep))
    call = lambda deltas: f(rep.slots, rep.values, rep.tokens, rp.consts(rep), deltas)  # noqa: E731
    base_in, base_lg = call(rp.zero_deltas(rep))
    feats = g.features

    def pre(inputs):
        return np.asarray(tc.pre_and_acts(inputs)[0])[feats[:, 0], feats[:, 1], feats[:, 2]]

    def demeaned(lg):
        lg = np.asarray(lg, np.float64)
        return lg[g.logit_ids] - lg.mean()

    p0, l0 = pre(base_in), demeaned(base_lg)
    S = len(feats)
    acts = tc.pre_and_acts(rep.inputs_ltd)[1].at[:, :1].set(0.0)
    errors = np.asarray(rep.mlp_out_ltd - tc.reconstruct(acts))
    cols = [("feature", s) for s in range(S)]
    cols += [("error", (layer, pos)) for layer in range(g.n_layers) for pos in range(1, g.n_pos)]
    cols += [("token", pos) for pos in range(1, g.n_pos)]
    for kind, what in cols:
        dl = rp.zero_deltas(rep)
        if kind == "feature":
            layer, pos, lat = feats[what]
            w = np.asarray(tc.writes(int(layer), np.array([lat])))[0] * g.activations[what]
            dl["mlp"] = dl["mlp"].at[:, pos].add(w)
            col = what
        elif kind == "error":
            layer, pos = what
            dl["mlp"] = dl["mlp"].at[layer, pos].add(errors[layer, pos])
            col = g.error_start + layer * g.n_pos + pos
        else:
            dl["embed"] = dl["embed"].at[what].add(rep.embed_td[what])
            col = g.token_start + what
        ins, lg = call(dl)
        np.testing.assert_allclose(pre(ins) - p0, g.adjacency[:S, col], atol=5e-4, rtol=1e-4, err_msg=f"{kind} {what}")
        np.testing.assert_allclose(demeaned(lg) - l0, g.adjacency[g.logit_start:, col], atol=1e-4, rtol=1e-3,
                                   err_msg=f"{kind} {what} (logits)")


@pytest.mark.parametrize("case", ["llama_gqa", "gemma2_softcap_local_global", "pythia_parallel_partial_rotary",
                                  "gpt2_learned_positions"])
def test_doubling_a_node_moves_every_target_by_its_adjacency_column(family_models, case):
    lm = family_models[case]
    for transcoders in (_plts(0), _clt(1)):
        g = ag.attribute(lm, TOKENS, transcoders, batch_size=16)
        assert len(g.features) > 20 and np.abs(g.adjacency[:len(g.features), :len(g.features)]).max() > 0
        # nothing flows backwards in time or from a layer to an earlier one
        later = (g.features[:, None, 1] < g.features[None, :, 1]) | (g.features[:, None, 0] < g.features[None, :, 0])
        assert not np.any(g.adjacency[: len(g.features), : len(g.features)][later])
        _check_exact(lm, transcoders, g)


def test_topk_transcoders_and_the_frozen_model_equal_the_model(family_models):
    lm = family_models["llama_gqa"]
    rep = rp.build(lm, TOKENS, 2)
    inputs, logits = jax.jit(rp.readout_fn(rep))(rep.slots, rep.values, rep.tokens, rp.consts(rep), rp.zero_deltas(rep))
    from jaxsae import sites

    want_logits, cache = sites.run_with_cache(lm, TOKENS[None], [f"blocks.{i}.ln2.hook_normalized" for i in range(2)])
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(want_logits[0, -1]))
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(inputs[i]), np.asarray(cache[f"blocks.{i}.ln2.hook_normalized"][0]))
    tcs = _plts(2, topk=True)
    g = ag.attribute(lm, TOKENS, tcs, batch_size=16)
    assert (np.bincount(g.features[:, 0] * 100 + g.features[:, 1]) <= 6).all()  # k per layer and position
    _check_exact(lm, tcs, g)


def test_logit_targets_stop_at_the_cumulative_probability():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.04, 0.01]))
    ids, probs = ag.logit_targets(logits, max_n_logits=10, desired_logit_prob=0.95)
    assert list(ids) == [0, 1, 2] and np.isclose(probs.sum(), 0.95)
    ids, _ = ag.logit_targets(logits, max_n_logits=2)
    assert list(ids) == [0, 1]


def test_pruning_influence_and_scores_equal_circuit_tracers(family_models, tmp_path):
    import torch
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.frontend.graph_models import Model
    from circuit_tracer.graph import Graph, compute_graph_scores, prune_graph
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

    # the package re-exports a function under the module's name: fetch the module itself
    cgf = importlib.import_module("circuit_tracer.utils.create_graph_files")

    g = ag.attribute(family_models["llama_gqa"], TOKENS, _clt(3), batch_size=16)
    cfg = UnifiedConfig(n_layers=2, d_model=D, d_head=8, n_heads=4, d_mlp=48, d_vocab=97, tokenizer_name="none",
                        model_name="tiny", original_architecture="LlamaForCausalLM")
    theirs = Graph(input_string="", input_tokens=torch.tensor(g.tokens), active_features=torch.tensor(g.features),
                   adjacency_matrix=torch.tensor(g.adjacency), cfg=cfg,
                   selected_features=torch.arange(len(g.features)), activation_values=torch.tensor(g.activations),
                   logit_targets=[LogitTarget(str(int(v)), int(v)) for v in g.logit_ids],
                   logit_probabilities=torch.tensor(g.logit_probs, dtype=torch.float32), scan="jaxsae", vocab_size=97)
    node_mask, edge_mask, cum = ag.prune(g)
    t_node, t_edge, t_cum = prune_graph(theirs, 0.8, 0.98)
    np.testing.assert_array_equal(node_mask, t_node.numpy())
    np.testing.assert_array_equal(edge_mask & node_mask[:, None] & node_mask[None, :],
                                  t_edge.numpy() & t_node.numpy()[:, None] & t_node.numpy()[None, :])
    np.testing.assert_allclose(cum, t_cum.numpy(), rtol=1e-4, atol=1e-6)
    ours = ag.scores(g)
    rep_s, comp_s = compute_graph_scores(theirs)
    assert ours["replacement"] == pytest.approx(rep_s, rel=1e-4) and ours["completeness"] == pytest.approx(comp_s, rel=1e-4)
    assert 0 < ours["replacement"] < 1 and 0 < ours["completeness"] < 1

    # the JSON: valid under their schema, and the same nodes and links their builder makes
    data = ag.to_json(g, "tiny")
    Model.model_validate_json(json.dumps(data))

    class Tok:
        def decode(self, ids):
            ids = np.asarray(ids).reshape(-1)
            return str(int(ids[0]))

    nodes = cgf.create_nodes(theirs, t_node, Tok(), t_cum)
    used_nodes, used_edges = cgf.create_used_nodes_and_edges(theirs, nodes, t_edge)
    model = cgf.build_model(theirs, used_nodes, used_edges, "tiny", "jaxsae", 0.8, Tok())
    want = json.loads(model.model_dump_json())
    # (their ids can collide: feature (layer 0, latent f, pos p) and error (layer f, pos p) are both "0_f_p")
    keys = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "is_target_logit")
    assert sorted(tuple(n[k] for k in keys) for n in data["nodes"]) == sorted(tuple(n[k] for k in keys)
                                                                               for n in want["nodes"])
    np.testing.assert_allclose(sorted(n["influence"] or 0 for n in data["nodes"]),
                               sorted(n["influence"] or 0 for n in want["nodes"]), rtol=1e-4, atol=1e-6)
    assert {(x["source"], x["target"]) for x in data["links"]} == {(x["source"], x["target"]) for x in want["links"]}
    summary = ag.write(g, str(tmp_path), slug="tiny")
    assert summary["top_path"][0].startswith("3_") and summary["top_path"][-1].startswith(("E_", "0_"))
    assert json.load(open(tmp_path / "graph-metadata.json"))["graphs"][0]["slug"] == "tiny"


def test_max_feature_nodes_visits_the_most_influential_first(family_models):
    lm = family_models["llama_gqa"]
    full = ag.attribute(lm, TOKENS, _clt(4), batch_size=16)
    part = ag.attribute(lm, TOKENS, _clt(4), batch_size=16, max_feature_nodes=32, update_interval=1)
    assert len(part.features) == 32 and part.n_active == len(full.features)
    index = {tuple(f): i for i, f in enumerate(full.features)}
    rows = [index[tuple(f)] for f in part.features]
    keep = rows + list(range(full.error_start, full.adjacency.shape[0]))
    # the rows it did compute equal the full graph's, restricted to the kept columns
    np.testing.assert_allclose(part.adjacency[: len(rows)], full.adjacency[np.ix_(rows, keep)], rtol=1e-5, atol=1e-5)
    infl = ag.influence(full.adjacency, full.logit_weights())[: len(full.features)]
    assert np.median(infl[rows]) > np.median(infl)  # the visited features are the influential ones


def test_a_graph_split_over_eight_devices_equals_one_device(family_models, n_devices):
    lm = family_models["pythia_parallel_partial_rotary"]
    one = ag.attribute(lm, TOKENS, _clt(5), batch_size=16)
    eight = ag.attribute(lm, TOKENS, _clt(5), batch_size=16, mesh=sharding.make_mesh(8, 1))
    np.testing.assert_allclose(one.adjacency, eight.adjacency, rtol=1e-5, atol=1e-4)


def test_attribute_binary_writes_the_graph_page_and_scores(tmp_path):
    """`experiments.attribute` on a tiny Llama (real BPE tokenizer) with a random CLT exported in
    circuit-tracer's layout: graph JSON (valid under circuit-tracer's schema), HTML, summary; a
    rerun reuses it; a directory without transcoders is one clear error line."""
    import os
    import subprocess
    import sys

    from tiny_lm import make_tiny_lm

    from jaxsae.interop import circuit_tracer as ct_io

    lm_dir = make_tiny_lm(str(tmp_path / "lm"), layers=2)
    ct_io.save(_clt(6), str(tmp_path / "clt"), {"in_sites": ["blocks.0.ln2.hook_normalized"],
                                                 "out_sites": ["blocks.0.hook_mlp_out"]})
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "experiments.attribute", "--config=configs/demo.py", f"--config.data.lm.path={lm_dir}",
           f"--transcoders={tmp_path / 'clt'}", "--prompt=To be or not to be", f"--out={tmp_path / 'g'}", "--batch=8"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(tmp_path / "g" / "summary.json"))
    assert 0 < summary["replacement"] <= 1 and 0 < summary["completeness"] <= 1 and summary["kept_links"] > 0
    data = json.load(open(tmp_path / "g" / "graph.json"))
    assert data["metadata"]["prompt"] == "To be or not to be" and len(data["metadata"]["prompt_tokens"]) >= 5
    from circuit_tracer.frontend.graph_models import Model

    Model.model_validate_json(json.dumps(data))
    page = (tmp_path / "g" / "graph.html").read_text()
    assert "<svg" in page and "replacement score" in page
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "already holds this graph" in again.stdout
    bad = subprocess.run(cmd[:5] + [f"--transcoders={tmp_path}", "--prompt=x", f"--out={tmp_path / 'b'}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "neither a circuit-tracer CLT" in bad.stderr, bad.stderr[-2000:]
