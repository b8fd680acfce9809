"""Multitoken transcoders (attention replacements): the math against a NumPy reference, packing and
splicing invariances, the known answer on the attention-only induction model (the MTC replaces
layer 1's attention, routes through the induction heads, and each copied token is carried by the
few latents of its source), resume, sharding, the stream from a real tokenizer's LM, and errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_params, train_killed_then_resumed

from jaxsae import config as C
from jaxsae import models, sharding, sites
from jaxsae.data import contexts
from jaxsae.dictionaries import registry
from jaxsae.dictionaries.base import LossContext
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import multitoken as mt
from jaxsae.interop import multitoken as mt_io
from jaxsae.toy import induction
from jaxsae.train import loop

IN, OUT = "blocks.1.ln1.hook_normalized", "blocks.1.hook_attn_out"


def _one_device():
    return sharding.make_mesh(1, 1, jax.devices()[:1])


def _spec(activation="topk", mixing="learned", **kw):
    kw = {"d_in": 6, "d_sae": 10, "d_out": 5, "n_heads": 2, "n_ctx": 4, "activation": activation, "k": 3,
          "head_mixing": mixing, **kw}
    return registry.build("multitoken_transcoder", **kw)


def _inputs(spec, seed=0, batch=3):
    rng = np.random.default_rng(seed)
    t = spec.n_ctx
    x = rng.normal(size=(batch, t, spec.d_in)).astype(np.float32)
    logits = rng.normal(size=(batch, spec.n_heads, t, t))
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    pattern = np.exp(logits - logits.max(-1, keepdims=True))
    pattern = (pattern / pattern.sum(-1, keepdims=True)).astype(np.float32)
    y = rng.normal(size=(batch, t, spec.out_dim)).astype(np.float32)
    return x, pattern, y


def _numpy_reference(spec, p, x, pattern, y, sparsity_scale=1.0):
    """(prediction, loss) by loops over positions and heads, from the module docstring's equations."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    pre = x @ p["W_enc"] + p["b_enc"]
    if spec.activation == "topk":
        a = np.zeros_like(pre)
        for b in range(pre.shape[0]):
            for t in range(pre.shape[1]):
                top = np.argsort(-pre[b, t])[: spec.k]
                a[b, t, top] = np.maximum(pre[b, t, top], 0)
    else:
        a = np.maximum(pre, 0)
    logits = p["head_logits"]
    if spec.head_mixing == "top1":
        c = np.eye(logits.shape[1])[np.argmax(logits, -1)]
    else:
        c = logits / np.abs(logits).sum(-1, keepdims=True)
    bsz, t_len, f = a.shape
    u = np.zeros_like(a)
    for b in range(bsz):
        for t in range(t_len):
            u[b, t] = c[:, 0] * a[b, t]
            for h in range(spec.n_heads):
                for s in range(t_len):
                    u[b, t] += c[:, h + 1] * pattern[b, h, t, s] * a[b, s]
    yhat = u @ p["W_dec"] + p["b_dec"]
    lo = spec.loss_from
    loss = np.mean(np.sum((y[:, lo:] - yhat[:, lo:]) ** 2, -1))
    if spec.activation == "relu":
        d_norm = np.linalg.norm(p["W_dec"], axis=-1)
        loss += sparsity_scale * spec.sparsity_coefficient * np.mean(np.sum(a * d_norm, -1))
        loss += spec.pre_act_coefficient * np.mean(np.sum(np.maximum(-pre, 0) * d_norm, -1))
    return yhat, loss


