"""Ground truth: the recovery metric on hand-built cases, and TopK recovering known features."""

import json
import time

import jax
import numpy as np
import pytest

from jaxsae import config as C
from jaxsae import sharding
from jaxsae.evals.ground_truth import max_cosines, recovery
from jaxsae.train import loop


def test_recovery_metric_hand_built():
    g = np.eye(4)
    assert recovery(g[[2, 0, 3, 1]] * 5.0, g)["mmcs"] == pytest.approx(1.0)  # permutation and scale free
    half = recovery(g[:2], g)
    assert half["mmcs"] == pytest.approx(0.5) and half["frac_recovered"] == 0.5
    assert half["mmcs_reverse"] == pytest.approx(1.0)  # asymmetric: each learned row matches
    tilted = np.array([[1.0, 1.0, 0, 0]])
    np.testing.assert_allclose(max_cosines(tilted, g[:1]), [1 / np.sqrt(2)])
    dup = recovery(np.stack([g[0], g[0], g[1]]), g[:2])
    assert dup["mmcs"] == pytest.approx(1.0) and dup["mmcs_reverse"] == pytest.approx(1.0)


@pytest.mark.slow
def test_topk_recovers_the_true_features(tmp_path):
    cfg = C.from_dict({
        "sae": {"architecture": "topk", "d_sae": 1024, "k": 8},
        "train": {"steps": 800, "batch_size": 1024, "lr": 3e-3, "dead_tokens": 200_000, "log_every": 100,
                  "checkpoint_every": 800, "b_dec_samples": 4096, "norm_batches": 4},
        "data": {"source": "toy", "toy": {"d_in": 64, "n_features": 512, "firing_prob": 0.01}},
    })
    t0 = time.time()
    loop.train(cfg, str(tmp_path), mesh=sharding.make_mesh(1, 1, jax.devices()[:1]), progress=False)
    elapsed = time.time() - t0
    gt = json.load(open(tmp_path / "summary.json"))["ground_truth_decoder"]
    assert gt["mmcs"] >= 0.95, gt
    assert gt["frac_recovered"] >= 0.9, gt
    print(f"TopK toy recovery: {gt} in {elapsed:.1f}s")
