"""Crosscoder directories: `cfg.json` + `crosscoder.safetensors` in dictionary_learning's
CrossCoder state-dict names (`encoder.weight [L, D, F]`, `encoder.bias [F]`,
`decoder.weight [L, F, D]`, `decoder.bias [L, D]`) plus `threshold [F]` for the JumpReLU form a
BatchTopK crosscoder is exported as (a latent fires when f_i * sum_l ||W_dec,i^l|| > threshold_i).
Weights act on raw activations; cfg.json is written last, so a directory with one is complete."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.atomic import atomic_copy_into, atomic_write_text
from jaxsae.dictionaries.bound import SAE

CFG = "cfg.json"
WEIGHTS = "crosscoder.safetensors"


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    spec, p = sae.spec, {k: np.asarray(v, np.float32) for k, v in sae.params.items()}
    if spec.name != "crosscoder":
        raise ValueError(f"crosscoder.save writes crosscoders; got {spec.name}")
    t = {"encoder.weight": p["W_enc"], "encoder.bias": p["b_enc"],
         "decoder.weight": np.transpose(p["W_dec"], (1, 0, 2)), "decoder.bias": p["b_dec"]}
    if "log_threshold" in p:
        t["threshold"] = np.exp(p["log_threshold"].astype(np.float64)).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    atomic_copy_into(os.path.join(path, WEIGHTS), lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in t.items()},
                                                                       tmp))
    cfg = {"architecture": "crosscoder", "activation": spec.activation, "n_layers": spec.n_layers, "d_in": spec.d_in,
           "d_sae": spec.d_sae, "files": [WEIGHTS], "metadata": metadata or {}}
    atomic_write_text(os.path.join(path, CFG), json.dumps(cfg, indent=2))
    return path


def load(path: str) -> SAE:
    from jaxsae.dictionaries import registry

    cfg_path, w_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise FileNotFoundError(f"{path!r} is not a crosscoder directory (expected {CFG} and {WEIGHTS})")
    with open(cfg_path) as f:
        cfg = json.load(f)
    t = load_file(w_path)
    params = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"],
              "W_dec": np.transpose(t["decoder.weight"], (1, 0, 2)), "b_dec": t["decoder.bias"]}
    activation = cfg.get("activation", "relu")
    if "threshold" in t:
        params["log_threshold"] = np.log(np.maximum(t["threshold"].astype(np.float64), 1e-30)).astype(np.float32)
        activation = "jumprelu"
    spec = registry.build("crosscoder", d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), n_layers=int(cfg["n_layers"]),
                          activation=activation)
    return SAE(spec, {k: np.asarray(v, np.float32) for k, v in params.items()})
