"""Causal toolkit: patching grids equal the same interventions done with forward hooks in
transformers; attribution patching is exact where the metric is linear in the node and IG
converges to patching; SAE latent and error nodes; head knock-outs; errors."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import CASES, _hf_layers, _parts, save_tiny

from jaxsae import causal, models, sites
from jaxsae.causal import interventions as iv
from jaxsae.causal.patching import cells_for

GOOD, BAD = 5, 7


def _pair(seed=0, batch=3, seq=9, vocab=97, changed=(3, 5, 8)):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    corrupt = clean.copy()
    for p in changed:
        corrupt[:, p] = (clean[:, p] + 1 + rng.integers(0, vocab - 1, batch)) % vocab
    return clean, corrupt


_BUILT = {}


def _tiny(case, tmp_path_factory):
    if case not in _BUILT:
        kind, extra = CASES[case]
        d = tmp_path_factory.mktemp(case)
        hf = save_tiny(d, kind, **extra)
        _BUILT[case] = kind, hf, models.load(str(d))
    return _BUILT[case]


@pytest.fixture(params=["llama_gqa", "gpt2_learned_positions", "pythia_parallel_partial_rotary"])
def tiny(request, tmp_path_factory):
    """Three block layouts (GQA + RoPE, learned positions + biases, parallel residual)."""
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture
def llama(tmp_path_factory):
    """One family, for properties of jaxsae's own machinery (family parity is checked above)."""
    return _tiny("llama_gqa", tmp_path_factory)


def _hf_patched_ld(hf, kind, clean, corrupt, layer, where, pos, head=None):
    """Logit difference of the corrupted run with the clean value of one site at `pos` (and head)
    written in by transformers forward hooks."""
    blk = _hf_layers(hf)[layer]
    attn, o_proj, mlp, attn_add, mlp_add = _parts(kind, blk)
    n_heads = hf.config.num_attention_heads if kind != "gpt2" else hf.config.n_head
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    module, pre = {"resid_pre": (blk, True), "z": (o_proj, True), "attn_out": (attn_add, False),
                   "mlp_out": (mlp_add, False)}[where]
    saved = {}

    def value_of(args, kwargs, out):
        if pre:
            return args[0] if args else kwargs["hidden_states"]
        return first(out)

    def rec_pre(m, args, kwargs):
        saved["v"] = value_of(args, kwargs, None).clone()

    def rec_post(m, args, kwargs, out):
        saved["v"] = value_of(args, kwargs, out).clone()

    def sel(v):
        if where != "z":
            return (slice(None), pos)
        hd = v.shape[-1] // n_heads
        return (slice(None), pos, slice(head * hd, (head + 1) * hd))

    def put_pre(m, args, kwargs):
        v = value_of(args, kwargs, None).clone()
        v[sel(v)] = saved["v"][sel(v)]
        if args:
            return (v, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": v}

    def put_post(m, args, kwargs, out):
        v = first(out).clone()
        v[sel(v)] = saved["v"][sel(v)]
        return (v, *out[1:]) if isinstance(out, tuple) else v

    with torch.no_grad():
        h = (module.register_forward_pre_hook(rec_pre, with_kwargs=True) if pre
             else module.register_forward_hook(rec_post, with_kwargs=True))
        hf(torch.from_numpy(clean))
        h.remove()
        h = (module.register_forward_pre_hook(put_pre, with_kwargs=True) if pre
             else module.register_forward_hook(put_post, with_kwargs=True))
        logits = hf(torch.from_numpy(corrupt)).logits.numpy()
        h.remove()
    return float((logits[:, -1, GOOD] - logits[:, -1, BAD]).mean())


def _hf_ld(hf, tokens):
    with torch.no_grad():
        logits = hf(torch.from_numpy(tokens)).logits.numpy()
    return float((logits[:, -1, GOOD] - logits[:, -1, BAD]).mean())


def test_patch_grid_equals_transformers_forward_hooks(tiny):
    kind, hf, lm = tiny
    clean, corrupt = _pair()
    grid = {"blocks.1.hook_resid_pre": ("resid_pre", 1), "blocks.0.hook_attn_out": ("attn_out", 0),
            "blocks.0.hook_mlp_out": ("mlp_out", 0), "blocks.1.attn.hook_z": ("z", 1)}
    eff = causal.patch(lm, clean, corrupt, list(grid), causal.logit_diff(GOOD, BAD))
    ld_c, ld_r = _hf_ld(hf, clean), _hf_ld(hf, corrupt)
    n_heads = eff["blocks.1.attn.hook_z"].shape[1]
    for site, (where, layer) in grid.items():
        for pos in range(clean.shape[1]):
            for head in (range(n_heads) if where == "z" else [None]):
                want = (_hf_patched_ld(hf, kind, clean, corrupt, layer, where, pos, head) - ld_r) / (ld_c - ld_r)
                got = eff[site][pos] if head is None else eff[site][pos, head]
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4, err_msg=f"{site} pos {pos} head {head}")
    # positions before the first changed token hold equal values in both runs: no effect
    assert np.all(np.abs(eff["blocks.1.hook_resid_pre"][:3]) < 1e-6)
    # the last block's output at the last position is all the metric reads: it restores it all
    last = causal.patch(lm, clean, corrupt, ["blocks.1.hook_resid_post"], causal.logit_diff(GOOD, BAD))
    np.testing.assert_allclose(last["blocks.1.hook_resid_post"][-1], 1.0, atol=2e-4)
    np.testing.assert_allclose(last["blocks.1.hook_resid_post"][:-1], 0.0, atol=2e-4)


