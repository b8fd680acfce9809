"""Feature absorption: the per-word metric on hand-built cases, SAEBench's feature-split rule, the
ground truth on a toy model with parent/child features (an L1 SAE trained there absorbs the parent
into its children's latents exactly when a child fires, and the metric finds it; the true
dictionary shows none), and the LM pipeline: prompts, the probe gate written into the JSON when it
fails, SAEBench's own output class, and resuming from cached activations."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsae import dictionaries as D
from jaxsae.dictionaries.base import LossContext
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import absorption as ab


def test_word_absorption_hand_built():
    w_dec = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0]])  # latent 0: the concept; 1: a child carrying it
    probe = np.array([1.0, 0, 0])
    x = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0.5, 0, 1]])
    lat = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.3, 0, 1]])
    frac, full = ab.word_absorption(lat, x, probe, w_dec, np.array([0]))
    assert frac[0] == 0.0 and not full[0]  # the main latent carries the whole projection
    assert frac[1] == 1.0 and full[1]  # main silent, latent 1 (cos 0.8) carries it all
    # main explains 0.3 of 0.5 and no aligned latent fires: not absorption
    assert frac[2] == 0.0 and not full[2]
    partial = ab.word_absorption(np.array([[0.2, 0.5, 0]]), np.array([[0.6, 0.3, 0]]), probe, w_dec, np.array([0]))[0]
    # main 0.2, absorber 0.5 * 0.8 = 0.4 (>= 0.4 * 0.6), unaccounted 0.4: fraction 0.4 / (0.4 + 0.2)
    assert partial[0] == pytest.approx(2 / 3)


def test_main_latents_grow_while_f1_jumps():
    feats = [np.arange(k) for k in range(1, 6)]
    assert ab.main_latents([0.5, 0.7, 0.72, 0.9, 0.95], feats, 0.03).tolist() == [0, 1]
    assert ab.main_latents([0.5, 0.51], feats, 0.03).tolist() == [0]
    assert ab.f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)


P, C, B, DIM = 4, 2, 8, 32  # parents (the "letters"), children per parent, background features, width
NF = P + P * C + B
DIRS = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0][:, :NF].T  # orthonormal [NF, DIM]


def _toy(n: int, seed: int):
    """Rows with exactly one parent active (its class) and each of its children with prob 0.4."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, P, n)
    coef = np.zeros((n, NF))
    coef[np.arange(n), cls] = np.abs(rng.normal(1, 0.1, n))
    child_on = np.zeros(n, bool)
    for j in range(C):
        on = rng.random(n) < 0.4
        coef[np.nonzero(on)[0], (P + cls * C + j)[on]] = np.abs(rng.normal(1, 0.1, on.sum()))
        child_on |= on
    coef[:, P + P * C:] = (rng.random((n, B)) < 0.05) * np.abs(rng.normal(1, 0.1, (n, B)))
    return (coef @ DIRS).astype(np.float32), cls, child_on


def _train_l1_sae(x, steps=3000, coef=0.1):
    spec = D.build("relu", d_in=DIM, d_sae=NF, sparsity_coefficient=coef)
    params = spec.init(jax.random.key(0))
    opt = optax.adam(3e-3)
    state = opt.init(params)
    ctx = LossContext(jnp.float32(1.0), jnp.zeros(NF, bool))

    @jax.jit
    def step(params, state, xb):
        g = jax.grad(lambda p: spec.loss(p, xb, xb, ctx).loss)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    xj = jnp.asarray(x)
    for i in range(steps):
        s = (i * 512) % (len(x) - 512)
        params, state = step(params, state, xj[s : s + 512])
    return SAE(spec, params)


