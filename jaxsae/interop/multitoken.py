"""Multitoken-transcoder directories: `cfg.json` + `mtc.safetensors` (`W_enc [D, F]`, `b_enc [F]`,
`W_dec [F, O]`, `b_dec [O]`, `head_logits [F, H + 1]`; head 0 is the identity). No other tool has
a published MTC format; this one keeps SAELens's names for the shared tensors. Weights act on raw
activations (the normalisation is folded in). cfg.json, written last, names the sites and the
spec, so a directory with one is complete."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.atomic import atomic_copy_into, atomic_write_text
from jaxsae.dictionaries.bound import SAE

CFG = "cfg.json"
WEIGHTS = "mtc.safetensors"
_SPEC_KEYS = ("d_in", "d_sae", "d_out", "n_heads", "n_ctx", "activation", "k", "head_mixing", "loss_from")


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    spec = sae.spec
    if spec.name != "multitoken_transcoder":
        raise ValueError(f"multitoken.save writes multitoken transcoders; got {spec.name}")
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sae.params.items()}
    os.makedirs(path, exist_ok=True)
    atomic_copy_into(os.path.join(path, WEIGHTS), lambda tmp: save_file(tensors, tmp))
    cfg = {"architecture": spec.name, **{k: getattr(spec, k) for k in _SPEC_KEYS}, "d_out": spec.out_dim,
           "files": [WEIGHTS], "metadata": metadata or {}}
    atomic_write_text(os.path.join(path, CFG), json.dumps(cfg, indent=2))
    return path


def load(path: str) -> SAE:
    from jaxsae.dictionaries import registry

    cfg_path, w_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise FileNotFoundError(f"{path!r} is not a multitoken-transcoder directory (expected {CFG} and {WEIGHTS})")
    with open(cfg_path) as f:
        cfg = json.load(f)
    kw = {k: cfg[k] for k in _SPEC_KEYS if k in cfg}
    # the inference form: an exported ReLU MTC has its decoder norms folded in (not renormalised again)
    spec = registry.build("multitoken_transcoder", **kw, unit_norm_decoder=kw.get("activation", "topk") == "topk")
    return SAE(spec, {k: np.asarray(v, np.float32) for k, v in load_file(w_path).items()})


def metadata(path: str) -> dict:
    with open(os.path.join(path, CFG)) as f:
        return json.load(f).get("metadata", {})