def _naive(lm, clean, corrupt, site, metric, direction="denoise", positions=None):
    """One spliced forward per cell, no batching, no skipping: the reference grid."""
    base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    _, cache = sites.run_with_cache(lm, src, [site])
    m_b, m_s = float(metric(lm(base)).mean()), float(metric(lm(src)).mean())
    m_c, m_r = (m_s, m_b) if direction == "denoise" else (m_b, m_s)
    layout = iv.value_shape_kind(sites.parse(site)[1])
    masks, shape = cells_for(site, cache[site].shape, positions)
    out = [float(metric(sites.splice(lm, site, iv.Blend(layout), (cache[site], jnp.asarray(m)))(base)).mean())
           for m in masks]
    return ((np.array(out) - m_r) / (m_c - m_r)).reshape(shape)


def test_patch_noising_positions_and_patterns_match_one_forward_per_cell(llama):
    _, _, lm = llama
    clean, corrupt = _pair(seed=1)
    metric = causal.logprob(GOOD)
    site_list = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_k", "blocks.0.hook_resid_post"]
    for direction in ("denoise", "noise"):
        for positions in (None, [2, -1], "all"):
            eff = causal.patch(lm, clean, corrupt, site_list, metric, direction=direction, positions=positions)
            for s in site_list:
                want = _naive(lm, clean, corrupt, s, metric, direction, positions)
                np.testing.assert_allclose(eff[s], want, atol=2e-4, err_msg=f"{s} {direction} {positions}")
    # skipping cells whose values agree in both runs is exact
    full = causal.patch(lm, clean, corrupt, ["blocks.0.hook_resid_post"], metric, skip_unchanged=False)
    fast = causal.patch(lm, clean, corrupt, ["blocks.0.hook_resid_post"], metric)
    np.testing.assert_allclose(fast["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"], atol=1e-5)