def test_absorption_on_toy_parent_child_features():
    x, cls, _ = _toy(40000, 1)
    xt, ct, child_t = _toy(4000, 2)
    cfg = ab.AbsorptionConfig(min_feats_for_eval=P, max_k_value=4)
    names = [f"p{i}" for i in range(P)]
    trained = _train_l1_sae(x)
    spec = D.build("relu", d_in=DIM, d_sae=NF)
    truth = SAE(spec, {"W_enc": jnp.asarray(DIRS.T, jnp.float32), "b_enc": jnp.zeros(NF),
                       "W_dec": jnp.asarray(DIRS, jnp.float32), "b_dec": jnp.zeros(DIM)})
    out = {name: ab.score(x[:8000], cls[:8000], xt, ct, sae, cfg, names) for name, sae in
           (("trained", trained), ("truth", truth))}
    assert out["truth"]["gate"]["passed"] and out["truth"]["metrics"]["mean_absorption_fraction_score"] < 0.02
    m = out["trained"]["metrics"]
    assert m["mean_absorption_fraction_score"] > 0.1, m  # measurable absorption, found
    # ... and it is where the ground truth puts it: on rows where a child fires, the latent closest to
    # the parent's direction carries less of the parent (it is absorbed) and the fraction rises;
    # without a child, nothing is absorbed
    lat = np.asarray(trained.encode(jnp.asarray(xt)))
    w_dec = np.asarray(trained.params["W_dec"])
    for det in out["trained"]["details"]:
        i = int(det["first_letter"][1:])
        rows = ct == i
        frac, _ = ab.word_absorption(lat[rows], xt[rows], DIRS[i], np.asarray(trained.params["W_dec"]),
                                     np.array(det["main_latents"]))
        assert frac[~child_t[rows]].mean() < 0.05, det
        assert frac[child_t[rows]].mean() > frac[~child_t[rows]].mean() + 0.1, det
        parent = int(np.argmax(w_dec @ DIRS[i] / np.linalg.norm(w_dec, axis=1)))
        carried = lat[rows][:, parent] * np.linalg.norm(w_dec[parent]) / (xt[rows] @ DIRS[i])  # share of the true coefficient
        assert carried[child_t[rows]].mean() < carried[~child_t[rows]].mean() - 0.1, det


def _pos(tok) -> int:
    """The word's position from the end for this tokenizer (-6 on SmolLM2's and Gemma's, SAEBench's value)."""
    return -(len(tok.encode(" has the first letter:")) + 1)


def test_prompts_read_the_word_token(tiny_lm_tok):
    _, tok = tiny_lm_tok
    cfg = ab.AbsorptionConfig(max_words=60, max_icl_examples=3, prompt_token_pos=_pos(tok))
    data = ab.dataset(tok, cfg)
    row = data["test"]["tokens"][0]
    word = data["test"]["words"][0]
    assert tok.decode(row[_pos(tok):]) == f"{word} has the first letter:"
    assert tok.decode(row[1:]).startswith("\n") and tok.decode(row[1:]).count("has the first letter:") == 4
    assert data["test"]["letters"][0] == ab.LETTERS.index(word.strip()[0].lower())
    assert len(data["train"]["words"]) + len(data["test"]["words"]) + data["dropped"] == 60


def test_lm_result_gate_saebench_schema_and_resume(tiny_lm_tok, tmp_path):
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput

    lm, tok = tiny_lm_tok
    spec = D.build("topk", d_in=32, d_sae=64, k=8)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    site = "blocks.1.hook_resid_post"
    cfg = ab.AbsorptionConfig(max_words=120, max_icl_examples=3, probe_num_epochs=5, k_sparse_probe_num_epochs=5,
                              prompt_token_pos=_pos(tok))
    r = ab.run(lm, sae, site, tok, cfg, cache_dir=str(tmp_path), progress=False)
    # a random 2-layer model has no first-letter probes: the JSON says it could not score
    assert not r["eval_config"]["gate"]["passed"] and "not measured" in r["eval_config"]["not_scored"]
    assert r["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] == -1
    assert "lower is better" in r["eval_config"]["score_direction"]
    AbsorptionEvalOutput(**r)
    cached = sorted(os.listdir(tmp_path))
    assert len(cached) == 2 and all(os.listdir(tmp_path / c) for c in cached)
    forced = ab.AbsorptionConfig(**{**cfg.__dict__, "min_GT_probe_f1": -1.0, "min_feats_for_eval": 1})
    r2 = ab.run(lm, sae, site, tok, forced, cache_dir=str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path)) == cached  # the same prompts: activations read back, not recomputed
    parsed = AbsorptionEvalOutput(**r2)
    assert r2["eval_config"]["gate"]["passed"] and parsed.eval_result_details
    assert 0 <= r2["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] <= 1
    with pytest.raises(ValueError, match="prompt_token_pos"):
        ab.AbsorptionConfig(prompt_token_pos=3).validate()
