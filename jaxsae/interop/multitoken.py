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

from jaxsae.dictionaries.bound import SAE
from jaxsae.interop import single_file

CFG = single_file.CFG
WEIGHTS = "mtc.safetensors"
_SPEC_KEYS = ("d_in", "d_sae", "d_out", "n_heads", "n_ctx", "activation", "k", "head_mixing", "loss_from")


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    spec = sae.spec
    if spec.name != "multitoken_transcoder":
        raise ValueError(f"multitoken.save writes multitoken transcoders; got {spec.name}")
    cfg = {"architecture": spec.name, **{k: getattr(spec, k) for k in _SPEC_KEYS}, "d_out": spec.out_dim,
           "metadata": metadata or {}}
    return single_file.write(path, WEIGHTS, dict(sae.params), cfg)


def load(path: str) -> SAE:
    from jaxsae.dictionaries import registry

    cfg, tensors = single_file.read(path, WEIGHTS, "multitoken-transcoder")
    kw = {k: cfg[k] for k in _SPEC_KEYS if k in cfg}
    # the inference form: an exported ReLU MTC has its decoder norms folded in (not renormalised again)
    spec = registry.build("multitoken_transcoder", **kw, unit_norm_decoder=kw.get("activation", "topk") == "topk")
    return SAE(spec, {k: np.asarray(v, np.float32) for k, v in tensors.items()})


def metadata(path: str) -> dict:
    with open(os.path.join(path, CFG)) as f:
        return json.load(f).get("metadata", {})
