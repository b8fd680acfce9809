"""Sparse probing: tasks are balanced and disjoint as SAEBench builds them, the pooled features are
the mean over text tokens of the site's activations and of the latents, and the result loads in
SAEBench's own output class. On the packaged SmolLM2 a sentiment probe beats chance clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import dictionaries as D
from jaxsae import sites
from jaxsae.data import tokens as tokens_lib
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import pooled as pooled_lib
from jaxsae.evals import probe_datasets
from jaxsae.evals import sparse_probing as sp


def _identity_sae(d):
    """x = relu(x) - relu(-x): an exact dictionary with 2d latents."""
    eye = np.eye(d, dtype=np.float32)
    spec = D.build("relu", d_in=d, d_sae=2 * d)
    params = {"W_enc": jnp.asarray(np.concatenate([eye, -eye], 1)), "b_enc": jnp.zeros(2 * d),
              "W_dec": jnp.asarray(np.concatenate([eye, -eye], 0)), "b_dec": jnp.zeros(d)}
    return SAE(spec, {k: params[k] for k in spec.init(jax.random.key(0))})


def test_tasks_are_balanced_and_disjoint():
    cfg = sp.SparseProbingConfig(datasets=("news_topic", "country"), train_size=60, test_size=20).validate()
    prompts, tasks = sp.build_tasks("news_topic", cfg)
    assert [t.name for t in tasks] == ["161_agnews_0", "162_agnews_1", "163_agnews_2"]
    texts, targets = probe_datasets.read("161_agnews_0")
    t = tasks[0]
    assert t.y_train.sum() == 30 and t.y_test.sum() == 10 and not set(t.train_rows) & set(t.test_rows)
    assert [targets[i] == "1" for i in t.train_rows] == [bool(v) for v in t.y_train]
    prompts, tasks = sp.build_tasks("country", cfg)
    assert len(tasks) == 5 and tasks[0].name == "17_world_country/Australia"
    _, targets = probe_datasets.read("17_world_country")
    for t in tasks:
        cls = t.name.split("/")[1]
        assert [targets[i] == cls for i in t.train_rows] == [bool(v) for v in t.y_train]
        neg = {targets[i] for i, y in zip(t.train_rows, t.y_train) if not y}
        assert len(neg) == 4 and cls not in neg  # negatives from every other class
        assert not set(t.train_rows) & set(t.test_rows)
    with pytest.raises(ValueError, match="unknown probing dataset"):
        sp.SparseProbingConfig(datasets=("bias_in_bios",)).validate()
    with pytest.raises(ValueError, match="lower train_size/test_size"):
        sp.build_tasks("gender", sp.SparseProbingConfig(train_size=6000, test_size=100))


def test_pooled_features_are_means_over_text_tokens(tiny_lm_tok):
    lm, tok = tiny_lm_tok
    site = "blocks.1.hook_resid_post"
    prompts = ["The king is dead.", "Long live the queen, my lord", "o", "What light through yonder window breaks"]
    tokens = pooled_lib.tokenize(prompts, tok, 12)
    assert (tokens[:, 0] == tok.bos_id).all() and tokens[2, 2:].tolist() == [tok.bos_id] * 10
    sae = _identity_sae(32)
    llm, lat = pooled_lib.pooled(lm, sae, site, tokens, tokens_lib.special_ids(tok), batch=3)
    _, cache = sites.run_with_cache(lm, tokens, [site])
    x = np.asarray(cache[site])
    mask = tokens_lib.content_mask(tokens, tokens_lib.special_ids(tok))
    want = np.stack([x[i][mask[i]].mean(0) for i in range(4)])
    np.testing.assert_allclose(llm, want, rtol=1e-5, atol=1e-6)
    f = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
    np.testing.assert_allclose(lat, np.stack([f[i][mask[i]].mean(0) for i in range(4)]), rtol=1e-5, atol=1e-6)


def test_result_loads_in_saebench(tiny_lm_tok):
    from sae_bench.evals.sparse_probing.eval_output import SparseProbingEvalOutput

    lm, tok = tiny_lm_tok
    cfg = sp.SparseProbingConfig(datasets=("sentiment", "country"), train_size=40, test_size=20, context=16,
                                 k_values=(1, 5), batch_prompts=8)
    r = sp.run_suite(lm, _identity_sae(32), "blocks.1.hook_resid_post", tok, cfg, progress=False)
    parsed = SparseProbingEvalOutput(**r)
    assert [d.dataset_name for d in parsed.eval_result_details] == ["sentiment", "country"]
    sae_m = r["eval_result_metrics"]["sae"]
    assert sae_m["sae_top_2_test_accuracy"] is None and 0 <= sae_m["sae_top_5_test_accuracy"] <= 1
    assert "full_width_probes" in r["eval_config"]["jaxsae"]["differences_from_saebench"]
    assert 0 <= sae_m["sae_test_accuracy_saebench_probe_selection"] <= 1  # the fixed bug: SAEBench's value too
    again = sp.run_suite(lm, _identity_sae(32), "blocks.1.hook_resid_post", tok, cfg, progress=False)
    assert again["eval_result_details"] == r["eval_result_details"]  # seeded: the same tasks and probes


@pytest.mark.slow
def test_smollm2_sentiment_probe_beats_chance(smollm2):
    lm, tok = smollm2
    cfg = sp.SparseProbingConfig(datasets=("sentiment",), train_size=1000, test_size=200, context=32, k_values=(1, 5))
    r = sp.run_suite(lm, _identity_sae(576), "blocks.15.hook_resid_post", tok, cfg, progress=False)
    m = r["eval_result_metrics"]  # measured: llm 0.815, exact-dictionary sae 0.785 (chance 0.5)
    assert m["llm"]["llm_test_accuracy"] > 0.75, m
    assert m["sae"]["sae_test_accuracy"] > 0.7, m  # an exact dictionary keeps the information
