"""The JAX logistic-regression probe solves scikit-learn's LogisticRegression(C) objective (at least
as well as sklearn does: the same accuracy, weights equal on well-posed problems); SAEBench's
top-k selection and balanced one-vs-rest tasks."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from jaxsae.evals import probes


def _objective(x, y, w, b, c=1.0):
    m = np.where(y, 1.0, -1.0) * (x.astype(np.float64) @ np.asarray(w, np.float64) + float(b))
    return c * np.sum(np.logaddexp(0, -m)) + 0.5 * np.sum(np.asarray(w, np.float64) ** 2)


@pytest.mark.parametrize("n,d,spread,c", [(400, 5, 1.0, 1.0), (1500, 48, 10.0, 1.0), (800, 20, 3.0, 0.1)])
def test_probe_solves_sklearns_objective(n, d, spread, c):
    rng = np.random.default_rng(d)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.1, spread, size=d) + 2).astype(np.float32)
    score = x @ rng.normal(size=d) / np.sqrt(d) + rng.normal(size=n)
    y = (score > np.median(score)).astype(int)
    sk = LogisticRegression(C=c, max_iter=1000).fit(x, y)
    w, b = probes.fit_logistic(x, y, C=c)
    ours, theirs = _objective(x, y, w, b, c), _objective(x, y, sk.coef_[0], sk.intercept_[0], c)
    assert ours <= theirs * (1 + 1e-6)  # at least as close to the optimum
    assert abs(probes.accuracy(w, b, x, y) - sk.score(x, y)) <= 2 / n
    if spread == 1.0:  # well conditioned: the weights equal sklearn's run to full convergence
        tight = LogisticRegression(C=c, max_iter=100_000, tol=1e-12).fit(x.astype(np.float64), y)
        np.testing.assert_allclose(np.asarray(w), tight.coef_[0], atol=2e-4)
        assert float(b) == pytest.approx(tight.intercept_[0], abs=2e-4)


def test_top_k_picks_the_dimensions_whose_means_differ_most():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 10))
    y = rng.integers(0, 2, 600).astype(bool)
    x[y, 7] += 3.0
    x[y, 2] -= 1.5
    assert probes.top_k_by_mean_diff(x, y, 2).tolist() == [7, 2]
    w, b = probes.fit_logistic(x[:, [7]], y)  # one informative latent is enough
    assert probes.accuracy(w, b, x[:, [7]], y) > 0.9


def test_one_vs_rest_is_balanced_and_draws_negatives_from_every_class():
    labels = np.repeat(np.array(["a", "b", "c", "d"]), [50, 100, 100, 100])
    idx, y = probes.one_vs_rest(labels, "a", 30, np.random.default_rng(0))
    assert y.sum() == 30 and len(y) == 60 and (labels[idx[y == 1]] == "a").all()
    neg = labels[idx[y == 0]]
    assert set(neg) == {"b", "c", "d"} and max(np.unique(neg, return_counts=True)[1]) <= 10
    assert len(set(idx.tolist())) == 60
    with pytest.raises(ValueError, match="class 'a' has 50 rows, fewer than the 60"):
        probes.one_vs_rest(labels, "a", 60, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs both classes"):
        probes.fit_logistic(np.zeros((4, 2)), np.ones(4))


def test_balanced_class_weight_matches_sklearn():
    rng = np.random.default_rng(5)
    n, d = 600, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + rng.normal(size=n) > 2.0).astype(int)  # imbalanced
    assert 0.1 < y.mean() < 0.35
    tight = LogisticRegression(max_iter=100_000, tol=1e-12, class_weight="balanced").fit(x.astype(np.float64), y)
    w, b = probes.fit_logistic(x, y, class_weight="balanced")
    np.testing.assert_allclose(np.asarray(w), tight.coef_[0], atol=2e-4)
    assert float(b) == pytest.approx(tight.intercept_[0], abs=2e-4)
