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

from jaxsae.atomic import atomic_copy_into, atomic_write_text
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
    # weights first, config last: a kill in between leaves the old config beside new weights of the
    # same run, never a half-written file under either name
    atomic_copy_into(os.path.join(path, WEIGHTS),
                     lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp))
    atomic_write_text(os.path.join(path, CFG), json.dumps(cfg, indent=2))
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
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e}); the SAELens config is damaged") from e
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"{cfg_path}: needs an integer {key!r} (found {cfg.get(key)!r})")
    arch = cfg.get("architecture", "standard")
    if arch not in LOADABLE:
        raise ValueError(f"{path}: architecture {arch!r} is not supported; loadable: {', '.join(LOADABLE)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"{path}: normalize_activations={norm!r} is not supported on load; jaxsae reads "
                         "dictionaries whose weights act on raw activations ('none')")
    try:
        tensors = {k: np.asarray(v, np.float32) for k, v in load_file(w_path).items()}
    except Exception as e:  # safetensors' own errors do not name the file
        raise ValueError(f"{w_path}: unreadable safetensors file ({type(e).__name__}: {e}); it is truncated or "
                         "damaged: copy or export it again") from e
    _need(tensors, ("W_enc", "W_dec", "b_dec"), path, arch)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if tensors["W_enc"].shape != (d_in, d_sae):
        raise ValueError(f"{path}: W_enc has shape {tensors['W_enc'].shape}, cfg says [{d_in}, {d_sae}]")
    if tensors["W_dec"].ndim != 2 or tensors["W_dec"].shape[0] != d_sae:
        raise ValueError(f"{path}: W_dec has shape {tensors['W_dec'].shape}, cfg.json's d_sae={d_sae} needs "
                         f"[{d_sae}, d_out]; the weights and cfg.json disagree")
    d_out = tensors["W_dec"].shape[1]
    if "d_out" in cfg and cfg["d_out"] != d_out:
        raise ValueError(f"{path}: W_dec has shape {tensors['W_dec'].shape}, cfg.json says d_out={cfg['d_out']}")
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
    shapes = spec.param_shapes()
    params = {k: jnp.asarray(v) for k, v in tensors.items() if k in shapes}
    _need(params, tuple(sorted(shapes)), path, arch)
    wrong = {k: (tuple(params[k].shape), tuple(want)) for k, (want, _) in shapes.items()
             if tuple(params[k].shape) != tuple(want)}
    if wrong:
        detail = ", ".join(f"{k} is {got} but should be {want}" for k, (got, want) in sorted(wrong.items()))
        raise ValueError(f"{w_path}: tensor shapes disagree with {CFG} (d_in={d_in}, d_sae={d_sae}, d_out={d_out}): "
                         f"{detail}")
    return SAE(spec, params)
