"""Hook sites: every TransformerLens-named site of a Llama-family model equals the value
transformers computes at the same place; tapping changes no output and mutates nothing."""

import numpy as np
import pytest
import torch
import transformers
from tiny_models import CASES, hf_sites, save_tiny

from jaxsae import models, sites

VOCAB = 97
TOKENS = np.random.default_rng(1).integers(0, VOCAB, size=(2, 9))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    d = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(str(d))
    return hf, models.load(str(d))


def _hf_sites(hf, layer):
    return hf_sites(hf, "llama", layer, TOKENS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_family_every_site_matches_transformers(case, tmp_path):
    """Every site of every block (resid pre/mid/post, attention and MLP outputs, the attention's
    and the MLP's normalised inputs, per-head z, attention patterns) equals transformers' value, one forward
    for all of them."""
    kind, extra = CASES[case]
    hf = save_tiny(tmp_path, kind, **extra)
    lm = models.load(str(tmp_path))
    parallel = kind == "gpt_neox" and extra.get("use_parallel_residual", True)
    for layer in (0, 1):
        want_logits, want = hf_sites(hf, kind, layer, TOKENS, parallel)
        logits, cache = sites.run_with_cache(lm, TOKENS, list(want))
        for name, w in want.items():
            got = np.asarray(cache[name])
            assert got.shape == w.shape, (name, got.shape, w.shape)
            rel = np.abs(got - w).max() / np.abs(w).max()
            assert rel <= 1e-4, (case, name, rel)
        assert np.abs(np.asarray(logits) - want_logits).max() / np.abs(want_logits).max() <= 1e-4
    if parallel:
        with pytest.raises(ValueError, match="hook_resid_mid does not exist in a parallel-residual block"):
            sites.run_with_cache(lm, TOKENS, ["blocks.0.hook_resid_mid"])


@pytest.mark.parametrize("layer", [0, 2])
def test_every_site_matches_transformers(tiny, layer):
    hf, lm = tiny
    want_logits, want = _hf_sites(hf, layer)
    logits, cache = sites.run_with_cache(lm, TOKENS, list(want))
    assert set(cache) == set(want)
    for name, w in want.items():
        rel = np.abs(np.asarray(cache[name]) - w).max() / np.abs(w).max()
        assert rel <= 1e-4, (name, rel)
    # tapping is an identity: logits unchanged
    np.testing.assert_allclose(np.asarray(logits), np.asarray(lm(TOKENS)), rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(logits) - want_logits).max() / np.abs(want_logits).max() <= 1e-4


def test_tapping_returns_a_new_model_and_names_bad_sites(tiny):
    _, lm = tiny
    tapped = sites.with_taps(lm.model, ["blocks.1.hook_resid_post"])
    from penzai import pz

    assert pz.select(tapped).at_instances_of(sites.Tap).count() == 1
    assert pz.select(lm.model).at_instances_of(sites.Tap).count() == 0
    with pytest.raises(ValueError, match="unknown hook site"):
        sites.parse("blocks.1.hook_resid")
    with pytest.raises(ValueError, match="model has 3 blocks"):
        sites.with_taps(lm.model, ["blocks.7.hook_mlp_out"])


def _resid(lm, site):
    return np.asarray(sites.run_with_cache(lm, TOKENS, [site])[1][site])


def test_identity_and_error_keeping_splices_change_no_logits(tiny):
    _, lm = tiny
    base = np.asarray(lm(TOKENS))
    same = sites.splice(lm, "blocks.1.hook_resid_post", lambda x, _: x)
    np.testing.assert_allclose(np.asarray(same(TOKENS)), base, rtol=1e-6, atol=1e-6)
    from jaxsae import dictionaries as D
    from jaxsae.dictionaries.bound import SAE

    spec = D.build("topk", d_in=32, d_sae=64, k=4)
    import jax

    sae = SAE(spec, spec.init(jax.random.key(0)))
    kept = sites.splice_sae(lm, "blocks.1.hook_resid_post", sae, keep_error=True)
    np.testing.assert_allclose(np.asarray(kept(TOKENS)), base, rtol=1e-5, atol=1e-5)
    # without the error term the site now carries the reconstruction of the clean activation
    x = _resid(lm, "blocks.1.hook_resid_post")
    spliced = sites.splice_sae(lm, "blocks.1.hook_resid_post", sae)
    np.testing.assert_allclose(_resid(spliced, "blocks.1.hook_resid_post"), np.asarray(sae(x)), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(spliced(TOKENS)) - base).max() > 1e-3


def test_zero_and_mean_ablation(tiny):
    _, lm = tiny
    zeroed = sites.splice_zero(lm, "blocks.0.hook_mlp_out")
    np.testing.assert_allclose(_resid(zeroed, "blocks.0.hook_resid_post"), _resid(zeroed, "blocks.0.hook_resid_mid"),
                               rtol=1e-6, atol=1e-6)
    mean = _resid(lm, "blocks.0.hook_attn_out").reshape(-1, 32).mean(0)
    meaned = sites.splice_mean(lm, "blocks.0.hook_attn_out", mean)
    got = _resid(meaned, "blocks.0.hook_attn_out")
    np.testing.assert_allclose(got, np.broadcast_to(mean, got.shape), rtol=1e-6)


def test_truncated_model_gives_the_same_site_values(tiny):
    _, lm = tiny
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    _, full = sites.run_with_cache(lm, TOKENS, names)
    logits, short = sites.run_with_cache(lm, TOKENS, names, stop_early=True)
    assert logits is None
    for n in names:
        np.testing.assert_allclose(np.asarray(short[n]), np.asarray(full[n]), rtol=1e-6, atol=1e-6)
    from penzai.models.transformer import model_parts

    cut = sites.truncate(lm, 1)
    n_blocks = sum(isinstance(x, model_parts.TransformerBlock) for x in cut.model.body.sublayers)
    assert n_blocks == 2 and len(cut.model.body.sublayers) == 3  # embedding + 2 blocks


def test_hook_z_splices_per_head(tiny):
    """hook_z arrives as [batch, seq, heads, head_dim]; an identity splice changes nothing, and
    ablating one head's z removes exactly its share of the attention output."""
    _, lm = tiny
    base = np.asarray(lm(TOKENS))
    same = sites.splice(lm, "blocks.1.attn.hook_z", lambda z, _: z)
    np.testing.assert_allclose(np.asarray(same(TOKENS)), base, rtol=1e-6, atol=1e-6)
    _, cache = sites.run_with_cache(lm, TOKENS, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    z, out = np.asarray(cache["blocks.1.attn.hook_z"]), np.asarray(cache["blocks.1.hook_attn_out"])
    assert z.shape == (2, 9, 4, 8)
    ablated = sites.splice(lm, "blocks.1.attn.hook_z", lambda z, _: z.at[:, :, 2].set(0.0))
    _, cut = sites.run_with_cache(ablated, TOKENS, ["blocks.1.hook_attn_out"])
    w_o = np.asarray(tiny[0].model.layers[1].self_attn.o_proj.weight.detach())  # [d, heads * head_dim]
    head2 = z[:, :, 2] @ w_o[:, 16:24].T
    np.testing.assert_allclose(np.asarray(cut["blocks.1.hook_attn_out"]), out - head2, rtol=1e-4, atol=1e-5)
