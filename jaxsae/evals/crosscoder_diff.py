"""What a crosscoder says about the layers or models it spans (Lindsey et al. 2024; Minder et al.
2025, "Robustly identifying concepts introduced during chat fine-tuning using crosscoders").

For two models A and B (layers 0 and 1 of a model-diffing crosscoder), each latent's relative
decoder norm

  delta_i = ((||d_i^B|| - ||d_i^A||) / max(||d_i^A||, ||d_i^B||) + 1) / 2        in [0, 1]

is 0 for a latent only A uses, 1 for one only B uses and 1/2 for one both use equally. Latents are
classed A-only (delta < 0.1), B-only (> 0.9), shared (0.4 <= delta <= 0.6) or other; for shared
latents the cosine between d^A and d^B says whether they are the same direction in both. For more
than two layers, `norm_shares` gives each latent's share of its decoder norm in every layer.
"""

from __future__ import annotations

import numpy as np

EXCLUSIVE, SHARED = 0.1, (0.4, 0.6)


def decoder_norms(w_dec_fld: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(w_dec_fld, np.float64), axis=-1)  # [F, L]


def relative_norm(w_dec_fld: np.ndarray, a: int = 0, b: int = 1) -> np.ndarray:
    n = decoder_norms(w_dec_fld)
    na, nb = n[:, a], n[:, b]
    return 0.5 * ((nb - na) / np.maximum(np.maximum(na, nb), 1e-12) + 1.0)


def norm_shares(w_dec_fld: np.ndarray) -> np.ndarray:
    n = decoder_norms(w_dec_fld)
    return n / np.maximum(n.sum(-1, keepdims=True), 1e-12)


def classify(delta_f: np.ndarray) -> np.ndarray:
    out = np.full(delta_f.shape, "other", dtype=object)
    out[delta_f < EXCLUSIVE] = "a_only"
    out[delta_f > 1 - EXCLUSIVE] = "b_only"
    out[(delta_f >= SHARED[0]) & (delta_f <= SHARED[1])] = "shared"
    return out


def analyse(w_dec_fld: np.ndarray, alive_f: np.ndarray | None = None, a: int = 0, b: int = 1) -> dict:
    """Counts per class, the relative-norm histogram (20 bins) and the decoder cosines of shared
    latents, over the latents that fire (`alive_f`; all when None)."""
    w = np.asarray(w_dec_fld, np.float64)
    alive = np.ones(w.shape[0], bool) if alive_f is None else np.asarray(alive_f, bool)
    delta = relative_norm(w, a, b)
    cls = classify(delta)
    da, db = w[:, a], w[:, b]
    cos = (da * db).sum(-1) / np.maximum(np.linalg.norm(da, axis=-1) * np.linalg.norm(db, axis=-1), 1e-12)
    shared = alive & (cls == "shared")
    hist, edges = np.histogram(delta[alive], bins=20, range=(0.0, 1.0))
    return {"n_latents": int(alive.sum()),
            "counts": {c: int((alive & (cls == c)).sum()) for c in ("a_only", "b_only", "shared", "other")},
            "relative_norm_hist": hist.tolist(), "hist_edges": edges.tolist(),
            "shared_cosine_mean": float(cos[shared].mean()) if shared.any() else float("nan"),
            "shared_cosine_quantiles": (np.quantile(cos[shared], [0.1, 0.5, 0.9]).tolist() if shared.any() else []),
            "relative_norm": delta.tolist(), "classes": cls.tolist()}