@pytest.mark.parametrize("activation,mixing", [("topk", "learned"), ("relu", "learned"), ("topk", "top1")])
def test_forward_and_loss_match_numpy(activation, mixing):
    spec = _spec(activation, mixing, pre_act_coefficient=0.1 if activation == "relu" else 0.0)
    params = spec.init(jax.random.key(1))
    params["b_enc"] = params["b_enc"] + 0.1  # some ReLU latents on, some off
    x, pattern, y = _inputs(spec)
    packed = spec.pack(x, pattern)
    assert packed.shape == (3, 4, 6 + 2 * 4)
    want_yhat, want_loss = _numpy_reference(spec, params, x, pattern, y, sparsity_scale=0.5)
    np.testing.assert_allclose(np.asarray(spec.forward(params, jnp.asarray(packed))), want_yhat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(spec.apply(params, x, pattern)), want_yhat, rtol=1e-5, atol=1e-5)
    ctx = LossContext(sparsity_scale=jnp.float32(0.5), dead_f=jnp.zeros((spec.d_sae,), bool))
    out = spec.loss(params, jnp.asarray(packed), jnp.asarray(y), ctx)
    np.testing.assert_allclose(float(out.loss), want_loss, rtol=1e-5)
    # packing round-trips; the input normalisation scales vectors, never probabilities
    x2, p2 = spec.unpack(jnp.asarray(packed))
    np.testing.assert_array_equal(np.asarray(x2), x)
    np.testing.assert_array_equal(np.asarray(p2), pattern)
    xs, ps = spec.unpack(spec.scale_inputs(jnp.asarray(packed), 2.0))
    np.testing.assert_allclose(np.asarray(xs), 2 * x)
    np.testing.assert_array_equal(np.asarray(ps), pattern)
    # the identity head carries same-position information only: a latent bound to it ignores patterns
    only_identity = dict(params, head_logits=jnp.zeros_like(params["head_logits"]).at[:, 0].set(1.0))
    shuffled = pattern[:, :, :, ::-1]
    np.testing.assert_allclose(np.asarray(spec.apply(only_identity, x, pattern)),
                               np.asarray(spec.apply(only_identity, x, shuffled)), rtol=1e-6)


def test_attention_splices_are_model_surgery_with_the_live_pattern(induction_model):
    """splice_attention reads the same forward's normalised input and pattern; an MTC spliced with
    its error kept changes no logit, and without it equals the MTC applied to the captured values."""
    _, lm, _ = induction_model
    tokens = np.array([[1, 5, 9, 3, 7, 2, 8, 4]], np.int32)
    base = np.asarray(lm(tokens))
    np.testing.assert_array_equal(np.asarray(sites.splice_attention(lm, 1, lambda x, p, out, _: out)(tokens)), base)
    _, cache = sites.run_with_cache(lm, tokens, [IN, "blocks.1.attn.hook_pattern", OUT])
    d, h = cache[IN].shape[-1], cache["blocks.1.attn.hook_pattern"].shape[1]
    spec = registry.build("multitoken_transcoder", d_in=d, d_sae=16, d_out=d, n_heads=h, n_ctx=8, k=4)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    np.testing.assert_allclose(np.asarray(mt.splice(lm, 1, sae, keep_error=True)(tokens)), base, rtol=1e-5, atol=1e-5)
    spliced = sites.run_with_cache(mt.splice(lm, 1, sae), tokens, [OUT])[1][OUT]
    want = spec.apply(sae.params, cache[IN], cache["blocks.1.attn.hook_pattern"])
    np.testing.assert_allclose(np.asarray(spliced), np.asarray(want), rtol=1e-5, atol=1e-6)
    # the splice is length-agnostic: a 5-token prompt works with an MTC trained on 8-token contexts
    assert np.asarray(mt.splice(lm, 1, sae)(tokens[:, :5])).shape == (1, 5, base.shape[-1])


def _config(path, steps=400, batch=32, checkpoint_every=None, lr=None, **sae):
    sae = {"architecture": "multitoken_transcoder", "d_sae": 256, "k": 4, **sae}
    return C.from_dict({"sae": sae, "train": {"steps": steps, "batch_size": batch, "log_every": 50,
                                               "checkpoint_every": checkpoint_every or steps, "lr": lr, "norm_batches": 2, "b_dec_samples": 2048,
                                               "dead_tokens": 20_000},
                        "data": {"source": "contexts", "path": str(path)}})


