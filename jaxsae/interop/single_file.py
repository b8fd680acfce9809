"""The directory layout jaxsae's own formats share (crosscoders, multitoken transcoders): one
safetensors file of float32 tensors and a `cfg.json` naming it, written last (atomically), so a
directory with a cfg.json is complete."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.atomic import atomic_copy_into, atomic_write_text

CFG = "cfg.json"


def write(path: str, weights: str, tensors: dict[str, np.ndarray], cfg: dict) -> str:
    os.makedirs(path, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
    atomic_copy_into(os.path.join(path, weights), lambda tmp: save_file(arrays, tmp))
    atomic_write_text(os.path.join(path, CFG), json.dumps({**cfg, "files": [weights]}, indent=2))
    return path


def read(path: str, weights: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(cfg, tensors), or a FileNotFoundError naming the layout `what` expected."""
    cfg_path, w_path = os.path.join(path, CFG), os.path.join(path, weights)
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise FileNotFoundError(f"{path!r} is not a {what} directory (expected {CFG} and {weights})")
    with open(cfg_path) as f:
        cfg = json.load(f)
    return cfg, load_file(w_path)
