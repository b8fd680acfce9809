"""Unlearning (topic-forgetting proxy): the clamp follows SAEBench's formula, latent selection obeys
the retain threshold, and a known answer: a dictionary with one latent that fires only on a token
the forget texts are full of and the retain texts never hold is chosen, clamping it lowers the
forget texts' accuracy while the retain texts' stays exactly the same, and the score says so."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import dictionaries as D
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import unlearning as ul

SITE = "blocks.0.hook_resid_pre"  # Llama: the token embeddings themselves


def test_clamp_formula():
    rng = np.random.default_rng(0)
    spec = D.build("relu", d_in=8, d_sae=16)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    chosen = np.zeros(16, bool)
    chosen[[1, 4, 9]] = True
    f = np.array(sae.encode(jnp.asarray(x)))
    f[:, 0] = 0.0  # SAEBench zeroes BOS before taking the error term
    err = x - np.asarray(sae.decode(jnp.asarray(f)))
    g = np.where(chosen & (f > 0), -50.0, f)
    want = np.asarray(sae.decode(jnp.asarray(g))) + err
    got = np.asarray(ul.clamp(x, sae, chosen, 50.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 0], x[:, 0], rtol=1e-5, atol=1e-5)  # so BOS passes unchanged


def test_selection_obeys_the_retain_threshold():
    forget = np.array([0.5, 0.4, 0.3, 0.0, 0.2])
    retain = np.array([0.02, 0.0, 0.001, 0.0, 0.005])
    assert np.nonzero(ul.select(forget, retain, 0.01, 2))[0].tolist() == [1, 2]
    assert np.nonzero(ul.select(forget, retain, 0.01, 10))[0].tolist() == [1, 2, 4]  # never-firing latent 3 skipped


def test_known_answer_and_schema(tiny_lm_tok):
    from sae_bench.evals.unlearning.eval_output import UnlearningEvalOutput

    lm, tok = tiny_lm_tok
    word = next(w for w in (" the", " and", " of", " to") if len(tok.encode(w)) == 1)
    target = tok.encode(word)[0]
    vocab = [w for w in (" king", " my", " lord", " good", " sir", " come", " you", " love", " is", " not", " me",
                         " will", " what", " with", " we", " your") if target not in tok.encode(w)]
    rng = np.random.default_rng(0)

    def text(with_word: bool):
        words = list(rng.choice(vocab, 30))
        if with_word:
            for i in range(0, 30, 3):
                words[i] = word
        return "".join(words)

    forget = [text(True) for _ in range(16)]
    retain = [t for t in (text(False) for _ in range(24)) if target not in tok.encode(t)][:16]
    emb = np.asarray(lm.model.body.sublayers[0].table.embeddings.value.unwrap("vocabulary", "embedding"), np.float32)
    e = emb[target] / np.linalg.norm(emb[target])
    others = emb @ e
    thresh = float(np.sort(others)[-2] + others.max()) / 2  # between the target's projection and the next best
    d = emb.shape[1]
    eye = np.eye(d, dtype=np.float32)
    spec = D.build("relu", d_in=d, d_sae=2 * d + 1)
    w_enc = np.concatenate([e[:, None], eye, -eye], 1)
    b_enc = np.concatenate([[-thresh], np.zeros(2 * d)]).astype(np.float32)
    w_dec = np.concatenate([e[None], eye, -eye], 0)
    sae = SAE(spec, {"W_enc": jnp.asarray(w_enc), "b_enc": jnp.asarray(b_enc), "W_dec": jnp.asarray(w_dec),
                     "b_dec": jnp.zeros(d)})
    cfg = ul.UnlearningConfig(context=32, batch=8, multipliers=(25.0, 200.0), n_features_list=(1,))
    r = ul.run(lm, sae, SITE, tok, forget, retain, cfg, data_name="tiny:the", progress=False)
    UnlearningEvalOutput(**r)
    for row in r["eval_result_details"]:
        assert row["latents"] == [0]  # the detector: firing most on forget text, never on retain text
        assert row["retain_ratio"] == 1.0  # nothing chosen fires there: the retain texts are untouched
        assert row["forget_ratio"] < 1.0
    score = r["eval_result_metrics"]["unlearning"]["unlearning_score"]
    assert score == pytest.approx(1 - min(row["forget_ratio"] for row in r["eval_result_details"])) and score > 0
    assert "not comparable" in r["eval_config"]["proxy"]
    name, f, rt = ul.topic_proxy("Sport", n=20)
    assert name == "topic_forgetting_proxy:news/Sport" and len(f) == len(rt) == 20 and not set(f) & set(rt)


def test_resumed_scoring_equals_the_spliced_model(tiny_lm_tok):
    """At a residual site the clamp is scored by running only the layers after it; the same numbers
    as the whole spliced model (the generic path, used at other sites)."""
    from jaxsae.data import tokens as tokens_lib
    from jaxsae.evals import pooled

    lm, tok = tiny_lm_tok
    spec = D.build("relu", d_in=32, d_sae=64)
    sae = SAE(spec, spec.init(jax.random.key(3)))
    texts = ["the king is dead, long live the king", "my lord, what news", "to be or not to be", "good sir"] * 3
    tokens = pooled.tokenize(texts, tok, 16)
    chosen = np.zeros(64, bool)
    chosen[:8] = True
    site = "blocks.1.hook_resid_post"
    fast = ul._Scorer(lm, site, tokens, tokens_lib.special_ids(tok), 5)
    assert fast.resume is not None
    from jaxsae import sites
    spliced = sites.splice(lm, site, ul._Clamp(), {"sae": sae, "chosen": jnp.asarray(chosen),
                                                   "multiplier": jnp.float32(25.0)})
    slow = ul.accuracy(lm, tokens, tokens_lib.special_ids(tok), 5, spliced)
    assert fast(sae, chosen, 25.0) == pytest.approx(slow, rel=1e-5)
    assert fast() == pytest.approx(ul.accuracy(lm, tokens, tokens_lib.special_ids(tok), 5), rel=1e-5)