@pytest.fixture(scope="module")
def induction_mtc(shared_tmp, induction_model):
    """The induction model, 512 training contexts of layer 1 (repeated random blocks), and an MTC
    trained on them through the train loop: once per session (xdist workers share the directory;
    a later worker reopens the finished run, which changes nothing)."""
    from filelock import FileLock

    cfg, lm, _ = induction_model
    root = shared_tmp / "mtc_induction"
    with FileLock(str(root) + ".lock"):
        if not (root / "ctx" / "meta.json").is_file():
            tokens = np.concatenate([induction.batch(cfg, jax.random.key(100 + i)) for i in range(8)])
            contexts.save(str(root / "ctx"), mt.contexts_of(lm, tokens, 1, batch_windows=128),
                          {"in_sites": [IN], "out_sites": [OUT], "model": "induction"})
        run = loop.train(_config(root / "ctx"), str(root / "run"), mesh=_one_device(), progress=False)
    return cfg, lm, root, run


def test_replaces_the_induction_layer_and_each_copy_is_carried_by_its_source_latents(induction_mtc):
    cfg, lm, root, run = induction_mtc
    sae = mt_io.load(str(root / "run" / "export"))
    held = mt.contexts_of(lm, induction.batch(cfg, jax.random.key(999)), 1)
    rec = mt.reconstruction(sae, held)
    assert rec["fvu"] < 0.05 and rec["l0"] == 4.0, rec  # measured 0.012
    r = mt.induction_check(lm, sae, cfg)
    # spliced in place of layer 1's attention, in-context copying survives (measured 0.0215 vs 0.0213)
    assert r["loss_mtc"] < r["loss_model"] + 0.05 and r["loss_attention_zeroed"] > 4.0, r
    # the latents route through the two induction heads, not the identity (measured 0.85 / 0.15)
    assert r["induction_heads"] == [0, 1] and r["induction_loading"] > 0.7, r
    # the copy of r_{i+1} is carried by the <= k latents active at its first occurrence: ablating them
    # costs ~chance (ln 63 = 4.14; measured 4.49), ablating as many other active latents nothing (0.021)
    assert r["latents_per_source_token"] <= 4
    assert r["loss_source_latents_ablated"] > 3.0 and r["loss_random_latents_ablated"] < 0.1, r
    # the export is the run's state (normalisation folded in) with its sites
    meta = mt_io.metadata(str(root / "run" / "export"))
    assert meta["in_sites"] == [IN] and meta["out_sites"] == [OUT] and meta["training_tokens"] == 400 * 32 * 33
    x, y = run.source.batch(10_000)
    got = np.asarray(sae.forward(jnp.asarray(x)))[:, 1:]
    assert ((y[:, 1:] - got) ** 2).sum() / ((y[:, 1:] - y[:, 1:].mean((0, 1))) ** 2).sum() < 0.05


@pytest.mark.parametrize("activation,mixing", [("relu", "learned"), ("topk", "top1")])
def test_relu_and_top1_variants_train(induction_mtc, tmp_path, activation, mixing):
    cfg, lm, root, _ = induction_mtc
    over = {"activation": activation, "head_mixing": mixing}
    if activation == "relu":
        over.update(sparsity_coefficient=0.1, k=None, lr=1e-3)  # the published 5e-5 is for long runs
    run = loop.train(_config(root / "ctx", steps=150, **over), str(tmp_path), mesh=_one_device(), progress=False)
    first, last = run.metrics[0], run.metrics[-1]
    assert last["fvu"] < 0.5 * first["fvu"] and last["fvu"] < 0.4, (first, last)
    sae = mt_io.load(str(tmp_path / "export"))
    assert sae.spec.activation == activation and sae.spec.head_mixing == mixing
    if mixing == "top1":  # each latent is bound to exactly one head
        c = np.asarray(sae.spec.head_weights(sae.params))
        assert np.all((c == 0) | (c == 1)) and np.all(c.sum(-1) == 1)


def test_interrupted_run_resumes_bit_identically(induction_mtc, tmp_path, monkeypatch):
    _, _, root, _ = induction_mtc
    cfg = _config(root / "ctx", steps=12, batch=16, checkpoint_every=4, d_sae=64)
    loop.train(cfg, str(tmp_path / "full"), mesh=_one_device(), progress=False)
    train_killed_then_resumed(cfg, str(tmp_path / "cut"), monkeypatch, 7, mesh=_one_device())
    assert_same_params(mt_io.load(str(tmp_path / "full" / "export")), mt_io.load(str(tmp_path / "cut" / "export")))
    assert loop.train(cfg, str(tmp_path / "cut"), mesh=_one_device(), progress=False).already_finished


