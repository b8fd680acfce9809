"""SCR and TPP: the sets are built as SAEBench builds them (quadrants, biased pairs, disjoint splits),
the scores find a known answer on synthetic pooled activations (a dictionary whose latents separate
the concepts removes the spurious signal and hurts only its target probe; one whose latents mix
the concepts does not), ablation on pooled vectors equals per-token ablation with the error term,
and the results load in SAEBench's own output classes, sharing one forward with sparse probing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import dictionaries as D
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import pooled as pooled_lib
from jaxsae.evals import probe_datasets, probes
from jaxsae.evals import scr_tpp as st
from jaxsae.evals import sparse_probing as sp


def _rotation_sae(q):
    """f = [relu(x Q), relu(-x Q)], W_dec = [Q^T; -Q^T]: exact for orthogonal Q (Q = I: one latent pair per axis)."""
    d = q.shape[0]
    spec = D.build("relu", d_in=d, d_sae=2 * d)
    params = {"W_enc": jnp.asarray(np.concatenate([q, -q], 1), jnp.float32), "b_enc": jnp.zeros(2 * d),
              "W_dec": jnp.asarray(np.concatenate([q.T, -q.T], 0), jnp.float32), "b_dec": jnp.zeros(d)}
    return SAE(spec, {k: params[k] for k in spec.init(jax.random.key(0))})


class _FakePool:
    """pool(texts) over a table of synthetic pooled activations; latents from the given dictionary."""

    def __init__(self, table, sae):
        self.table, self.sae = table, sae

    def __call__(self, texts):
        x = np.stack([self.table[t] for t in texts]).astype(np.float32)
        return x, np.asarray(self.sae.encode(jnp.asarray(x)))


def _crossed(n_per_quadrant: int, d: int, seed: int):
    """Rows with concept 1 on axis 0 and concept 2 on axis 1 (+-1 each), Gaussian noise elsewhere."""
    rng = np.random.default_rng(seed)
    table, quadrants = {}, {}
    for key, (a, b) in {"pp": (1, 1), "np": (-1, 1), "pn": (1, -1), "nn": (-1, -1)}.items():
        names = []
        for i in range(n_per_quadrant):
            v = rng.normal(0, 0.6, d)
            v[0] += a
            v[1] += b
            name = f"{seed}-{key}-{i}"
            table[name] = v
            names.append(name)
        quadrants[key] = names
    q = n_per_quadrant // 2
    pp, np_, pn, nn = quadrants["pp"], quadrants["np"], quadrants["pn"], quadrants["nn"]
    sets = {"concept2": st.ProbeSet(pp[:q] + np_[:q], pn[:q] + nn[:q]),
            "concept1": st.ProbeSet(pp[:q] + pn[:q], np_[:q] + nn[:q]),
            "biased": st.ProbeSet(pp[: 2 * q], nn[: 2 * q])}
    return table, sets


CFG = st.ScrTppConfig(train_size=400, test_size=200)


def test_scr_finds_a_dictionary_that_separates_the_concepts():
    d = 6
    table_tr, train = _crossed(200, d, 0)
    table_te, test = _crossed(100, d, 1)
    table = {**table_tr, **table_te}
    angle = np.pi / 4  # latents along (e0 +- e1) / sqrt(2): every latent carries both concepts
    mix = np.eye(d)
    mix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    scores = {}
    for name, q in (("separating", np.eye(d)), ("mixing", mix)):
        sae = _rotation_sae(q)
        scores[name] = st.scr_scores(_FakePool(table, sae), np.asarray(sae.params["W_dec"]), train, test, CFG, (2, 5))
    good, bad = scores["separating"], scores["mixing"]
    assert good["biased_probe_accuracy_dir1"] < good["llm_clean_accuracy_dir1"] - 0.05  # the bias is there
    assert good["scr_dir1_threshold_2"] > 0.8, good  # removing concept 2's two latents removes the bias
    assert good["scr_dir1_threshold_2"] > bad["scr_dir1_threshold_2"] + 0.3, (good, bad)
    assert good["latents_ablated_dir1_threshold_2"] == 2
    assert good["scr_dir1_threshold_500"] is None  # not asked for: written as null
    pick = 1 if good["biased_probe_accuracy_dir1"] <= good["biased_probe_accuracy_dir2"] else 2
    assert good["scr_metric_threshold_2"] == good[f"scr_dir{pick}_threshold_2"]


def test_tpp_intended_effect_only_with_a_separating_dictionary():
    d, classes = 6, ("a", "b", "c")
    rng = np.random.default_rng(0)
    table, train, test = {}, {}, {}
    rows = {c: [] for c in classes}
    for i, c in enumerate(classes):
        for j in range(300):
            v = rng.normal(0, 5.0, d)  # residual-stream scale: SAEBench's lr 1e-3 probe is tuned for it
            v[i] += 15.0  # class i: its own axis
            table[f"{c}{j}"] = v
            rows[c].append(f"{c}{j}")
    for c in classes:  # one-vs-rest: 100 positives, 50 from each other class
        others = [r for o in classes if o != c for r in rows[o]]
        tr_neg = [r for r in others if int(r[1:]) < 50]
        te_neg = [r for r in others if 200 <= int(r[1:]) < 250]
        train[c] = st.ProbeSet(rows[c][:100], tr_neg)
        test[c] = st.ProbeSet(rows[c][200:300], te_neg)
    sep = _rotation_sae(np.eye(d))
    blind_spec = D.build("relu", d_in=d, d_sae=6)  # latents on the noise axes 3..5 only: classes stay in the error
    e = np.eye(d)[:, 3:]
    blind = SAE(blind_spec, {"W_enc": jnp.asarray(np.concatenate([e, -e], 1), jnp.float32), "b_enc": jnp.zeros(6),
                             "W_dec": jnp.asarray(np.concatenate([e.T, -e.T], 0), jnp.float32), "b_dec": jnp.zeros(d)})
    cfg = st.ScrTppConfig(probe_epochs=200)  # the probe's bias moves <= lr per step: uncentred data need more
    out = {name: st.tpp_scores(_FakePool(table, sae), np.asarray(sae.params["W_dec"]), train, test, cfg, (1, 2))
           for name, sae in (("separating", sep), ("blind", blind))}
    good, per_class = out["separating"]
    bad, _ = out["blind"]
    assert min(c["llm_clean_accuracy"] for c in per_class.values()) > 0.9
    # class i's own latent goes first and hurts probe i much more than the others (which lean on axis i a little)
    assert good["tpp_threshold_2_intended_diff_only"] > good["tpp_threshold_2_unintended_diff_only"] + 0.1, good
    assert good["tpp_threshold_2_total_metric"] > 0.1, good
    assert abs(bad["tpp_threshold_2_total_metric"]) < 0.03, bad  # ablating what does not carry a class changes nothing
    assert set(per_class) == set(classes)


def test_pooled_ablation_equals_per_token_ablation_with_error_term():
    rng = np.random.default_rng(0)
    spec = D.build("topk", d_in=8, d_sae=32, k=4)
    sae = SAE(spec, spec.init(jax.random.key(1)))
    x_ntd = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask_nt = rng.random((3, 5)) > 0.3
    mask_nt[:, 0] = True
    drop = rng.random(32) > 0.7
    f = np.asarray(sae.encode(jnp.asarray(x_ntd)))
    x_hat = np.asarray(sae.decode(jnp.asarray(f)))
    x_abl = np.asarray(sae.decode(jnp.asarray(f * ~drop))) + (x_ntd - x_hat)  # per token, error kept
    m = mask_nt[..., None]
    want = (x_abl * m).sum(1) / m.sum(1)
    llm, lat = (x_ntd * m).sum(1) / m.sum(1), (f * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(pooled_lib.ablate(llm, lat, sae.params["W_dec"], drop), want, rtol=1e-5, atol=1e-5)


def test_top_n_takes_nonzero_effects_only():
    mask, chosen = st.top_n(np.array([0.0, 3.0, -1.0, 0.0, 2.0]), 4)
    assert chosen == 3 and mask.tolist() == [False, True, True, False, True]


def test_minibatch_probe_learns_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(0, 5.0, size=(400, 5)).astype(np.float32)  # residual-stream scale
    x[:, 2] += 20 * (y - 0.5)
    w, b = probes.fit_minibatch(x, y, seed=3)
    assert probes.accuracy(w, b, x, y) > 0.8 and abs(float(w[2])) == float(np.max(np.abs(w)))
    w2, b2 = probes.fit_minibatch(x, y, seed=3)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w2))
    w3, b3 = probes.fit_minibatch(x, y, seed=3, select_on=(x[:100], y[:100]))  # SAEBench's selection runs
    assert probes.accuracy(w3, b3, x[:100], y[:100]) >= probes.accuracy(w, b, x[:100], y[:100]) - 1e-9


def test_sets_follow_saebench_construction():
    cfg = st.ScrTppConfig(train_size=400, test_size=100)
    prompts, c1, c2 = probe_datasets.crossed_rows("movie_product")
    lab = dict(zip(prompts, zip(c1, c2)))
    train, test, info = st.scr_sets("movie_product", cfg)
    assert info == {"train_set_size": 400, "test_set_size": 100}
    for sets in (train, test):
        assert all(lab[t][1] for t in sets["concept2"].pos) and not any(lab[t][1] for t in sets["concept2"].neg)
        assert all(lab[t][0] for t in sets["concept1"].pos) and not any(lab[t][0] for t in sets["concept1"].neg)
        assert all(lab[t] == (True, True) for t in sets["biased"].pos)
        assert all(lab[t] == (False, False) for t in sets["biased"].neg)
        c2_pos = sets["concept2"].pos  # balanced over concept 1: half each
        assert sum(lab[t][0] for t in c2_pos) * 2 == len(c2_pos)
    seen_train = {t for s in train.values() for t in s.texts()}
    assert not seen_train & {t for s in test.values() for t in s.texts()}
    _, _, small = st.scr_sets("politician_gender", st.ScrTppConfig())  # 123-183 names per quadrant: capped
    assert small["train_set_size"] < 1600 and small["train_set_size"] % 4 == 0
    tr, te, tinfo = st.tpp_sets("news", st.ScrTppConfig(train_size=200, test_size=60))
    assert sorted(tr) == ["Entertainment", "Politics", "Sport", "Technology"] and tinfo["train_set_size"] == 200
    assert all(len(s.pos) == len(s.neg) == 100 for s in tr.values())
    with pytest.raises(ValueError, match="unknown SCR design"):
        st.ScrTppConfig(scr_designs=("bias_in_bios",)).validate()
    with pytest.raises(ValueError, match="probe_selection"):
        st.ScrTppConfig(probe_selection="best").validate()


def test_results_load_in_saebench_and_share_one_forward(tiny_lm_tok):
    from sae_bench.evals.scr_and_tpp.eval_output import ScrEvalOutput, TppEvalOutput

    lm, tok = tiny_lm_tok
    site = "blocks.1.hook_resid_post"
    spec = D.build("topk", d_in=32, d_sae=64, k=8)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    cfg = st.ScrTppConfig(scr_designs=("movie_product",), tpp_datasets=("country",), train_size=32, test_size=16,
                          context=16, n_values=(2, 10, 500), batch_prompts=8)
    pool = pooled_lib.Pooler(lm, sae, site, tok, 16, 8)
    scr = st.scr(lm, sae, site, tok, cfg, pooler=pool, progress=False)
    parsed = ScrEvalOutput(**scr)
    assert parsed.eval_type_id == "scr" and len(parsed.eval_result_details) == 1
    m = scr["eval_result_metrics"]["scr_metrics"]
    assert m["scr_dir1_threshold_500"] is None and m["scr_dir1_threshold_10"] is not None
    theirs = scr["eval_result_metrics"]["scr_metrics_saebench_probe_selection"]  # the fixed bug: both written
    assert set(theirs) == set(m) and not any(k.endswith("_saebench_probe_selection") for k in m)
    tpp = st.tpp(lm, sae, site, tok, cfg, pooler=pool, progress=False)
    assert TppEvalOutput(**tpp).eval_type_id == "tpp"
    assert set(tpp["eval_result_metrics"]["tpp_metrics_saebench_probe_selection"]) == set(
        tpp["eval_result_metrics"]["tpp_metrics"])
    assert set(tpp["eval_result_unstructured"]["country"]) == {"Australia", "India", "Italy", "United_Kingdom",
                                                               "United_States"}
    before = pool.forwards
    again = st.scr(lm, sae, site, tok, cfg, pooler=pool, progress=False)  # every prompt already pooled
    assert pool.forwards == before
    assert again["eval_result_details"] == scr["eval_result_details"]  # seeded
    for k in ("probe_selection", "ablation_pooling"):
        assert k in scr["eval_config"]["jaxsae"]["differences_from_saebench"]


def test_sparse_probing_on_any_labelled_text(tiny_lm_tok):
    lm, tok = tiny_lm_tok
    site = "blocks.1.hook_resid_post"
    rng = np.random.default_rng(0)
    words = ["the", "and", "of", "to", "in", "that", "is", "with"]
    marks = ["king", "queen", "lord"]
    texts, labels = [], []
    for i in range(120):
        c = i % 3
        body = list(rng.choice(words, 6))
        body.insert(int(rng.integers(0, 6)), marks[c])
        texts.append(" ".join(body))
        labels.append(marks[c])
    spec = D.build("relu", d_in=32, d_sae=64)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    pool = pooled_lib.Pooler(lm, sae, site, tok, 16, 8)
    out = sp.run(lm, sae, site, texts, labels, tokenizer=tok, k_values=(1, 5), context=16, pooler=pool)
    assert out["llm_test_accuracy"] > 0.8, out  # the marker token is in the mean
    assert out["sae_top_2_test_accuracy"] is None and 0 <= out["sae_top_1_test_accuracy"] <= 1
    forwards = pool.forwards
    binary = sp.run(lm, sae, site, texts[:80], [lab == "king" for lab in labels[:80]], tokenizer=tok, context=16,
                    pooler=pool)
    assert pool.forwards == forwards and set(binary) >= {"llm_test_accuracy", "sae_top_5_test_accuracy"}
    with pytest.raises(ValueError, match="one label per text"):
        sp.run(lm, sae, site, texts, labels[:3], tokenizer=tok)
    with pytest.raises(ValueError, match="one class"):
        sp.run(lm, sae, site, texts[:5], ["x"] * 5, tokenizer=tok)
