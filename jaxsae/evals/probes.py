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
def _fit(x_nd, s_n, c, max_iter: int, tol, weight_n):
    d = x_nd.shape[1]
    mean, scale = x_nd.mean(0), jnp.maximum(x_nd.std(0), 1e-6)  # the same optimum, a better-posed problem

    def objective(theta):  # in standardised coordinates: w = v / scale, b = a - mean . w
        v, a = theta[:d], theta[d]
        w = v / scale
        margin = s_n * (((x_nd - mean) / scale) @ v + a)
        return c * jnp.sum(weight_n * jax.nn.softplus(-margin)) + 0.5 * jnp.sum(w * w)

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


def _binary_data(x_nd, y_n) -> tuple[jax.Array, np.ndarray]:
    x_nd = jnp.asarray(x_nd, jnp.float32)
    y = np.asarray(y_n)
    if x_nd.ndim != 2 or len(y) != x_nd.shape[0]:
        raise ValueError(f"probe data must be [n, d] with n labels, got {tuple(x_nd.shape)} and {len(y)} labels")
    if len(np.unique(y)) != 2:
        raise ValueError(f"a binary probe needs both classes in its training set, got labels {np.unique(y)}")
    return x_nd, y


def fit_logistic(x_nd, y_n, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4,
                 class_weight: str | None = None) -> tuple[jax.Array, jax.Array]:
    """(w [d], b) of an L2-regularised logistic regression of binary labels y (0/1 or bool).
    class_weight="balanced" weighs each row by n / (2 * rows of its class), as sklearn does."""
    x_nd, y = _binary_data(x_nd, y_n)
    yb = y.astype(bool)
    s = jnp.asarray(np.where(yb, 1.0, -1.0), jnp.float32)
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    weight = np.ones(len(y), np.float32)
    if class_weight == "balanced":
        weight = np.where(yb, len(y) / (2.0 * yb.sum()), len(y) / (2.0 * (~yb).sum())).astype(np.float32)
    return _fit(x_nd, s, jnp.float32(C), max_iter, jnp.float32(tol), jnp.asarray(weight))


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


@functools.partial(jax.jit, static_argnames=("batch", "epochs", "keep_best_test", "patience"))
def _fit_minibatch(x_nd, y_n, x_test, y_test, key, lr, l1, weight_decay, batch: int, epochs: int,
                   keep_best_test: bool, patience: int):
    n, d = x_nd.shape
    steps = -(-n // batch)
    opt = optax.adamw(lr, weight_decay=weight_decay)  # torch.optim.AdamW's defaults (b1 .9, b2 .999, eps 1e-8)
    # torch's nn.Linear starts at U(-1/sqrt(d), 1/sqrt(d)); the seeded draw below is its analogue
    kw, kb, key = jax.random.split(key, 3)
    bound = 1.0 / jnp.sqrt(d)
    params = {"w": jax.random.uniform(kw, (d,), minval=-bound, maxval=bound),
              "b": jax.random.uniform(kb, (), minval=-bound, maxval=bound)}

    def loss_fn(p, xb, yb, mb):
        logits = xb @ p["w"] + p["b"]
        bce = optax.sigmoid_binary_cross_entropy(logits, yb)
        return jnp.sum(bce * mb) / jnp.sum(mb) + l1 * jnp.sum(jnp.abs(p["w"]))

    grad_fn = jax.grad(loss_fn)

    def accuracy_of(p, x, y):
        return jnp.mean(((x @ p["w"] + p["b"]) > 0) == (y > 0.5))

    def epoch(carry, k):
        p, state, best_p, best_acc, since = carry
        order = jnp.concatenate([jax.random.permutation(k, n), jnp.zeros((steps * batch - n,), jnp.int32)])
        valid = (jnp.arange(steps * batch) < n).astype(jnp.float32)

        def step(c, i):
            p, state = c
            idx = jax.lax.dynamic_slice(order, (i * batch,), (batch,))
            mb = jax.lax.dynamic_slice(valid, (i * batch,), (batch,))
            g = grad_fn(p, x_nd[idx], y_n[idx], mb)
            updates, state = opt.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None

        (p, state), _ = jax.lax.scan(step, (p, state), jnp.arange(steps))
        acc = accuracy_of(p, x_test, y_test)
        better = (acc > best_acc) & (since < patience)  # early stopping: after `patience` flat epochs, frozen
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        since = jnp.where(better, 0, since + 1)
        return (p, state, best_p, jnp.where(better, acc, best_acc), since), None

    init = (params, opt.init(params), params, jnp.float32(-1.0), jnp.int32(0))
    (p, _, best_p, _, _), _ = jax.lax.scan(epoch, init, jax.random.split(key, epochs))
    return best_p if keep_best_test else p


def fit_minibatch(x_nd, y_n, *, batch: int = 16, epochs: int = 20, lr: float = 1e-3, l1: float = 1e-3,
                  weight_decay: float = 0.01, seed: int = 0, select_on=None,
                  patience: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(w [d], b) of SAEBench's SCR/TPP probe: a linear logit trained by AdamW on mean binary
    cross-entropy + l1 * ||w||_1, minibatches of `batch` (the batch size sets how much of a spurious
    correlation the probe learns: keep 16 to compare with SAEBench), `epochs` passes.
    The probe after the last epoch is returned. `select_on=(x_test, y_test)` instead keeps the epoch
    with the best accuracy there, as SAEBench does (model selection on its test set), stopping after
    `patience` epochs without a better one (SAEBench's early stopping)."""
    x_nd, y = _binary_data(x_nd, y_n)
    xt, yt = (x_nd[:1], y[:1]) if select_on is None else select_on
    p = _fit_minibatch(x_nd, jnp.asarray(y, jnp.float32), jnp.asarray(xt, jnp.float32),
                       jnp.asarray(np.asarray(yt), jnp.float32), jax.random.key(seed), jnp.float32(lr),
                       jnp.float32(l1), jnp.float32(weight_decay), batch, epochs, select_on is not None,
                       patience if patience is not None else epochs + 1)
    return p["w"], p["b"]
