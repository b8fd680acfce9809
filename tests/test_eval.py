"""Core evaluation: the streaming metrics equal their direct NumPy formulas; a dictionary that
reconstructs exactly recovers all of the CE loss with zero KL, a zero dictionary recovers none; the
end-to-end evaluation of a store-trained export writes metrics.json, plots and a self-contained
HTML report with contexts."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_lm import make_tiny_lm

from jaxsae import dictionaries as D
from jaxsae.config import LMConfig, TextConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import tokens as tokens_lib
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import core

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(str(tmp_path_factory.mktemp("lm")))


def test_streaming_metrics_equal_the_direct_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)) + 3.0  # an offset mean: the denominator must subtract it
    x_hat = 0.8 * x + rng.normal(scale=0.3, size=x.shape)
    f = np.maximum(rng.normal(size=(300, 20)) - 1.0, 0)
    window = np.arange(300) // 10  # rows of 30 windows of 10 tokens
    s = core._Stream(8, 20)
    for i in range(0, 300, 60):  # whole windows per batch, as the evaluation feeds them
        s.add(x[i : i + 60], x_hat[i : i + 60], f[i : i + 60], i, window_n=window[i : i + 60])
    m = s.metrics(8)
    # SAEBench's per-token forms, batch by batch
    ev_legacy, mse_sb = [], []
    for i in range(0, 300, 60):
        xb, eb = x[i : i + 60], (x - x_hat)[i : i + 60]
        sse = (eb**2).sum(1)
        ev_legacy += list(1 - sse / ((xb - xb.mean(0)) ** 2).sum(1))
        mse_sb += list(sse / len(xb))
    assert m["explained_variance_legacy"] == pytest.approx(np.mean(ev_legacy))
    assert m["mse_saebench"] == pytest.approx(np.mean(mse_sb))
    assert m["l2_norm_in"] == pytest.approx(np.linalg.norm(x, axis=1).mean())
    assert m["l2_norm_out"] == pytest.approx(np.linalg.norm(x_hat, axis=1).mean())
    dens = (f > 0).mean(0)
    assert m["frac_alive"] == pytest.approx((dens > 0).mean())
    assert m["normalized_freq_over_1_percent"] == pytest.approx(dens[dens > 0.01].sum() / dens.sum())
    fired_w = np.array([(f[window == w] > 0).any(0) for w in range(30)]).sum(0)
    want = np.where(fired_w > 0, (f > 0).sum(0) / np.maximum(fired_w, 1), np.nan)
    np.testing.assert_allclose(s.consistent_activation(), want)
    err = ((x - x_hat) ** 2).sum()
    assert m["fvu"] == pytest.approx(err / ((x - x.mean(0)) ** 2).sum(), rel=1e-10)
    assert m["l2_loss"] == pytest.approx(err / 300)
    assert m["mse"] == pytest.approx(err / 300 / x.shape[-1])
    cos = (x * x_hat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
    assert m["cosine_similarity"] == pytest.approx(cos.mean())
    assert m["l2_ratio"] == pytest.approx((np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x, axis=1)).mean())
    assert m["relative_reconstruction_bias"] == pytest.approx((x_hat**2).sum() / (x * x_hat).sum())
    assert m["l0"] == pytest.approx((f > 0).sum(1).mean()) and m["l1"] == pytest.approx(f.sum(1).mean())
    p = (f > 0).mean(0)
    assert m["dead_fraction"] == pytest.approx((p == 0).mean())
    assert m["dense_fraction_over_10_percent"] == pytest.approx((p > 0.1).mean())
    for latent in (0, 7):  # top contexts: the largest activations, largest first
        want = np.sort(f[:, latent][f[:, latent] > 0])[::-1][: core.TOP_CONTEXTS]
        np.testing.assert_allclose([v for v, _ in sorted(s.top[latent], reverse=True)], want)


def _windows(lm_dir):
    lm, tok = harvest_lib.load_lm(LMConfig(path=lm_dir))
    return lm, tok, harvest_lib.token_windows(TextConfig(), tok, 32, 1)


def _relu_sae(w_enc, w_dec):
    d, f = w_enc.shape
    spec = D.build("relu", d_in=d, d_sae=f)
    params = {"W_enc": jnp.asarray(w_enc), "b_enc": jnp.zeros(f), "W_dec": jnp.asarray(w_dec), "b_dec": jnp.zeros(d)}
    return SAE(spec, {k: params[k] for k in spec.init(jax.random.key(0))})


def test_exact_and_zero_dictionaries_bound_the_downstream_metrics(lm_dir):
    lm, tok, ds = _windows(lm_dir)
    eye = np.eye(32, dtype=np.float32)
    exact = _relu_sae(np.concatenate([eye, -eye], 1), np.concatenate([eye, -eye], 0))  # x = relu(x) - relu(-x)
    r = core.evaluate(lm, exact, SITE, ds, 8, 4, tokens_lib.special_ids(tok), 8, progress=False)["metrics"]
    assert r["fvu"] < 1e-10 and r["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5) and abs(r["kl_div"]) < 1e-8
    assert abs(r["delta_lm_loss"]) < 1e-5 and r["ce_loss_zero_ablation"] > r["ce_loss_clean"]
    # BOS is never an input row nor a target (targets: the 31 text tokens after each window's BOS)
    assert r["n_tokens"] == 8 * 31 and r["downstream_tokens"] == 8 * 31
    zero = _relu_sae(np.zeros((32, 8), np.float32), np.zeros((8, 32), np.float32))
    z = core.evaluate(lm, zero, SITE, ds, 8, 4, tokens_lib.special_ids(tok), 8, progress=False)["metrics"]
    # nothing reconstructed: the error is all of |x|^2, at least the variance about the mean
    assert z["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5) and z["fvu"] >= 1.0 and z["dead_fraction"] == 1.0
    assert z["kl_div"] == pytest.approx(z["kl_div_zero_ablation"], rel=1e-5) and z["kl_div_score"] == pytest.approx(0, abs=1e-5)


def test_harvest_train_evaluate_writes_the_report(lm_dir, tmp_path):
    from jaxsae import config as C
    from jaxsae.evals.run import evaluate_export
    from jaxsae.train import loop

    lm_cfg = LMConfig(path=lm_dir, sites=(SITE,), context=32, batch_windows=8, windows=64)
    harvest_lib.harvest(lm_cfg, TextConfig(), str(tmp_path / "store"), progress=False)
    cfg = C.from_dict({"sae": {"architecture": "topk", "d_sae": 128, "k": 8},
                       "train": {"steps": 150, "batch_size": 128, "log_every": 50, "checkpoint_every": 150,
                                 "dead_tokens": 4000},
                       "data": {"source": "store", "path": str(tmp_path / "store"), "lm": {"path": lm_dir, "sites": [SITE],
                                "context": 32, "batch_windows": 8}}})
    loop.train(cfg, str(tmp_path / "run"), progress=False)
    out = str(tmp_path / "run" / "eval")
    m = evaluate_export(str(tmp_path / "run" / "export"), cfg.data, out, windows=16, downstream_windows=8,
                        n_latents=3, progress=False)
    assert m["site"] == SITE and m["l0"] == pytest.approx(8, abs=0.01)
    assert 0 < m["fvu"] < 0.8 and m["ce_loss_recovered"] > 0.3, m
    saved = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("ce_loss_recovered", "kl_div", "l0", "fvu", "dead_fraction"):
        assert np.isfinite(saved[key])
    for png in ("density_histogram.png", "l0_histogram.png"):
        assert open(os.path.join(out, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 2 and page.count("<h3>latent ") == 3
    # the same evaluation in SAEBench's schema, loadable by SAEBench's own output class
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    from jaxsae.evals import results

    core_json = results.read(os.path.join(out, "evals", "core.json"))
    parsed = CoreEvalOutput(**core_json)
    assert parsed.eval_type_id == "core" and len(parsed.eval_result_details) == 128
    r = core_json["eval_result_metrics"]
    assert r["model_performance_preservation"]["ce_loss_score"] == pytest.approx(saved["ce_loss_recovered"])
    assert r["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(saved["kl_div"])
    assert r["reconstruction_quality"]["explained_variance"] == pytest.approx(1 - saved["fvu"])
    assert r["sparsity"]["l0"] == pytest.approx(saved["l0"])
    assert "explained_variance" in core_json["eval_config"]["jaxsae"]["differences_from_saebench"]
    dens = [d["feature_density"] for d in core_json["eval_result_details"]]
    assert np.mean(np.array(dens) == 0) == pytest.approx(saved["dead_fraction"])
    assert "src='http" not in page and "<span title=" in page
    # the dashboard alone (no core pass to share): its own forward over the same windows; a rerun
    # with nothing changed rewrites nothing
    from jaxsae.evals.run import evaluate
    from jaxsae.report import dashboard

    got = evaluate(str(tmp_path / "run" / "export"), cfg.data, out, ("dashboard",), windows=16, n_latents=4,
                   progress=False)["dashboard"]
    path = os.path.join(out, "dashboard.html")
    assert len(got["latents"]) == 4 and dashboard.latents_of(path) == got["latents"]
    before = os.stat(path).st_mtime_ns
    again = evaluate(str(tmp_path / "run" / "export"), cfg.data, out, ("dashboard",), windows=16, n_latents=4,
                     progress=False)["dashboard"]
    assert again == got and os.stat(path).st_mtime_ns == before
