"""RAVEL-lite: offline facts and prompts (the entity's last token located), SAEBench's completion
check, the intervention's invariances (mask off with an exact dictionary changes nothing; mask on
equals patching in the source's activation), the MDBM learning the right mask where the answer is
known (swapping at the last position decides the next token), and the SAEBench-schema result."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import dictionaries as D
from jaxsae import generate, sites
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import ravel

SITE = "blocks.1.hook_resid_post"  # the last block of the 2-layer model: the next token reads it directly


def _exact_sae(d):
    eye = np.eye(d, dtype=np.float32)
    spec = D.build("relu", d_in=d, d_sae=2 * d)
    return SAE(spec, {"W_enc": jnp.asarray(np.concatenate([eye, -eye], 1)), "b_enc": jnp.zeros(2 * d),
                      "W_dec": jnp.asarray(np.concatenate([eye, -eye], 0)), "b_dec": jnp.zeros(d)})


def test_facts_prompts_and_completion_check(tiny_lm_tok):
    _, tok = tiny_lm_tok
    countries = ravel.facts("country", 300)
    assert countries["France"] == {"Capital": "Paris", "Continent": "Europe", "Language": "French"}
    assert countries["Japan"]["Language"] == "Japanese"
    cities = ravel.facts("city", 200)
    assert len(cities) == 200 and all(set(v) == {"Country", "Continent", "Language"} for v in cities.values())
    prompts = ravel.build_prompts("country", {"France": countries["France"]}, tok)
    assert {p.attribute for p in prompts} == {"Capital", "Continent", "Language"}
    for p in prompts:
        head = p.text[: p.text.index("France") + len("France")]
        assert tok.decode(p.tokens[1 : p.entity_pos + 1]) == head
    assert ravel.matches("France", " France, a") and ravel.matches("United States", " United")
    assert not ravel.matches("France", " Germany") and not ravel.matches("France", "")
    with pytest.raises(ValueError, match="unknown entity type"):
        ravel.RavelConfig(entity_types=("planet",)).validate()


def _prompt(tokens):
    return ravel.Prompt("e", "A", "", list(tokens), len(tokens) - 1, "")


def test_intervention_off_is_identity_and_on_is_a_patch(tiny_lm_tok):
    lm, _ = tiny_lm_tok
    sae = _exact_sae(32)
    rng = np.random.default_rng(0)
    base = rng.integers(1, 300, size=(3, 6)).astype(np.int32)
    source = rng.integers(1, 300, size=(3, 6)).astype(np.int32)
    pos = np.array([2, 4, 3])
    capture = sites.capture_fn(lm, [SITE])
    src = np.asarray(capture(jnp.asarray(source))[SITE])[np.arange(3), pos]
    clean = np.asarray(lm(base))
    for hard_b, expect in ((-1.0, None), (1.0, src)):
        payload = {"sae": sae, "b": jnp.full((64,), hard_b), "temp": jnp.float32(1.0), "src": jnp.asarray(src),
                   "pos": jnp.asarray(pos)}
        got = np.asarray(sites.splice(lm, SITE, ravel._Swap(True, False), payload)(base))
        if expect is None:
            np.testing.assert_allclose(got, clean, atol=1e-4)
        else:
            def patch(x, p):
                return x.at[jnp.arange(3), p["pos"]].set(p["src"])
            want = np.asarray(sites.splice(lm, SITE, patch, {"pos": jnp.asarray(pos), "src": jnp.asarray(src)})(base))
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_mdbm_learns_the_mask_where_the_answer_is_known(tiny_lm_tok):
    lm, tok = tiny_lm_tok
    sae = _exact_sae(32)
    cfg = ravel.RavelConfig(n_generated_tokens=1, llm_batch_size=8, num_epochs=20, learning_rate=0.1)
    rng = np.random.default_rng(1)
    prompts = [_prompt([tok.bos_id, *rng.integers(1, 300, size=4).tolist()]) for _ in range(96)]
    for p, ids in zip(prompts, ravel.complete(lm, prompts, tok, cfg)):
        p.first_token, p.label = ids[0], tok.decode(ids)
    pairs = [(b, s) for b, s in zip(prompts[::2], prompts[1::2])
             if b.label.strip() and s.label.strip()  # a blank label never matches
             and not ravel.matches(s.label, b.label) and not ravel.matches(b.label, s.label)]  # prefixes match
    assert len(pairs) >= 16
    cause = [(b, s, s.label, s.first_token, "cause") for b, s in pairs]
    iso = [(b, s, b.label, b.first_token, "isolation") for b, s in pairs]
    # swapping every latent at the last position hands the source's next token to the base (the
    # ideal mask scores ~1; no swap scores 0; a random half of the latents far less than 1); the
    # cause-trained mask moves most answers, the isolation-trained one stays off
    full = ravel.score_pairs(lm, sae, SITE, cause, np.ones(64), tok, cfg)["cause_score"]
    none = ravel.score_pairs(lm, sae, SITE, cause, -np.ones(64), tok, cfg)["cause_score"]
    half = ravel.score_pairs(lm, sae, SITE, cause, np.random.default_rng(0).normal(size=64), tok, cfg)["cause_score"]
    assert full >= 0.9 and none == 0.0, (full, none)
    b_cause = ravel.train_mask(lm, sae, SITE, cause, cfg)
    got = ravel.score_pairs(lm, sae, SITE, cause, b_cause, tok, cfg)
    assert got["cause_score"] >= 0.5 and got["cause_score"] >= half + 0.15, (got, half)
    assert got["n_cause_pairs"] == len(cause)
    b_iso = ravel.train_mask(lm, sae, SITE, iso, cfg)
    assert (b_iso > 0).mean() < (b_cause > 0).mean() - 0.3, ((b_iso > 0).mean(), (b_cause > 0).mean())
    kept = ravel.score_pairs(lm, sae, SITE, iso, b_iso, tok, cfg)["isolation_score"]
    moved = ravel.score_pairs(lm, sae, SITE, iso, b_cause, tok, cfg)["isolation_score"]
    assert kept >= moved + 0.3, (kept, moved)  # each mask does what its pairs asked


def test_result_schema_and_not_scored_path(tiny_lm_tok):
    from sae_bench.evals.ravel.eval_output import RAVELEvalOutput

    lm, tok = tiny_lm_tok
    cfg = ravel.RavelConfig(entity_types=("country",), candidate_entities=20, top_n_entities=20,
                            num_pairs_per_attribute=8, llm_batch_size=8)
    r = ravel.run(lm, _exact_sae(32), SITE, tok, cfg, progress=False)
    RAVELEvalOutput(**r)
    # a random tiny model knows no capitals: the result says it could not score, with -1 metrics
    assert r["eval_result_metrics"]["ravel"]["disentanglement_score"] == -1 and "not_scored" in r["eval_config"]
    assert all(d["scored"] is False for d in r["eval_result_details"])
    assert "pair_kind" in r["eval_config"]["jaxsae"]["differences_from_saebench"]
    # left padding is what the filter generates with: a padded batch equals its rows alone
    rows = [[tok.bos_id, 5, 6], [tok.bos_id, 7, 8, 9, 10]]
    tokens, _, pad = generate.left_pad(rows)
    both = np.asarray(generate.greedy(lm, tokens, 2, pad_id=pad))
    np.testing.assert_array_equal(both[0], np.asarray(generate.greedy(lm, np.asarray([rows[0]]), 2))[0])


def test_tail_gradient_equals_the_whole_model_gradient(tiny_lm_tok):
    """The MDBM at a residual site differentiates through the layers after the site only; the same
    loss and gradient as through the whole spliced model (the path other sites take)."""
    from penzai import pz

    lm, _ = tiny_lm_tok
    sae = _exact_sae(32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 300, size=(4, 6)).astype(np.int32)
    pos, last = jnp.asarray([1, 2, 3, 4]), jnp.asarray([5, 5, 5, 5])
    target = jnp.asarray(rng.integers(0, 300, 4), jnp.int32)
    src = jnp.asarray(rng.normal(size=(4, 32)), jnp.float32)
    b = jnp.asarray(rng.normal(size=64), jnp.float32)
    for site in ("blocks.0.hook_resid_post", SITE):
        slots, values = pz.unbind_variables(lm.model, freeze=True)
        whole = ravel._loss_grad(b, slots, tuple(values), sae, jnp.float32(0.5), src, pos, jnp.asarray(tokens),
                                 last, target, site, False)
        tail = sites.resume_fn(lm, site).tail
        t_slots, t_values = pz.unbind_variables(tail, freeze=True)
        x = sites.capture_fn(lm, [site])(jnp.asarray(tokens))[site]
        fast = ravel._tail_loss_grad(b, t_slots, tuple(t_values), sae, jnp.float32(0.5), x, src, pos, last, target,
                                     False)
        np.testing.assert_allclose(float(fast[0]), float(whole[0]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(fast[1]), np.asarray(whole[1]), rtol=1e-4, atol=1e-6)
