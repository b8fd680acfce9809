"""circuit-tracer's transcoder layouts (decoderesearch/circuit-tracer; its loaders are the oracle in
tests/test_clt.py).

Cross-layer transcoder directory (`load_clt(dir)` reads it):
  W_enc_{l}.safetensors   W_enc_{l} [F, D] (feature-major), b_enc_{l} [F], b_dec_{l} [O] (the bias of
                          output layer l), threshold_{l} [F] (raw, strict `>`; JumpReLU only)
  W_dec_{l}.safetensors   W_dec_{l} [F, L - l, O]; slot m writes output layer l + m
Per-layer transcoder set (`load_transcoder_set({l: path})`): layer_{l}.safetensors with W_enc [F, D],
W_dec [F, O], b_enc, b_dec, activation_function.threshold (JumpReLU), W_skip [O, D] (x @ W_skip.T).

Both get a `config.yaml` (model_kind, feature_input_hook, feature_output_hook relative to
`blocks.{l}`, scan) and jaxsae's own `cfg.json` (architecture, widths, activation, k, the training
metadata), written last so a directory with a cfg.json is complete. Weights act on raw activations.
circuit-tracer's CLT has JumpReLU and ReLU latents only; a TopK CLT is written in the same layout
with `activation: topk` and `k` in both configs, which jaxsae reads back exactly but circuit-tracer
(0.4-0.5) would load as ReLU.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file, save_file

from jaxsae.atomic import atomic_copy_into, atomic_write_text
from jaxsae.dictionaries.bound import SAE

CFG = "cfg.json"
CONFIG_YAML = "config.yaml"


def hook_suffix(site: str | None, default: str) -> str:
    """'blocks.3.ln2.hook_normalized' -> 'ln2.hook_normalized' (circuit-tracer's per-layer hook)."""
    m = re.fullmatch(r"blocks\.\d+\.(.+)", site or "")
    return m.group(1) if m else default


def _write(path: str, tensors: dict[str, np.ndarray]) -> None:
    atomic_copy_into(path, lambda tmp: save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                                                 tmp))