def test_sharded_over_latents_equals_one_device(induction_mtc, tmp_path, n_devices):
    _, _, root, _ = induction_mtc
    cfg = _config(root / "ctx", steps=3, batch=16, d_sae=64)
    one = loop.train(cfg, str(tmp_path / "one"), mesh=_one_device(), progress=False)
    eight = loop.train(cfg, str(tmp_path / "eight"), mesh=sharding.make_mesh(2, 4), progress=False)
    assert eight.state.params["head_logits"].sharding.spec == jax.sharding.PartitionSpec("model", None)
    for name in one.state.params:
        np.testing.assert_allclose(np.asarray(one.state.params[name]), np.asarray(eight.state.params[name]),
                                   rtol=1e-4, atol=2e-6, err_msg=name)


def test_trains_from_the_stream_of_a_language_model(tmp_path, tiny_lm_dir):
    """data.source=stream with the layer's sites: each batch is B windows of the corpus through the
    LM, equal to collecting the same windows by hand; the run exports the MTC with its sites."""
    lm_dir = tiny_lm_dir
    data = {"source": "stream", "in_sites": [IN], "out_sites": [OUT],
            "lm": {"path": lm_dir, "sites": [OUT], "context": 16, "batch_windows": 4, "windows": 64}}
    cfg = C.from_dict({"sae": {"architecture": "multitoken_transcoder", "d_sae": 32, "k": 4},
                       "train": {"steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6,
                                 "norm_batches": 1, "b_dec_samples": 64}, "data": data})
    run = loop.train(cfg, str(tmp_path / "run"), mesh=_one_device(), progress=False)
    src = run.source
    assert (src.n_heads, src.n_ctx, src.d_in) == (4, 16, 32)
    x, y = src.batch(3)
    lm = models.load(lm_dir)
    want = mt.contexts_of(lm, src.tokens[src._windows.rows(3)], 1)
    np.testing.assert_allclose(x, mt.packed(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, want["y"], rtol=1e-5, atol=1e-6)
    sae = mt_io.load(str(tmp_path / "run" / "export"))
    assert (sae.spec.n_heads, sae.spec.n_ctx) == (4, 16)
    cfg_json = json.load(open(tmp_path / "run" / "export" / "cfg.json"))
    assert cfg_json["metadata"]["in_sites"] == [IN] and cfg_json["metadata"]["hook_name"] == OUT


def test_bad_specs_and_configs_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="unknown head_mixing"):
        _spec(mixing="top2")
    with pytest.raises(ValueError, match="integer k"):
        _spec(k=2.5)
    spec = _spec()
    with pytest.raises(ValueError, match=r"n_ctx=4, d_in \+ n_heads \* n_ctx = 14"):
        spec.forward(spec.init(jax.random.key(0)), jnp.zeros((1, 4, 6)))
    base = {"sae": {"architecture": "multitoken_transcoder"}}
    with pytest.raises(ValueError, match="trains on whole contexts"):
        C.from_dict({**base, "data": {"source": "npy", "path": "x.npy"}}).validate()
    with pytest.raises(ValueError, match="replaces one attention layer"):
        C.from_dict({**base, "data": {"source": "stream"}}).validate()
    with pytest.raises(ValueError, match="of the same layer"):
        C.from_dict({**base, "data": {"source": "stream", "in_sites": ["blocks.0.ln1.hook_normalized"],
                                      "out_sites": [OUT]}}).validate()
    with pytest.raises(ValueError, match="is the data of sae.architecture=multitoken_transcoder"):
        C.from_dict({"data": {"source": "contexts", "path": str(tmp_path)}}).validate()
    with pytest.raises(FileNotFoundError, match="not a complete contexts directory"):
        loop.setup(C.from_dict({**base, "data": {"source": "contexts", "path": str(tmp_path)}}), _one_device())
