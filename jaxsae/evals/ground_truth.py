"""Recovery of known features (docs/methods.md section 9.8).

MMCS(D, G) = mean over true features g of max over learned vectors d of cos(g, d). It is
asymmetric, so the reverse direction (mean over learned latents of their best match) is reported
too: it exposes duplicate or junk latents.
"""

from __future__ import annotations

import numpy as np


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def max_cosines(learned_fd: np.ndarray, true_nd: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each true feature, its best cosine with any learned row. [N]"""
    learned, true = _unit(learned_fd), _unit(true_nd)
    out = np.full((true.shape[0],), -np.inf)
    for s in range(0, learned.shape[0], chunk):
        out = np.maximum(out, (true @ learned[s : s + chunk].T).max(axis=1))
    return out


def recovery(learned_fd: np.ndarray, true_nd: np.ndarray, threshold: float = 0.9) -> dict[str, float]:
    """mmcs, fraction of true features recovered above `threshold`, and the reverse MMCS."""
    fwd = max_cosines(learned_fd, true_nd)
    rev = max_cosines(true_nd, learned_fd)
    return {
        "mmcs": float(fwd.mean()),
        "frac_recovered": float((fwd > threshold).mean()),
        "mmcs_reverse": float(rev.mean()),
        "threshold": threshold,
    }
