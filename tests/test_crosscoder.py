"""Crosscoders: the math against NumPy, recovery of shared and planted layer-exclusive features on
the layered toy (the decoder-norm analysis classes them), the export read back, the relative-norm
statistics on hand-made decoders, and training across two models' stores of the same windows."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import toy_config

from jaxsae import config as C
from jaxsae import sharding
from jaxsae.dictionaries import registry
from jaxsae.dictionaries.base import LossContext
from jaxsae.evals import crosscoder_diff
from jaxsae.interop import crosscoder as cc_io
from jaxsae.train import loop

L, D, F, B = 2, 8, 16, 24


def _params(spec, seed=0):
    p = {k: np.asarray(v) for k, v in spec.init(jax.random.key(seed)).items()}
    rng = np.random.default_rng(seed)
    p["b_enc"] = rng.normal(0, 0.3, F).astype(np.float32)
    p["W_dec"] = (p["W_dec"] * rng.uniform(0.2, 3.0, (F, L, 1))).astype(np.float32)  # unequal norms per layer
    return p


@pytest.mark.parametrize("activation", ["batchtopk", "relu"])
def test_forward_and_loss_match_numpy(activation):
    spec = registry.build("crosscoder", d_in=D, d_sae=F, n_layers=L, activation=activation, k=3,
                          sparsity_coefficient=0.1)
    p = _params(spec)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    pre = np.einsum("bld,ldf->bf", x, p["W_enc"]) + p["b_enc"]
    a = np.maximum(pre, 0)
    norm_sum = np.linalg.norm(p["W_dec"], axis=-1).sum(-1)  # [F]
    if activation == "batchtopk":  # the floor(B k) largest of a * sum_l ||d^l|| over the whole batch
        score = a * norm_sum
        thr = np.sort(score.ravel())[::-1][B * 3 - 1]
        a = np.where((score >= thr) & (score > 0), a, 0)
    np.testing.assert_allclose(np.asarray(spec.encode(p, x)), a, rtol=1e-5, atol=1e-6)
    xhat = np.einsum("bf,fld->bld", a, p["W_dec"]) + p["b_dec"]
    np.testing.assert_allclose(np.asarray(spec.decode(p, a)), xhat, rtol=1e-5, atol=1e-5)
    out = spec.loss(p, x, x, LossContext(jnp.float32(1.0), jnp.zeros((F,), bool)))
    rec = np.mean(((x - xhat) ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(float(out.metrics["loss_rec"]), rec, rtol=1e-5)
    if activation == "relu":  # L1 weighted by the *sum* of per-layer decoder norms
        np.testing.assert_allclose(float(out.loss), rec + 0.1 * np.mean((a * norm_sum).sum(-1)), rtol=1e-5)
    grads = jax.grad(lambda q: spec.loss(q, x, x, LossContext(jnp.float32(1.0), jnp.zeros((F,), bool))).loss)(p)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())


def test_relative_norm_classes_hand_made_decoders():
    w = np.zeros((4, 2, 3))
    w[0, 0] = [1, 0, 0]  # only model A
    w[1, 1] = [0, 2, 0]  # only model B
    w[2, 0], w[2, 1] = [1, 0, 0], [1, 0, 0]  # both, same direction
    w[3, 0], w[3, 1] = [1, 0, 0], [0, 0, 0.5]  # A twice as strong, other direction
    delta = crosscoder_diff.relative_norm(w)
    np.testing.assert_allclose(delta, [0.0, 1.0, 0.5, 0.25])
    r = crosscoder_diff.analyse(w)
    assert r["counts"] == {"a_only": 1, "b_only": 1, "shared": 1, "other": 1}
    assert r["shared_cosine_mean"] == pytest.approx(1.0)
    np.testing.assert_allclose(crosscoder_diff.norm_shares(w)[3], [2 / 3, 1 / 3])


def _toy_cfg(steps=1500, **over):
    sae = {"activation": "batchtopk", "d_sae": 128, "k": 2}
    sae.update(over.pop("sae", {}))
    return toy_config("crosscoder", steps=steps, batch=512, sae=sae,
                      train={"lr": 3e-3, "log_every": 100, "checkpoint_every": steps, "b_dec_samples": 1024,
                             "dead_tokens": 20_000},
                      toy={"d_in": 16, "n_features": 64, "firing_prob": 0.03, "layers": 2, "layer_mode": "crosscoder",
                           "exclusive_fraction": 0.3}, **over)


def test_finds_shared_and_planted_exclusive_features(tmp_path):
    """Two 'models' (toy layers) share 45 features; 19 live in one of them only. The BatchTopK
    crosscoder recovers the features, and the relative decoder norm classes each recovered
    feature correctly (measured: 95% recovered, exclusive 0.89, shared 0.98)."""
    run = loop.train(_toy_cfg(), str(tmp_path), mesh=sharding.make_mesh(1, 1, jax.devices()[:1]), progress=False)
    gt = json.load(open(tmp_path / "summary.json"))["ground_truth"]
    assert gt["decoder"]["frac_recovered"] >= 0.9, gt
    assert gt["exclusive_found"] >= 0.8 and gt["shared_found"] >= 0.9, gt
    sae = cc_io.load(str(tmp_path / "export"))
    assert sae.spec.activation == "jumprelu"  # BatchTopK exported with its threshold
    x, _ = run.source.batch(10_000)
    fvu = float(((x - sae.forward(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu < 0.15, fvu  # raw activations: the per-layer scaling is folded in, the threshold carried
    l0 = float((np.asarray(sae.encode(x)) > 0).sum(-1).mean())
    assert 1.0 <= l0 <= 3.5, l0


def test_bad_configs_say_what_to_change():
    with pytest.raises(ValueError, match="toy.layers"):
        C.from_dict({"sae": {"architecture": "crosscoder", "activation": "batchtopk"}})
    with pytest.raises(ValueError, match="unknown for a crosscoder"):
        C.from_dict({"sae": {"architecture": "crosscoder", "activation": "topk"},
                     "data": {"toy": {"layers": 2, "layer_mode": "crosscoder"}}})
    with pytest.raises(ValueError, match="data.paths"):
        C.from_dict({"sae": {"architecture": "crosscoder", "activation": "batchtopk"},
                     "data": {"source": "store", "path": "x"}})


@pytest.mark.slow
def test_trains_across_two_models_stores_of_the_same_windows(tmp_path):
    """Model diffing on stores: a tiny Llama and a copy whose layer-1 MLP was changed, harvested
    on the same windows; batches stack the two models' rows of the same tokens; stores of other
    windows are refused by name."""
    import torch
    import transformers
    from tiny_lm import make_tiny_lm

    from jaxsae.config import LMConfig, TextConfig
    from jaxsae.data import harvest as harvest_lib
    from jaxsae.data.store import StoreError
    from jaxsae.data.store_source import ModelsStoreSource

    a = make_tiny_lm(str(tmp_path / "a"), layers=2)
    b = str(tmp_path / "b")
    shutil.copytree(a, b)
    hf = transformers.AutoModelForCausalLM.from_pretrained(b)
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    hf.save_pretrained(b)
    site = "blocks.1.hook_resid_post"
    for name, lm_dir in (("sa", a), ("sb", b)):
        harvest_lib.harvest(LMConfig(path=lm_dir, sites=(site, "blocks.0.hook_resid_post"), context=32, batch_windows=8,
                                     windows=16), TextConfig(), str(tmp_path / name), progress=False)
    src = ModelsStoreSource((str(tmp_path / "sa"), str(tmp_path / "sb")), site, seed=0, batch_size=64)
    x, y = src.batch(0)
    assert x.shape == (64, 2, 32) and np.abs(x[:, 0] - x[:, 1]).max() > 0
    # layer 0 is untouched, so the two stores agree there row for row: the rows are the same tokens
    same = ModelsStoreSource((str(tmp_path / "sa"), str(tmp_path / "sb")), "blocks.0.hook_resid_post", 0, 64)
    x0, _ = same.batch(3)
    np.testing.assert_allclose(x0[:, 0], x0[:, 1], rtol=1e-5, atol=1e-5)
    harvest_lib.harvest(LMConfig(path=b, sites=(site,), context=32, batch_windows=8, windows=8), TextConfig(),
                        str(tmp_path / "other"), progress=False)
    with pytest.raises(StoreError, match="other token windows"):
        ModelsStoreSource((str(tmp_path / "sa"), str(tmp_path / "other")), site, 0, 64)
    cfg = C.from_dict({"sae": {"architecture": "crosscoder", "activation": "batchtopk", "d_sae": 64, "k": 4,
                               "threshold_start_step": 2},
                       "train": {"steps": 8, "batch_size": 64, "log_every": 4, "checkpoint_every": 8,
                                 "norm_batches": 2, "b_dec_samples": 128},
                       "data": {"source": "store", "paths": [str(tmp_path / "sa"), str(tmp_path / "sb")],
                                "site": site}})
    loop.train(cfg, str(tmp_path / "run"), mesh=sharding.make_mesh(1, 1, jax.devices()[:1]), progress=False)
    sae = cc_io.load(str(tmp_path / "run" / "export"))
    assert sae.spec.n_layers == 2
    meta = json.load(open(tmp_path / "run" / "export" / "cfg.json"))["metadata"]
    assert [os.path.basename(m) for m in meta["models"]] == ["a", "b"]
    r = crosscoder_diff.analyse(np.asarray(sae.params["W_dec"]))
    assert sum(r["counts"].values()) == 64
