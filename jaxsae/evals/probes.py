"""Linear probes for the probing evaluations (sparse probing, SCR, TPP), in JAX.

`fit_logistic` minimises exactly scikit-learn's `LogisticRegression(penalty="l2", C=C)` objective,

    C * sum_i log(1 + exp(-s_i (x_i . w + b))) + ||w||^2 / 2        (s_i = +-1; b not penalised),

with L-BFGS (optax) in one jitted loop, so its weights and accuracies are sklearn's (tested against
it) while running on the accelerator and vmapping over tasks. `top_k_by_mean_diff` is SAEBench's
feature selection (the k dimensions with the largest |mean_pos - mean_neg| on the training set) and
`one_vs_rest` its balanced binary task construction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit(x_nd, s_n, c, max_iter: int, tol):
    d = x_nd.shape[1]
    mean, scale = x_nd.mean(0), jnp.maximum(x_nd.std(0), 1e-6)  # the same optimum, a better-posed problem

    def objective(theta):  # in standardised coordinates: w = v / scale, b = a - mean . w
        v, a = theta[:d], theta[d]
        w = v / scale
        margin = s_n * (((x_nd - mean) / scale) @ v + a)
        return c * jnp.sum(jax.nn.softplus(-margin)) + 0.5 * jnp.sum(w * w)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        theta, state, _, it = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(theta, updates), state, jnp.max(jnp.abs(grad)), it + 1

    def keep_going(carry):
        _, _, gmax, it = carry
        return (it < max_iter) & (gmax > tol)

    theta0 = jnp.zeros((d + 1,), jnp.float32)
    theta, _, _, _ = jax.lax.while_loop(keep_going, step, (theta0, opt.init(theta0), jnp.float32(jnp.inf), 0))
    w = theta[:d] / scale
    return w, theta[d] - mean @ w


def fit_logistic(x_nd, y_n, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """(w [d], b) of an L2-regularised logistic regression of binary labels y (0/1 or bool)."""
    x_nd = jnp.asarray(x_nd, jnp.float32)
    y = np.asarray(y_n)
    if x_nd.ndim != 2 or len(y) != x_nd.shape[0]:
        raise ValueError(f"probe data must be [n, d] with n labels, got {tuple(x_nd.shape)} and {len(y)} labels")
    if len(np.unique(y)) != 2:
        raise ValueError(f"a binary probe needs both classes in its training set, got labels {np.unique(y)}")
    s = jnp.asarray(np.where(y.astype(bool), 1.0, -1.0), jnp.float32)
    return _fit(x_nd, s, jnp.float32(C), max_iter, jnp.float32(tol))


def predict(w_d, b, x_nd) -> np.ndarray:
    return np.asarray(jnp.asarray(x_nd, jnp.float32) @ w_d + b > 0)


def accuracy(w_d, b, x_nd, y_n) -> float:
    return float(np.mean(predict(w_d, b, x_nd) == np.asarray(y_n).astype(bool)))


def top_k_by_mean_diff(x_nd, y_n, k: int) -> np.ndarray:
    """Indices of the k dimensions whose class means differ most (|mean_pos - mean_neg|), largest first."""
    x = np.asarray(x_nd, np.float64)
    y = np.asarray(y_n).astype(bool)
    diff = np.abs(x[y].mean(0) - x[~y].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def one_vs_rest(labels_n, positive, n_per_side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, 0/1 labels) of a balanced binary task: `n_per_side` rows of class `positive` and as
    many negatives drawn evenly from every other class (SAEBench's construction)."""
    labels = np.asarray(labels_n)
    pos = np.nonzero(labels == positive)[0]
    others = [c for c in np.unique(labels) if c != positive]
    if len(pos) < n_per_side:
        raise ValueError(f"class {positive!r} has {len(pos)} rows, fewer than the {n_per_side} asked for")
    per = -(-n_per_side // len(others))
    neg = np.concatenate([rng.permutation(np.nonzero(labels == c)[0])[:per] for c in others])
    neg = rng.permutation(neg)[:n_per_side]
    if len(neg) < n_per_side:
        raise ValueError(f"the other classes have {len(neg)} rows, fewer than the {n_per_side} negatives asked for")
    idx = np.concatenate([rng.permutation(pos)[:n_per_side], neg])
    return idx, np.concatenate([np.ones(n_per_side, np.int32), np.zeros(n_per_side, np.int32)])