def _configs(path: str, kind: str, cfg: dict, meta: dict, files: list[str]) -> None:
    meta = dict(meta or {})
    ct = {"model_kind": kind, "scan": meta.get("scan") or meta.get("model_name") or "jaxsae",
          "feature_input_hook": hook_suffix((meta.get("in_sites") or [None])[0], "ln2.hook_normalized"),
          "feature_output_hook": hook_suffix((meta.get("out_sites") or [None])[0], "hook_mlp_out"),
          "model_name": meta.get("model_name")}
    if cfg.get("activation") == "topk":
        ct.update(activation="topk", k=cfg["k"])
    atomic_write_text(os.path.join(path, CONFIG_YAML), yaml.safe_dump(ct, sort_keys=False))
    atomic_write_text(os.path.join(path, CFG), json.dumps({**cfg, "format": "circuit_tracer", "files": files,
                                                           "metadata": meta}, indent=2))


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    """Write a cross-layer transcoder (jaxsae.dictionaries.clt) in circuit-tracer's CLT layout."""
    spec, p = sae.spec, {k: np.asarray(v, np.float32) for k, v in sae.params.items()}
    if spec.name != "clt":
        raise ValueError(f"circuit_tracer.save writes cross-layer transcoders; got {spec.name} (use "
                         "save_transcoder_set for per-layer transcoders)")
    os.makedirs(path, exist_ok=True)
    files = []
    for layer in range(spec.n_layers):
        enc = {f"W_enc_{layer}": p["W_enc"][layer].T, f"b_enc_{layer}": p["b_enc"][layer],
               f"b_dec_{layer}": p["b_dec"][layer]}
        if spec.activation == "jumprelu":
            enc[f"threshold_{layer}"] = np.exp(p["log_threshold"][layer].astype(np.float64))
        _write(os.path.join(path, f"W_enc_{layer}.safetensors"), enc)
        _write(os.path.join(path, f"W_dec_{layer}.safetensors"), {f"W_dec_{layer}": p[f"W_dec_{layer}"]})
        files += [f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"]
    cfg = {"architecture": "clt", "activation": spec.activation, "n_layers": spec.n_layers, "d_in": spec.d_in,
           "d_sae": spec.d_sae, "d_out": spec.out_dim}
    if spec.activation == "topk":
        cfg["k"] = int(spec.k)
    _configs(path, "cross_layer_transcoder", cfg, metadata or {}, files)
    return path


def save_transcoder_set(saes: list[SAE], path: str, metadata: dict[str, Any] | None = None) -> str:
    """Per-layer transcoders (one jaxsae transcoder per layer, layer order) as circuit-tracer's
    transcoder set: layer_{l}.safetensors each."""
    os.makedirs(path, exist_ok=True)
    files = []
    acts = set()
    for layer, sae in enumerate(saes):
        spec, p = sae.spec, {k: np.asarray(v, np.float32) for k, v in sae.params.items()}
        if spec.apply_b_dec_to_input:
            raise ValueError(f"layer {layer}: circuit-tracer transcoders do not subtract b_dec from the input")
        t = {"W_enc": p["W_enc"].T, "W_dec": p["W_dec"], "b_enc": p["b_enc"], "b_dec": p["b_dec"]}
        if "log_threshold" in p:
            t["activation_function.threshold"] = np.exp(p["log_threshold"].astype(np.float64))
        if "W_skip" in p:
            t["W_skip"] = p["W_skip"].T
        acts.add((spec.name, getattr(spec, "k", None)))
        _write(os.path.join(path, f"layer_{layer}.safetensors"), t)
        files.append(f"layer_{layer}.safetensors")
    if len(acts) != 1:
        raise ValueError(f"a transcoder set needs one activation for every layer; got {sorted(map(str, acts))}")
    name, k = acts.pop()
    cfg = {"architecture": "transcoder_set", "activation": name, "n_layers": len(saes), "d_in": saes[0].spec.d_in,
           "d_sae": saes[0].spec.d_sae, "d_out": saes[0].spec.out_dim, "skip": bool(saes[0].spec.skip)}
    if name == "topk":
        cfg["k"] = int(k)
    _configs(path, "transcoder_set", cfg, metadata or {}, files)
    return path


def load(path: str):
    """A CLT directory -> SAE (a CrossLayerTranscoder); a transcoder-set directory -> list of SAEs.
    Reads jaxsae's cfg.json when present, else infers the layout from the files (circuit-tracer's
    own exports)."""
    from jaxsae.dictionaries import registry

    cfg = {}
    if os.path.isfile(os.path.join(path, CFG)):
        with open(os.path.join(path, CFG)) as f:
            cfg = json.load(f)
    if os.path.isfile(os.path.join(path, "W_enc_0.safetensors")):
        n = 0
        while os.path.isfile(os.path.join(path, f"W_enc_{n}.safetensors")):
            n += 1
        enc = [load_file(os.path.join(path, f"W_enc_{i}.safetensors")) for i in range(n)]
        dec = [load_file(os.path.join(path, f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(n)]
        f_, d = enc[0]["W_enc_0"].shape
        activation = cfg.get("activation") or ("jumprelu" if "threshold_0" in enc[0] else "relu")
        if activation == "relu":  # a JumpReLU with threshold 0 is exactly ReLU (strict >)
            activation = "jumprelu"
        params = {"W_enc": np.stack([e[f"W_enc_{i}"].T for i, e in enumerate(enc)]),
                  "b_enc": np.stack([e[f"b_enc_{i}"] for i, e in enumerate(enc)]),
                  "b_dec": np.stack([e[f"b_dec_{i}"] for i, e in enumerate(enc)])}
        for i, w in enumerate(dec):
            params[f"W_dec_{i}"] = w
        kw = {"d_in": int(d), "d_sae": int(f_), "d_out": int(dec[0].shape[-1]), "n_layers": n, "activation": activation}
        if activation == "jumprelu":
            thr = np.stack([e.get(f"threshold_{i}", np.zeros((f_,), np.float32)) for i, e in enumerate(enc)])
            params["log_threshold"] = np.log(np.maximum(thr.astype(np.float64), 1e-30)).astype(np.float32)
            kw["bandwidth"] = 1.0
        else:
            kw["k"] = cfg["k"]
        spec = registry.build("clt", **kw)
        return SAE(spec, {k: np.asarray(v, np.float32) for k, v in params.items()})
    if os.path.isfile(os.path.join(path, "layer_0.safetensors")):
        out = []
        layer = 0
        while os.path.isfile(os.path.join(path, f"layer_{layer}.safetensors")):
            t = load_file(os.path.join(path, f"layer_{layer}.safetensors"))
            f_, d = t["W_enc"].shape
            activation = cfg.get("activation") or ("jumprelu" if "activation_function.threshold" in t else "relu")
            kw = {"d_in": int(d), "d_sae": int(f_), "d_out": int(t["W_dec"].shape[1]), "skip": "W_skip" in t,
                  "activation": activation}
            params = {"W_enc": t["W_enc"].T, "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
            if "W_skip" in t:
                params["W_skip"] = t["W_skip"].T
            if activation == "jumprelu":
                thr = t.get("activation_function.threshold", np.zeros((f_,), np.float32))
                params["log_threshold"] = np.log(np.maximum(thr.astype(np.float64), 1e-30))
            if activation == "topk":
                kw["k"] = int(cfg["k"])
            if kw["d_out"] == kw["d_in"] and not kw["skip"]:
                kw["d_out"] = None
            spec = registry.build("transcoder", **kw)
            out.append(SAE(spec, {k: np.asarray(v, np.float32) for k, v in params.items()}))
            layer += 1
        return out
    raise FileNotFoundError(f"{path!r} holds neither a circuit-tracer CLT (W_enc_0.safetensors, W_dec_0.safetensors, "
                            "...) nor a transcoder set (layer_0.safetensors, ...)")
