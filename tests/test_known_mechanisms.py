"""Known mechanisms, found by the causal toolkit: induction in a 2-layer attention-only model
trained here (a previous-token head in layer 0 feeding an induction head in layer 1 through its
keys), induction heads in the packaged SmolLM2, and where SmolLM2 recalls a country's capital."""

import jax
import numpy as np
import pytest
from scipy.stats import spearmanr

from jaxsae import causal, sites
from jaxsae.causal import facts
from jaxsae.causal import interventions as iv
from jaxsae.toy import induction


@pytest.fixture(scope="module")
def toy(induction_model):
    cfg, lm, log = induction_model
    clean = induction.prompts(cfg, jax.random.key(1), 8)
    other = induction.prompts(cfg, jax.random.key(2), 8)  # unrelated random blocks: resampling ablation
    return cfg, lm, log, clean, other


def test_attention_only_model_learns_induction_with_the_known_heads(toy):
    cfg, lm, log, clean, _ = toy
    n = cfg.period
    assert log["first_half_loss"] > 3.5 and log["second_half_loss"] < 0.1, log  # ln(63) = 4.14 is chance
    prev = causal.previous_token_scores(lm, clean)
    ind = causal.induction_scores(lm, clean, n)
    assert prev[0].max() > 0.6, prev  # a previous-token head in layer 0 (measured 0.84)
    assert ind[1].min() > 0.8 and ind[0].max() < 0.1, ind  # both layer-1 heads induct (measured 0.95, 0.97)
    _, cache = sites.run_with_cache(lm, clean, ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"])
    assert all(np.all(np.asarray(v) == 0) for v in cache.values())  # attention-only: MLPs add exactly zero


def test_knocking_out_the_circuit_destroys_in_context_copying(toy):
    cfg, lm, _, clean, _ = toy
    n = cfg.period
    prev_head = int(np.argmax(causal.previous_token_scores(lm, clean)[0]))

    def second_half_loss(m):
        return float(causal.loss(clean, n + 1)(m(clean)).mean())

    base = second_half_loss(lm)
    without_prev = second_half_loss(causal.knock_out_heads(lm, [(0, prev_head)]))
    without_other = second_half_loss(causal.knock_out_heads(lm, [(0, 1 - prev_head)]))
    without_induction = second_half_loss(causal.knock_out_heads(lm, [(1, 0), (1, 1)]))
    # measured: 0.03 -> 6.2 (previous-token head), 5.1 (both induction heads), 0.13 (other head)
    assert without_prev > base + 3 and without_induction > base + 3
    assert without_other < base + 0.5


def test_path_patching_finds_k_composition(toy):
    """Resample-ablating the previous-token head only along its path into layer 1's keys costs
    far more of the induction than along queries, and nothing along values."""
    cfg, lm, _, clean, other = toy
    prev_head = int(np.argmax(causal.previous_token_scores(lm, clean)[0]))
    metric = causal.next_token_logprob(clean, cfg.period + 1)
    drop = {}
    for kind in ("q", "k", "v"):
        kept = causal.path_patch(lm, clean, other, (0, prev_head), [(f"blocks.1.attn.hook_{kind}", None)], metric,
                                 direction="noise")
        drop[kind] = 1 - kept
    # measured: k 0.33, q 0.13, v 0.0004
    assert drop["k"] > 1.5 * drop["q"] and drop["k"] > 0.2, drop
    assert abs(drop["v"]) < 0.05, drop


def test_head_attribution_is_exact_in_the_last_layer_and_patching_locates_the_previous_token_head(toy):
    cfg, lm, _, clean, other = toy
    z = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    prev_head = int(np.argmax(causal.previous_token_scores(lm, clean)[0]))
    # with frozen norms and zero MLPs the logits are affine in layer 1's z: AtP = patching per head
    ld = causal.logit_diff(clean[:, -1], other[:, -1], position=-2)
    frozen = causal.freeze_norms(lm, other)
    eff = causal.patch(frozen, clean, other, z[1:], ld)
    atp = causal.attribution_patch(frozen, clean, other, z[1:], ld)
    np.testing.assert_allclose(atp[z[1]], eff[z[1]], atol=1e-4)
    metric = causal.next_token_logprob(clean, cfg.period + 1)
    noised = causal.patch(lm, clean, other, z, metric, positions="all", direction="noise")
    # the head whose loss costs most is the previous-token head (measured 0.40 of the effect kept)
    assert np.argmin(noised[z[0]]) == prev_head and noised[z[0]].min() < noised[z[1]].min()


@pytest.mark.slow
def test_smollm2_induction_heads(smollm2):
    """SmolLM2-135M on [BOS, r, r] (15 random tokens): the second repeat is predicted; heads with
    high induction scores stand out; knocking the top 5 out costs far more than 5 random heads;
    denoising each head (clean second half into a re-randomised one) and AtP rank heads alike and
    put the induction heads on top."""
    lm, tok = smollm2
    n, batch = 15, 2
    clean = causal.repeated_tokens(jax.random.key(0), batch, n, 49152, bos=tok.bos_id, low=1000)
    corrupt = clean.copy()
    corrupt[:, n + 1 :] = causal.repeated_tokens(jax.random.key(1), batch, n, 49152, low=1000)[:, :n]
    logits = lm(clean)
    first, second = (float(causal.loss(clean, 1, n)(logits).mean()), float(causal.loss(clean, n + 1)(logits).mean()))
    assert second < first - 2, (first, second)  # measured 15.5 -> 2.7 nats

    scores = causal.induction_scores(lm, clean, n)  # [30, 9]
    L, H = scores.shape
    order = np.argsort(-scores.ravel())
    top5 = [(int(i // H), int(i % H)) for i in order[:5]]
    assert scores.ravel()[order[:5]].min() > 0.4 and np.median(scores) < 0.05, scores  # measured 0.56..0.90, 0.015

    def second_half_loss(m):
        return float(causal.loss(clean, n + 1)(m(clean)).mean())

    rng = np.random.default_rng(0)
    random_rise = np.mean([second_half_loss(causal.knock_out_heads(lm, [(int(i // H), int(i % H)) for i in
                                                                        rng.choice(L * H, 5, replace=False)]))
                           for _ in range(3)]) - second
    top_rise = second_half_loss(causal.knock_out_heads(lm, top5)) - second
    assert top_rise > 3 and top_rise > 5 * max(random_rise, 0.1), (top_rise, random_rise)  # measured 7.2 vs 0.14

    z = [f"blocks.{i}.attn.hook_z" for i in range(L)]
    metric = causal.next_token_logprob(clean, n + 1)
    eff = np.stack([v for v in causal.patch(lm, clean, corrupt, z, metric, positions="all").values()])
    atp = np.stack([v for v in causal.attribution_patch(lm, clean, corrupt, z, metric, positions="all").values()])
    rho = spearmanr(eff.ravel(), atp.ravel()).correlation
    assert rho > 0.8, rho  # measured 0.94
    top_patch = set(np.argsort(-eff.ravel())[:10].tolist())
    top_atp = set(np.argsort(-atp.ravel())[:10].tolist())
    assert len(top_patch & set(order[:10].tolist())) >= 4  # the heads patching finds are induction heads
    assert len(top_patch & top_atp) >= 7  # measured 10 of 10


@pytest.mark.slow
def test_smollm2_factual_recall_moves_from_the_subject_to_the_last_token(smollm2):
    """"The capital of {country} is" on the countries SmolLM2 knows: denoising the subject's last
    token from another country's prompt switches the answer while the block input is patched at
    early and middle layers, and stops mattering once the attribute has moved to the last token
    (whose patching then takes over)."""
    lm, tok = smollm2
    known = facts.capital_facts(lm, tok, n=80)
    assert len(known) >= 30, len(known)  # measured 46 of 80
    clean, corrupt, good, bad, pos = facts.paired_batch(facts.length_matched_pairs(known, max_pairs=8))
    resid = [f"blocks.{i}.hook_resid_pre" for i in range(30)]
    ld = causal.logit_diff(good, bad)
    at_subject = np.asarray([v[0] for v in causal.patch(lm, clean, corrupt, resid, ld, positions=[pos]).values()])
    at_last = np.asarray([v[0] for v in causal.patch(lm, clean, corrupt, resid, ld, positions=[-1]).values()])
    # measured: subject 1.0 through layer 21, 0.96 at 23, 0.0 from 24; the last token the mirror image
    assert at_subject[:16].min() > 0.9 and at_subject[26:].max() < 0.2, at_subject
    assert at_last[:12].max() < 0.1 and at_last[26:].min() > 0.8, at_last
    site = "blocks.8.hook_resid_pre"
    _, cache = sites.run_with_cache(lm, clean, [site])
    mask = np.zeros(clean.shape[1], np.float32)
    mask[pos] = 1
    patched = sites.splice(lm, site, iv.Blend("resid"), (cache[site], mask))
    switched = float((np.asarray(patched(corrupt))[:, -1].argmax(-1) == good).mean())
    assert switched >= 0.75, switched  # measured 1.0: the other country's capital is named