def test_atp_is_exact_where_the_metric_is_linear_in_the_node(tiny):
    """With every norm's scale frozen at the corrupted run's, the logits are affine in the last
    block's output and in its MLP's output: AtP equals patching there (and nowhere else: the
    heads' z of the last block still feed its MLP; test_induction_model checks heads)."""
    _, _, lm = tiny
    clean, corrupt = _pair(seed=2)
    frozen = causal.freeze_norms(lm, corrupt)
    np.testing.assert_array_equal(np.asarray(frozen(corrupt)), np.asarray(lm(corrupt)))
    site_list = ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
    metric = causal.logit_diff(GOOD, BAD)
    eff = causal.patch(frozen, clean, corrupt, site_list, metric)
    atp = causal.attribution_patch(frozen, clean, corrupt, site_list, metric)
    for s in site_list:
        assert atp[s].shape == eff[s].shape
        np.testing.assert_allclose(atp[s], eff[s], atol=1e-4, err_msg=s)
    noise = causal.attribution_patch(frozen, clean, corrupt, site_list[:1], metric, direction="noise")
    eff_n = causal.patch(causal.freeze_norms(lm, clean), clean, corrupt, site_list[:1], metric, direction="noise")
    np.testing.assert_allclose(noise[site_list[0]], eff_n[site_list[0]], atol=1e-4)


def test_integrated_gradients_converge_to_patching(llama):
    """On a site where the metric is not linear, IG's error against patching shrinks as the
    number of steps grows, at least at the first-order rate of its left Riemann sum (alpha =
    k/N as Marks et al.: 16x the steps, 8x less error), and ends below AtP's."""
    _, _, lm = llama
    clean, corrupt = _pair(seed=3)
    s = "blocks.0.hook_resid_post"
    metric = causal.logit_diff(GOOD, BAD)
    eff = causal.patch(lm, clean, corrupt, [s], metric, positions="all")[s]
    atp = causal.attribution_patch(lm, clean, corrupt, [s], metric, positions="all")[s]
    errs = [abs(causal.attribution_patch(lm, clean, corrupt, [s], metric, method="ig", steps=n, positions="all")[s]
                - eff) for n in (2, 8, 32)]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < errs[0] / 8 and errs[2] < abs(atp - eff), (errs, atp, eff)


def _random_sae(d, width=24, seed=0):
    import jax

    from jaxsae.dictionaries import registry
    from jaxsae.dictionaries.bound import SAE

    spec = registry.build("relu", d_in=d, d_sae=width)

    params = spec.init(jax.random.key(seed))
    params = {k: v + 0.05 * jax.random.normal(jax.random.key(seed + 1), v.shape) if k.startswith("b_") else v
              for k, v in params.items()}
    return SAE(spec, params)


def test_sae_latent_and_error_nodes(llama):
    """Latents plus error account for the whole site; with frozen norms at the last layer a
    latent's AtP equals patching that one latent; splicing the nodes at zero delta is an identity."""
    _, _, lm = llama
    clean, corrupt = _pair(seed=4)
    s = "blocks.1.hook_resid_post"
    d = sites.model_width(lm)
    sae = _random_sae(d)
    frozen = causal.freeze_norms(lm, corrupt)
    metric = causal.logit_diff(GOOD, BAD)
    atp = causal.attribution_patch(frozen, clean, corrupt, [s], metric, saes={s: sae})
    assert atp[s + "/latents"].shape == (clean.shape[1], 24) and atp[s + "/error"].shape == (clean.shape[1],)
    np.testing.assert_allclose(atp[s + "/latents"].sum(-1) + atp[s + "/error"], atp[s], atol=1e-5)
    # the exact effect of patching one latent at one position (clean value into the corrupted run)
    _, cc = sites.run_with_cache(frozen, clean, [s])
    _, cr = sites.run_with_cache(frozen, corrupt, [s])
    f_c, f_r = np.asarray(sae.encode(cc[s])), np.asarray(sae.encode(cr[s]))
    ld = lambda m: float(metric(m(corrupt)).mean())  # noqa: E731
    ld_c, ld_r = float(metric(frozen(clean)).mean()), ld(frozen)
    shape = cr[s].shape
    zero = jnp.zeros(shape)
    ident = sites.splice(frozen, s, iv.SaeNodes(), (sae, zero, jnp.zeros(f_r.shape), zero))
    np.testing.assert_allclose(np.asarray(ident(corrupt)), np.asarray(frozen(corrupt)), atol=1e-5)
    pos = clean.shape[1] - 1
    top = np.argsort(-np.abs(atp[s + "/latents"][pos]))[:3]
    for i in top:
        d_f = np.zeros(f_r.shape, np.float32)
        d_f[:, pos, i] = f_c[:, pos, i] - f_r[:, pos, i]
        m = sites.splice(frozen, s, iv.SaeNodes(), (sae, zero, jnp.asarray(d_f), zero))
        np.testing.assert_allclose(atp[s + "/latents"][pos, i], (ld(m) - ld_r) / (ld_c - ld_r), atol=1e-4)
    ig = causal.attribution_patch(frozen, clean, corrupt, [s], metric, saes={s: sae}, method="ig", steps=4)
    np.testing.assert_allclose(ig[s + "/latents"].sum(-1) + ig[s + "/error"], ig[s], atol=1e-5)


