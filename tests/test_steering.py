"""Steering, clamping and latent ablation: exact at the site, BOS and padding left alone, the same
under KV-cached generation as on the whole sequence; difference-in-means; and on SmolLM2 a
token-promoting direction and a sentiment direction that do what they should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from penzai import pz

from jaxsae import generate, sites
from jaxsae.causal import steering
from jaxsae.causal import steering_eval as se
from jaxsae.dictionaries import registry
from jaxsae.dictionaries.bound import SAE

SITE = "blocks.0.hook_resid_post"


@pytest.fixture
def tiny(tiny_llama):
    return tiny_llama


def _sae(d, width=16, seed=0):
    spec = registry.build("relu", d_in=d, d_sae=width)
    params = spec.init(jax.random.key(seed))
    params["b_enc"] = params["b_enc"] + 0.1  # most latents fire on the tiny model's activations
    return SAE(spec, params)


def _tokens(seed=0, shape=(2, 8)):
    return np.random.default_rng(seed).integers(1, 97, shape).astype(np.int32)


def test_steering_adds_the_vector_after_bos_only(tiny):
    tokens = _tokens()
    v = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    _, before = sites.run_with_cache(tiny, tokens, [SITE])
    _, after = sites.run_with_cache(steering.add(tiny, SITE, v, 3.0), tokens, [SITE])
    a, b = np.asarray(after[SITE]), np.asarray(before[SITE])
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # BOS position untouched
    np.testing.assert_allclose(a[:, 1:], b[:, 1:] + 3.0 * v, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="width 5"):
        steering.add(tiny, SITE, np.ones(5), 1.0)
    with pytest.raises(ValueError, match="per-head"):
        steering.add(tiny, "blocks.0.attn.hook_z", v, 1.0)


def test_steered_generation_equals_steering_the_whole_sequence(tiny):
    """Under the KV cache the vector is added at every generated position: greedy decoding equals
    re-running the steered model on the growing sequence; a left-padded row generates what it
    generates alone (padding is never steered)."""
    prompt = _tokens(2, (2, 6))
    v = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    steered = steering.add(tiny, SITE, v, 2.0)
    got = np.asarray(generate.greedy(tiny, prompt, 6, model_surgery=lambda m: steering.add(m, SITE, v, 2.0)))
    seq = prompt.copy()
    for _ in range(6):
        nxt = np.asarray(steered(seq))[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(got, seq[:, 6:])
    assert not np.array_equal(got, np.asarray(generate.greedy(tiny, prompt, 6)))  # the vector matters
    tokens, _, pad = generate.left_pad([prompt[0].tolist(), prompt[1, :3].tolist()], pad_id=generate.pad_id_for(tiny))
    padded = np.asarray(generate.greedy(tiny, tokens, 6, pad_id=pad,
                                        model_surgery=lambda m: steering.add(m, SITE, v, 2.0)))
    alone = np.asarray(generate.greedy(tiny, prompt[1:, :3], 6, model_surgery=lambda m: steering.add(m, SITE, v, 2.0)))
    np.testing.assert_array_equal(padded[1], alone[0])


def test_clamping_and_ablation_change_only_the_named_latents(tiny):
    tokens = _tokens(4)
    sae = _sae(32)
    _, before = sites.run_with_cache(tiny, tokens, [SITE])
    x = np.asarray(before[SITE])
    f = np.asarray(sae.encode(jnp.asarray(x)))
    w_dec = np.asarray(sae.params["W_dec"])
    latents, values = [2, 5], [4.0, 0.5]
    _, after = sites.run_with_cache(steering.clamp_latents(tiny, SITE, sae, latents, values), tokens, [SITE])
    want = x + (np.asarray(values) - f[..., latents]) @ w_dec[latents]
    np.testing.assert_allclose(np.asarray(after[SITE])[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(after[SITE])[:, 0], x[:, 0])
    _, zero = sites.run_with_cache(steering.ablate_latents(tiny, SITE, sae, latents), tokens, [SITE])
    np.testing.assert_allclose(np.asarray(zero[SITE])[:, 1:], (x - f[..., latents] @ w_dec[latents])[:, 1:],
                               rtol=1e-5, atol=1e-5)
    mean = f[:, 1:, latents].mean(axis=(0, 1))
    _, meaned = sites.run_with_cache(steering.ablate_latents(tiny, SITE, sae, latents, mean=mean), tokens, [SITE])
    np.testing.assert_allclose(np.asarray(meaned[SITE])[:, 1:], (x + (mean - f[..., latents]) @ w_dec[latents])[:, 1:],
                               rtol=1e-5, atol=1e-5)
    # steering along a decoder row is adding alpha times it
    _, added = sites.run_with_cache(steering.add_latent(tiny, SITE, sae, 3, 2.5), tokens, [SITE])
    np.testing.assert_allclose(np.asarray(added[SITE])[:, 1:], x[:, 1:] + 2.5 * w_dec[3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="0..15"):
        steering.clamp_latents(tiny, SITE, sae, [16], [1.0])


def test_diff_in_means_at_the_embedding_is_the_embedding_difference(tiny):
    """At blocks.0.hook_resid_pre (the token embedding) prompts ending in token a against prompts
    ending in token b give exactly emb(a) - emb(b), whatever came before and whatever the lengths."""
    rng = np.random.default_rng(5)
    pos = [rng.integers(1, 97, n).tolist() + [11] for n in (3, 5, 2)]
    neg = [rng.integers(1, 97, n).tolist() + [42] for n in (4, 1)]
    v = steering.diff_in_means(tiny, "blocks.0.hook_resid_pre", pos, neg)
    _, emb = sites.run_with_cache(tiny, np.asarray([[11, 42]], np.int32), ["blocks.0.hook_resid_pre"])
    e = np.asarray(emb["blocks.0.hook_resid_pre"])[0]
    np.testing.assert_allclose(v, e[0] - e[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_smollm2_token_direction_raises_its_log_prob_monotonically(smollm2):
    """Adding alpha times " Paris"'s unembedding row at the last block's output raises log p(" Paris")
    monotonically in alpha; a dictionary latent planted with that decoder row steers identically."""
    lm, tok = smollm2
    target = tok.encode(" Paris")
    assert len(target) == 1
    site = "blocks.29.hook_resid_post"
    params = pz.select(lm.model).at_instances_of(pz.Parameter).get_sequence()
    w_u = np.asarray(next(p.value for p in params if p.label.endswith("lm_head.weights")).unwrap("vocabulary",
                                                                                                "embedding"))
    direction = w_u[target[0]] / np.linalg.norm(w_u[target[0]])
    prompts = [[tok.bos_id] + tok.encode(p) for p in ("My favourite food is", "Yesterday we went to", "The answer is")]
    alphas = (0.0, 5.0, 10.0, 20.0)
    lp = se.target_logprob(lm, site, direction, prompts, target[0], alphas)
    assert np.all(np.diff(lp) > 0), lp
    sae = _sae(576, width=8)
    sae = SAE(sae.spec, {**sae.params, "W_dec": sae.params["W_dec"].at[3].set(jnp.asarray(direction))})
    steered = steering.add_latent(lm, site, sae, 3, 10.0)
    np.testing.assert_allclose(se.target_logprob(steered, site, direction, prompts, target[0], (0.0,))[0], lp[2],
                               atol=1e-4)


@pytest.mark.slow
def test_smollm2_sentiment_steering_curve(smollm2):
    """The difference-in-means direction of positive minus negative SST-2 reviews, added at layer
    10, moves the lexicon sentiment of greedy continuations of neutral prompts with its sign."""
    from jaxsae.evals import probe_datasets as pds

    lm, tok = smollm2
    texts, labels = pds.read("92_glue_sst2")
    enc = lambda t: [tok.bos_id] + tok.encode(t)[:40]  # noqa: E731
    pos = [enc(t) for t, y in zip(texts, labels) if y == "1"][:48]
    neg = [enc(t) for t, y in zip(texts, labels) if y != "1"][:48]
    site = "blocks.10.hook_resid_post"
    v = steering.diff_in_means(lm, site, pos, neg, reduce="mean")
    prompts = [enc(p) for p in se.NEUTRAL_PROMPTS[:8]]
    cfg = se.SteeringEvalConfig(coefficients=(-0.4, 0.0, 0.4), max_new_tokens=16)
    r = se.curves(lm, tok, site, {"diff-in-means": v}, prompts, cfg)
    rows = r["directions"]["diff-in-means"]
    s = [row["property_mean"] for row in rows]
    assert s[0] < s[1] < s[2], s
    assert all(np.isfinite(row["fluency_mean"]) for row in rows)
