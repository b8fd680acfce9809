"""Training machinery: optimiser constraints, schedules, data-derived init, dead counters, and a
short run of every architecture that lowers its loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import toy_config

from jaxsae import config as C
from jaxsae.train import data_init, loop, optim, recipes


def test_decoder_gradient_projection_is_orthogonal_to_rows():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    g = rng.standard_normal((10, 6)).astype(np.float32)
    tx = optim.project_decoder_grads()
    out, _ = tx.update({"W_dec": g}, tx.init({"W_dec": w}), {"W_dec": w})
    np.testing.assert_allclose(np.sum(out["W_dec"] * w, -1), 0.0, atol=1e-5)
    # the orthogonal part is untouched
    w_hat = w / np.linalg.norm(w, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["W_dec"], g - np.sum(g * w_hat, -1, keepdims=True) * w_hat, rtol=1e-5, atol=1e-6)


def test_lr_schedule_warmup_and_decay():
    s = recipes.Schedule(lr=1.0, b1=0.9, b2=0.999, eps=1e-8, lr_warmup_steps=10, lr_decay_steps=20,
                         sparsity_warmup_steps=50, grad_clip=1.0, total_steps=100, normalize="none")
    f = optim.lr_schedule(s)
    np.testing.assert_allclose([f(0), f(4), f(9), f(50), f(80), f(90), f(99)], [0.1, 0.5, 1, 1, 1, 0.5, 0.05], rtol=1e-6)
    np.testing.assert_allclose([optim.sparsity_scale(s, t) for t in (0, 25, 50, 90)], [0, 0.5, 1, 1])


def test_recipes_resolve_published_defaults_and_overrides():
    t = C.TrainConfig(steps=100_000)
    s = recipes.resolve("topk", "topk", 2**16, t)
    assert s.lr == pytest.approx(1e-4) and s.eps == 6.25e-10 and s.lr_decay_steps == 20_000
    j = recipes.resolve("jumprelu", "topk", 2**14, t)
    assert (j.lr, j.b1, j.sparsity_warmup_steps, j.normalize) == (7e-5, 0.0, 10_000, "unit_msn")
    r = recipes.resolve("relu", "topk", 2**14, t)
    assert r.sparsity_warmup_steps == 5_000  # 5% of the run (April update)
    o = recipes.resolve("topk", "topk", 2**14, C.TrainConfig(steps=1000, lr=0.1, lr_warmup_steps=7))
    assert (o.lr, o.lr_warmup_steps) == (0.1, 7)
    tc = recipes.resolve("transcoder", "jumprelu", 2**14, t)
    assert tc.lr == 7e-5


def _weiszfeld_np(x, iters=100):
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / np.maximum(np.linalg.norm(x - y, axis=-1), 1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if np.linalg.norm(y_new - y) < 1e-5:
            return y_new
        y = y_new
    return y


def test_geometric_median_matches_weiszfeld_and_resists_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5)) + 3.0
    x[:20] += 1000.0  # outliers drag the mean, not the median
    gm = np.asarray(data_init.geometric_median(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(gm, _weiszfeld_np(x), rtol=1e-3, atol=1e-3)
    assert np.linalg.norm(gm - 3.0) < 0.5 < np.linalg.norm(x.mean(0) - 3.0)


def test_norm_scale_schemes():
    rng = np.random.default_rng(0)
    x = 7.0 * rng.standard_normal((4000, 16))
    c = data_init.norm_scale(x, "expected_norm")
    assert np.linalg.norm(c * x, axis=-1).mean() == pytest.approx(4.0, rel=1e-6)
    c = data_init.norm_scale(x, "unit_msn")
    assert np.mean(np.sum((c * x) ** 2, -1)) == pytest.approx(1.0, rel=1e-6)
    assert data_init.norm_scale(x, "none") == 1.0


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka", "transcoder"])
def test_every_architecture_trains(arch, tmp_path):
    over = {"train": {"lr": 3e-3, "steps": 60}}
    if arch in ("relu", "gated"):  # lambda scales with the input norm: sqrt(16) = 4 here
        over["sae"] = {"sparsity_coefficient": 0.1}
    if arch == "jumprelu":
        over["sae"] = {"sparsity_coefficient": 1e-4, "bandwidth": 0.05, "threshold_init": 0.05}
    if arch == "matryoshka":
        over["sae"] = {"group_fractions": (0.25, 0.25, 0.5)}
    if arch == "transcoder":
        over["toy"] = {"d_out": 12}
    cfg = toy_config(arch, **over)
    run = loop.train(cfg, str(tmp_path), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(60))
    assert rows[-1]["fvu"] < 0.8 * rows[0]["fvu"], (rows[0], rows[-1])
    w = np.asarray(run.state.params["W_dec"])
    if run.spec.unit_norm_decoder:
        np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, rtol=1e-5)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["ground_truth_decoder"]["mmcs"] > 0
    assert (tmp_path / "export" / "cfg.json").exists()


def test_dead_latent_counters_count_tokens(tmp_path):
    cfg = toy_config("topk", steps=10, batch=64, d_sae=256, train={"log_every": 1, "dead_tokens": 10**9})
    run = loop.train(cfg, str(tmp_path), progress=False)
    since = np.asarray(run.state.dict_state["tokens_since_fired"])
    assert since.max() <= 640 and since.min() == 0
    assert set(np.unique(since) % 64) == {0}  # whole batches of tokens
    # a latent that never fired has counted every token seen
    never = since == 640
    assert never.sum() > 0


def test_toy_generator_structure():
    from jaxsae.toy.synthetic import ToySpec, make_features, sample

    spec = ToySpec(d_in=8, n_features=40, firing_prob=0.2, correlated_pairs=3, hierarchy_children=3, noise_std=0.0)
    feats = make_features(spec, jax.random.key(0))
    x, y, c = sample(feats, jax.random.key(1), 20000)
    fire = np.asarray(c) > 0
    np.testing.assert_allclose(np.asarray(x), np.asarray(c) @ np.asarray(feats.dirs_nd), rtol=1e-4, atol=1e-5)
    # correlated pairs co-fire far above chance
    both = (fire[:, 0] & fire[:, 1]).mean()
    assert both > 2 * fire[:, 0].mean() * fire[:, 1].mean()
    # children fire only with their parent
    parent = np.asarray(feats.parent_n)
    kids = np.where(parent >= 0)[0]
    assert len(kids) > 0 and not np.any(fire[:, kids] & ~fire[:, parent[kids]])
    # rates near the configured ones for unstructured features
    free = np.where(parent < 0)[0][6:]
    np.testing.assert_allclose(fire[:, free].mean(0), np.asarray(feats.probs_n)[free], atol=0.02)


def test_optax_chain_keeps_adam_state_shapes():
    s = recipes.Schedule(1e-3, 0.9, 0.999, 1e-8, 0, 0, 0, 1.0, 10, "none")
    tx = optim.make_optimizer(s, unit_norm_decoder=True)
    params = {"W_dec": jnp.ones((4, 3)), "W_enc": jnp.ones((3, 4))}
    state = tx.init(params)
    shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
    assert (4, 3) in shapes and (3, 4) in shapes
    assert isinstance(optax.tree.norm(params), jax.Array)


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "topk"])
def test_export_folds_scaling_and_conversions_exactly(arch, tmp_path):
    """The exported dictionary on raw activations equals the trained one on scaled activations
    (un-scaled), with BatchTopK evaluated as JumpReLU at its learned threshold."""
    from jaxsae.train.export import inference_sae

    cfg = toy_config(arch, steps=30, train={"lr": 3e-3}, sae={"sparsity_coefficient": 0.1} if arch == "relu" else {},
                     toy={"magnitude_mean": 40.0, "magnitude_std": 5.0})
    run = loop.train(cfg, str(tmp_path), progress=False)
    st = jax.device_get(run.state)
    c = float(st.scale_in)
    assert abs(c - 1.0) > 0.1  # the normalisation really is doing something here
    x, _ = run.source.batch(10_000)
    sae = inference_sae(run.spec, run.state)
    if arch == "batchtopk":
        thr = float(st.dict_state["threshold"])
        assert thr > 0 and sae.spec.name == "jumprelu"
        a = np.maximum(np.asarray(run.spec.pre_acts(st.params, c * x)), 0)
        f_want = np.where(a > thr, a, 0)
        np.testing.assert_allclose(sae.encode(x), f_want, rtol=1e-4, atol=1e-4)
        want = (f_want @ np.asarray(st.params["W_dec"]) + np.asarray(st.params["b_dec"])) / c
    else:
        want = np.asarray(run.spec.forward(st.params, c * x)) / c
    np.testing.assert_allclose(sae(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if arch == "relu":  # April-2024 ReLU exports unit-norm decoder rows
        np.testing.assert_allclose(np.linalg.norm(sae.params["W_dec"], axis=-1), 1.0, rtol=1e-5)


def test_nan_input_rows_are_refused_before_training(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    x[5, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    cfg = C.from_dict({"sae": {"architecture": "relu", "d_sae": 16},
                       "train": {"steps": 4, "batch_size": 64, "log_every": 2, "normalize": "none",
                                 "b_dec_init": "zeros", "b_dec_samples": 64},
                       "data": {"source": "npy", "path": str(tmp_path / "x.npy")}})
    with pytest.raises(ValueError, match=r"x.npy' has 1 row\(s\) holding nan/inf \(first: row 5\)"):
        loop.train(cfg, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
