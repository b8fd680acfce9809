"""SAELens format: `<dir>/cfg.json` + `<dir>/sae_weights.safetensors`.

`save(sae, path)` writes what SAELens's `SAE.load_from_disk` reads back with identical outputs;
`load(path)` reads SAELens directories (standard, topk, batchtopk, jumprelu, gated and the
transcoder variants) into a jaxsae `SAE` with `encode(x)` / `decode(f)`.

Conventions: `W_skip` is [d_out, d_in] on disk (SAELens), [d_in, d_out] in jaxsae; weights are
written for raw activations (input scaling already folded in, so
`normalize_activations="none"`); JumpReLU stores `threshold` (not log); BatchTopK/Matryoshka are
saved as JumpReLU with their global threshold, as SAELens does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.dictionaries.base import Dictionary
from jaxsae.dictionaries.bound import SAE
from jaxsae.dictionaries.gated import Gated
from jaxsae.dictionaries.jumprelu import JumpReLU
from jaxsae.dictionaries.relu import ReLU
from jaxsae.dictionaries.topk import TopK

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
LOADABLE = ("standard", "topk", "batchtopk", "jumprelu", "gated", "transcoder", "skip_transcoder",
            "jumprelu_transcoder", "jumprelu_skip_transcoder", "topk_transcoder", "topk_skip_transcoder")


def _architecture(spec: Dictionary) -> str:
    base = spec.saelens_architecture
    if not base:
        raise ValueError(f"{spec.name}: convert with spec.to_inference(params, state) before saving")
    if not spec.is_transcoder:
        return base
    stem = {"standard": "", "jumprelu": "jumprelu_", "topk": "topk_"}.get(base)
    if stem is None:
        raise ValueError(f"SAELens has no transcoder form of {base!r}; use relu, jumprelu or topk latents")
    return f"{stem}{'skip_' if spec.skip else ''}transcoder"


def to_saelens(sae: SAE, metadata: dict[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(cfg dict, tensors) in SAELens's layout for an inference-ready dictionary."""
    spec, p = sae.spec, sae.params
    arch = _architecture(spec)
    t = {k: np.asarray(v, np.float32) for k, v in p.items() if k != "log_threshold"}
    if "W_skip" in t:  # SAELens stores the skip map as [d_out, d_in] and applies x @ W_skip.T
        t["W_skip"] = np.ascontiguousarray(t["W_skip"].T)
    if "log_threshold" in p:
        t["threshold"] = np.exp(np.asarray(p["log_threshold"], np.float64)).astype(np.float32)
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(spec.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_training_version": None, "jaxsae_architecture": spec.name, **(metadata or {})},
    }
    if spec.is_transcoder:
        cfg["d_out"] = spec.out_dim
    if isinstance(spec, TopK):
        cfg["k"] = spec.k
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg, t


def save(sae: SAE, path: str, metadata: dict[str, Any] | None = None) -> str:
    """Write `sae` as a SAELens directory at `path` (created; files replaced atomically)."""
    cfg, tensors = to_saelens(sae, metadata)
    os.makedirs(path, exist_ok=True)
    tmp_w, tmp_c = os.path.join(path, WEIGHTS + ".tmp"), os.path.join(path, CFG + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp_w)
    with open(tmp_c, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp_w, os.path.join(path, WEIGHTS))
    os.replace(tmp_c, os.path.join(path, CFG))
    return path


def _need(tensors: dict, names: tuple[str, ...], path: str, arch: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{path}: a {arch!r} SAE needs tensors {list(names)}; missing {missing} "
                         f"(found {sorted(tensors)})")


def load(path: str) -> SAE:
    """Read a SAELens-format directory into a jaxsae SAE (float32)."""
    cfg_path, w_path = os.path.join(path, CFG), os.path.join(path, WEIGHTS)
    for p, what in ((cfg_path, "config"), (w_path, "weights")):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{path!r} is not a SAELens directory: its {what} file {os.path.basename(p)} "
                                    f"is missing (expected {CFG} and {WEIGHTS})")
    with open(cfg_path) as f:
        cfg = json.load(f)
    arch = cfg.get("architecture", "standard")
    if arch not in LOADABLE:
        raise ValueError(f"{path}: architecture {arch!r} is not supported; loadable: {', '.join(LOADABLE)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"{path}: normalize_activations={norm!r} is not supported on load; jaxsae reads "
                         "dictionaries whose weights act on raw activations ('none')")
    tensors = {k: np.asarray(v, np.float32) for k, v in load_file(w_path).items()}
    _need(tensors, ("W_enc", "W_dec", "b_dec"), path, arch)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if tensors["W_enc"].shape != (d_in, d_sae):
        raise ValueError(f"{path}: W_enc has shape {tensors['W_enc'].shape}, cfg says [{d_in}, {d_sae}]")
    d_out = tensors["W_dec"].shape[1]
    is_tc = arch.endswith("transcoder")
    skip = "skip" in arch
    common = dict(d_in=d_in, d_sae=d_sae, d_out=d_out if d_out != d_in or is_tc else None, skip=skip,
                  apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", not is_tc)) and not is_tc)
    if skip:
        _need(tensors, ("W_skip",), path, arch)
        tensors["W_skip"] = tensors["W_skip"].T  # SAELens: [d_out, d_in]
    spec: Dictionary
    if arch in ("standard", "transcoder", "skip_transcoder"):
        _need(tensors, ("b_enc",), path, arch)
        spec = ReLU(**common, unit_norm_decoder=False)
    elif arch in ("topk", "topk_transcoder", "topk_skip_transcoder"):
        _need(tensors, ("b_enc",), path, arch)
        spec = TopK(**common, k=int(cfg["k"]))
    elif arch == "gated":
        _need(tensors, ("b_gate", "r_mag", "b_mag"), path, arch)
        spec = Gated(**common)
    else:  # jumprelu family; batchtopk has a learned global threshold when saved for inference
        _need(tensors, ("b_enc",), path, arch)
        thr = tensors.pop("threshold", None)
        if thr is None and "topk_threshold" in tensors:
            thr = np.full((d_sae,), float(tensors.pop("topk_threshold").reshape(-1)[0]), np.float32)
        if thr is None:
            raise ValueError(f"{path}: a {arch!r} SAE needs a 'threshold' tensor (or BatchTopK's "
                             f"'topk_threshold'); found {sorted(tensors)}")
        spec = JumpReLU(**common)
        with np.errstate(divide="ignore"):  # threshold 0 -> log 0 = -inf -> exp = 0: plain ReLU
            tensors["log_threshold"] = np.log(np.maximum(np.broadcast_to(thr, (d_sae,)), 0.0)).astype(np.float32)
    if cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks/thresholds pre * ||d_i|| and decodes (f / ||d_i||) W_dec: exactly the
        # dictionary with decoder norms folded into the encoder, which is what we store.
        n_f = np.maximum(np.linalg.norm(tensors["W_dec"], axis=-1), 1e-8)
        tensors["W_dec"] = tensors["W_dec"] / n_f[:, None]
        tensors["W_enc"] = tensors["W_enc"] * n_f[None, :]
        tensors["b_enc"] = tensors["b_enc"] * n_f
    names = set(spec.param_shapes())
    params = {k: jnp.asarray(v) for k, v in tensors.items() if k in names}
    _need(params, tuple(sorted(names)), path, arch)
    return SAE(spec, params)
