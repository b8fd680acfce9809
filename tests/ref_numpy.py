"""NumPy references for every architecture's forward pass and loss (float64), written
independently from docs/methods.md: no jaxsae code is imported here."""

import numpy as np


def relu(a):
    return np.maximum(a, 0.0)


def sse_mean(e):
    return np.mean(np.sum(e * e, axis=-1))


def pre(p, x, b_dec_in):
    xin = x - p["b_dec"] if b_dec_in else x
    return xin @ p["W_enc"] + p["b_enc"]


def decode(p, f):
    return f @ p["W_dec"] + p["b_dec"]


def relu_sae(p, x, y, lam, variant, b_dec_in):
    f = relu(pre(p, x, b_dec_in))
    yhat = decode(p, f) + (x @ p["W_skip"] if "W_skip" in p else 0)
    if variant == "2023":
        pen = np.mean(f.sum(-1))
    else:
        pen = np.mean(f @ np.linalg.norm(p["W_dec"], axis=-1))
    return f, yhat, sse_mean(y - yhat) + lam * pen


def topk_idx(a, k):
    # indices of the k largest per row (ties by lower index, like lax.top_k)
    order = np.argsort(-a, axis=-1, kind="stable")
    return order[:, :k]


def aux_k(p, a, e, dead, k_aux):
    """AuxK: residual e from the top min(k_aux, n_dead) dead pre-activations, no bias."""
    n_dead = int(dead.sum())
    if not n_dead:
        return 0.0
    aidx = topk_idx(np.where(dead[None], a, -np.inf), min(k_aux, n_dead))
    fa = np.zeros_like(a)
    np.put_along_axis(fa, aidx, relu(np.take_along_axis(a, aidx, -1)), -1)
    return np.sum((e - fa @ p["W_dec"]) ** 2) / np.sum((e - e.mean(0)) ** 2) * min(n_dead / k_aux, 1.0)


def topk_sae(p, x, y, k, dead, k_aux, alpha, b_dec_in, multi=False):
    a = pre(p, x, b_dec_in)
    idx = topk_idx(a, k)
    f = np.zeros_like(a)
    np.put_along_axis(f, idx, relu(np.take_along_axis(a, idx, -1)), -1)
    yhat = decode(p, f) + (x @ p["W_skip"] if "W_skip" in p else 0)
    loss = sse_mean(y - yhat)
    loss += alpha * aux_k(p, a, y - yhat, dead, k_aux)
    if multi:
        idx4 = topk_idx(a, 4 * k)
        f4 = np.zeros_like(a)
        np.put_along_axis(f4, idx4, relu(np.take_along_axis(a, idx4, -1)), -1)
        loss += sse_mean(y - decode(p, f4) - (x @ p["W_skip"] if "W_skip" in p else 0)) / 8
    return f, yhat, loss


def batchtopk_f(p, x, k, b_dec_in):
    a = relu(pre(p, x, b_dec_in))
    n_keep = int(np.floor(x.shape[0] * k))
    thr = np.sort(a.reshape(-1))[::-1][n_keep - 1]
    f = np.where((a >= thr) & (a > 0), a, 0.0)
    return f, thr


def batchtopk_sae(p, x, y, k, dead, k_aux, alpha, b_dec_in, groups=None):
    f, thr = batchtopk_f(p, x, k, b_dec_in)
    if groups is None:
        yhats = [decode(p, f)]
    else:
        yhats, m = [], 0
        for g in groups:
            m += g
            yhats.append(f[:, :m] @ p["W_dec"][:m] + p["b_dec"])
    rec = np.mean([sse_mean(y - yh) for yh in yhats])
    a = pre(p, x, b_dec_in)
    return f, yhats[-1], rec + alpha * aux_k(p, a, y - yhats[-1], dead, k_aux), thr


def jumprelu_sae(p, x, y, lam, b_dec_in):
    a = pre(p, x, b_dec_in)
    theta = np.exp(p["log_threshold"])
    f = a * (a > theta)
    yhat = decode(p, f)
    l0 = np.mean(np.sum(a > theta, axis=-1))
    return f, yhat, sse_mean(y - yhat) + lam * l0


def gated_sae(p, x, y, lam, b_dec_in):
    xc = x - p["b_dec"] if b_dec_in else x
    gate = xc @ p["W_enc"] + p["b_gate"]
    mag = xc @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"]
    f = (gate > 0) * relu(mag)
    yhat = decode(p, f)
    aux = sse_mean(y - (relu(gate) @ p["W_dec"] + p["b_dec"]))
    return f, yhat, sse_mean(y - yhat) + lam * np.mean(relu(gate).sum(-1)) + aux
