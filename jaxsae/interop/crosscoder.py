"""Crosscoder directories: `cfg.json` + `crosscoder.safetensors` in dictionary_learning's
CrossCoder state-dict names (`encoder.weight [L, D, F]`, `encoder.bias [F]`,
`decoder.weight [L, F, D]`, `decoder.bias [L, D]`) plus `threshold [F]` for the JumpReLU form a
BatchTopK crosscoder is exported as (a latent fires when f_i * sum_l ||W_dec,i^l|| > threshold_i).
Weights act on raw activations; cfg.json is written last, so a directory with one is complete."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxsae.dictionaries.bound import SAE
from jaxsae.interop import single_file

CFG = single_file.CFG
WEIGHTS = "crosscoder.safetensors"


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    spec, p = sae.spec, {k: np.asarray(v, np.float32) for k, v in sae.params.items()}
    if spec.name != "crosscoder":
        raise ValueError(f"crosscoder.save writes crosscoders; got {spec.name}")
    t = {"encoder.weight": p["W_enc"], "encoder.bias": p["b_enc"],
         "decoder.weight": np.transpose(p["W_dec"], (1, 0, 2)), "decoder.bias": p["b_dec"]}
    if "log_threshold" in p:
        t["threshold"] = np.exp(p["log_threshold"].astype(np.float64)).astype(np.float32)
    cfg = {"architecture": "crosscoder", "activation": spec.activation, "n_layers": spec.n_layers, "d_in": spec.d_in,
           "d_sae": spec.d_sae, "metadata": metadata or {}}
    return single_file.write(path, WEIGHTS, t, cfg)


def load(path: str) -> SAE:
    from jaxsae.dictionaries import registry

    cfg, t = single_file.read(path, WEIGHTS, "crosscoder")
    params = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"],
              "W_dec": np.transpose(t["decoder.weight"], (1, 0, 2)), "b_dec": t["decoder.bias"]}
    activation = cfg.get("activation", "relu")
    if "threshold" in t:
        params["log_threshold"] = np.log(np.maximum(t["threshold"].astype(np.float64), 1e-30)).astype(np.float32)
        activation = "jumprelu"
    spec = registry.build("crosscoder", d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), n_layers=int(cfg["n_layers"]),
                          activation=activation)
    return SAE(spec, {k: np.asarray(v, np.float32) for k, v in params.items()})