def test_knock_out_heads_zeroes_exactly_those_heads(llama):
    _, _, lm = llama
    tokens, _ = _pair(seed=5)
    z = "blocks.1.attn.hook_z"
    _, before = sites.run_with_cache(lm, tokens, [z])
    ko = causal.knock_out_heads(lm, [(1, 0), (1, 2)])
    _, after = sites.run_with_cache(ko, tokens, [z])
    a, b = np.asarray(after[z]), np.asarray(before[z])
    assert np.all(a[:, :, [0, 2]] == 0)
    np.testing.assert_array_equal(a[:, :, [1, 3]], b[:, :, [1, 3]])
    with pytest.raises(ValueError, match="heads 0..3"):
        causal.knock_out_heads(lm, {1: [7]})


def test_bad_inputs_name_the_problem(llama):
    _, _, lm = llama
    clean, corrupt = _pair()
    m = causal.logit_diff(GOOD, BAD)
    with pytest.raises(ValueError, match="differ in shape"):
        causal.patch(lm, clean, corrupt[:, :-1], ["blocks.0.hook_resid_pre"], m)
    with pytest.raises(ValueError, match="unknown hook site"):
        causal.patch(lm, clean, corrupt, ["blocks.0.resid"], m)
    with pytest.raises(ValueError, match="both the clean and the corrupted"):
        causal.patch(lm, clean, clean, ["blocks.0.hook_resid_pre"], m)
    with pytest.raises(ValueError, match="outside the sequence"):
        causal.patch(lm, clean, corrupt, ["blocks.0.hook_resid_pre"], m, positions=[40])
    with pytest.raises(ValueError, match="method="):
        causal.attribution_patch(lm, clean, corrupt, ["blocks.0.hook_resid_pre"], m, method="eap")
    with pytest.raises(ValueError, match="not among the sites"):
        causal.attribution_patch(lm, clean, corrupt, ["blocks.0.hook_resid_pre"], m,
                                 saes={"blocks.1.hook_resid_pre": _random_sae(sites.model_width(lm))})


def test_patching_and_attribution_on_a_sharded_model_equal_one_device(llama, n_devices):
    """The same calls on the model placed over a (data 2, model 4) mesh of the 8 fake devices:
    the rewrites compose with sharded parameters, and the numbers agree."""
    from jaxsae import sharding

    _, _, lm = llama
    mesh = sharding.make_mesh(data=2, model=4)
    placed = models.place(lm, mesh)
    clean, corrupt = _pair(seed=6, batch=2)
    s = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    m = causal.logit_diff(GOOD, BAD)
    for fn in (causal.patch, causal.attribution_patch):
        one, many = fn(lm, clean, corrupt, s, m), fn(placed, clean, corrupt, s, m)
        for site in s:
            np.testing.assert_allclose(many[site], one[site], rtol=1e-4, atol=2e-4, err_msg=f"{fn.__name__} {site}")
