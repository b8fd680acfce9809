"""Fine-tune chosen weight matrices of a model in JAX and save the result as an HF directory that
`models.load` (and transformers) read: the "second model" of model diffing and the model
organisms of auditing games, made offline from the packaged SmolLM2.

  tuned, log = finetune.finetune(path, tokens_nt, names=finetune.mlp_names(cfg, layers=(10, 11)))
  finetune.save_hf(path, tuned, "runs/smollm2-tuned")       # config.json, model.safetensors, tokenizer.json

Only plain projection matrices are tunable (q/k/v/o, MLP gate/up/down, ...): tensors a model
family places by reshapes and transposes alone. Which Penzai parameter elements each HF tensor
element becomes is read off by building the model once with every chosen tensor holding its
element indices (exact in float32 below 2^24 elements in all), so the tuned values map back to HF
layout exactly, for every family, without per-family code.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

MAX_CODED = 2**24  # float32 represents every integer up to here exactly


def read(path: str) -> tuple[dict, dict[str, np.ndarray], object]:
    """(HF config, HF-named float32 tensors, family build function) of a .gguf file or HF directory."""
    from jaxsae import models
    from jaxsae.models import checkpoint_files, llama

    if os.path.isfile(path):
        from jaxsae.models import gguf_file

        cfg, tensors = gguf_file.read(path)
        return cfg, tensors, llama.build
    cfg = checkpoint_files.read_config(path)
    family = next(f for f in models.FAMILIES if cfg.get("model_type") in f.MODEL_TYPES)
    return cfg, checkpoint_files.read_tensors(path), family.build


def mlp_names(cfg: dict, layers) -> list[str]:
    """The MLP projection tensors of `layers` (Llama-family names)."""
    return [f"model.layers.{i}.mlp.{p}_proj.weight" for i in layers for p in ("gate", "up", "down")]


def _raw(value) -> np.ndarray:
    """A parameter's array in its stored axis order (Penzai NamedArrays keep one)."""
    return np.asarray(value.data_array if hasattr(value, "data_array") else value)


def _values_by_label(build, cfg, tensors):
    """(LanguageModel, frozen slots, frozen parameter values) built from HF tensors."""
    from jaxsae.causal import interventions as iv
    from jaxsae.models import LanguageModel
    from jaxsae.models.placement import Placer

    lm = LanguageModel(build(cfg, tensors, Placer(jnp.float32)), cfg)
    slots, values = iv.freeze(lm)
    return lm, slots, values


def _code_map(build, cfg, tensors, names) -> dict[str, dict[str, np.ndarray]]:
    """{label: {"code": int array shaped like the parameter (0: not from a chosen tensor, else
    1 + the global index of its source element)}} and the offsets per chosen tensor."""
    total = sum(int(np.prod(tensors[n].shape)) for n in names)
    if total >= MAX_CODED:
        raise ValueError(f"finetune: the chosen tensors hold {total} elements; at most {MAX_CODED - 1} can be tuned at "
                         "once (choose fewer layers)")
    coded, offset = dict(tensors), 1
    for n in names:
        size = int(np.prod(tensors[n].shape))
        coded[n] = np.arange(offset, offset + size, dtype=np.float32).reshape(tensors[n].shape)
        offset += size
    zero = {k: (np.zeros_like(v) if k not in names else coded[k]) for k, v in coded.items()}
    _, _, values = _values_by_label(build, cfg, zero)
    codes = {}
    for v in values:
        arr = _raw(v.value)
        if np.any(arr != 0):
            codes[v.label] = arr.astype(np.int64)
    seen = np.concatenate([c[c > 0] for c in codes.values()]) if codes else np.zeros(0, np.int64)
    if len(seen) != total or len(np.unique(seen)) != total:
        raise ValueError(f"finetune: {names} are transformed on load (not placed by reshapes alone: norms, "
                         "embeddings or fused tensors); tune projection matrices such as mlp.*_proj or self_attn.*_proj")
    return codes


def finetune(path: str, tokens_nt: np.ndarray, names: list[str], steps: int = 100, batch: int = 8,
             lr: float = 1e-4, seed: int = 0, loss_mask_nt: np.ndarray | None = None,
             progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Adam on next-token cross-entropy over `tokens_nt` [N, T] (optionally weighted by
    loss_mask_nt [N, T]: the positions whose next token is scored), updating only the HF tensors
    `names`. Returns ({name: tuned HF-layout array}, {"loss": [...]}). Deterministic for a seed."""
    from jaxsae.causal import interventions as iv

    cfg, tensors, build = read(path)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise KeyError(f"finetune: {path} has no tensor(s) {missing}")
    codes = _code_map(build, cfg, tensors, names)
    _, slots, values = _values_by_label(build, cfg, tensors)
    labels = [v.label for v in values]
    trainable = tuple(lab in codes for lab in labels)
    train_vals = tuple(v for v, t in zip(values, trainable) if t)
    fixed_vals = tuple(v for v, t in zip(values, trainable) if not t)

    def merge(tv):
        it_t, it_f = iter(tv), iter(fixed_vals)
        return tuple(next(it_t) if t else next(it_f) for t in trainable)

    mask_nt = np.ones(tokens_nt.shape, np.float32) if loss_mask_nt is None else np.asarray(loss_mask_nt, np.float32)

    def loss_fn(tv, toks, mask):
        logits = iv.call(iv.bind(slots, merge(tv)), toks)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[..., 0]
        w = mask[:, :-1]
        return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)

    opt = optax.adam(lr)
    state = opt.init(train_vals)

    @jax.jit
    def step(tv, state, toks, mask):
        loss, grads = jax.value_and_grad(loss_fn)(tv, toks, mask)
        updates, state = opt.update(grads, state, tv)
        return optax.apply_updates(tv, updates), state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for i in range(steps):
        idx = rng.choice(len(tokens_nt), batch, replace=len(tokens_nt) < batch)
        train_vals, state, loss = step(train_vals, state, jnp.asarray(tokens_nt[idx]), jnp.asarray(mask_nt[idx]))
        losses.append(float(loss))
        if progress and i % 10 == 0:
            print(f"finetune step {i}: loss {losses[-1]:.3f}", flush=True)
    # back to HF layout: element j of a parameter came from global code codes[label][j]
    flat = np.zeros(sum(int(np.prod(tensors[n].shape)) for n in names) + 1, np.float32)
    for v, lab in zip(train_vals, [lab for lab, t in zip(labels, trainable) if t]):
        arr = _raw(v.value).astype(np.float32)
        c = codes[lab]
        flat[c[c > 0]] = arr[c > 0]
    out, offset = {}, 1
    for n in names:
        size = int(np.prod(tensors[n].shape))
        out[n] = flat[offset : offset + size].reshape(tensors[n].shape)
        offset += size
    return out, {"loss": losses}


def save_hf(path: str, tuned: dict[str, np.ndarray], out_dir: str) -> str:
    """The model at `path` with `tuned` tensors replaced, as an HF directory (config.json,
    model.safetensors in float32, the tokenizer files), written to a temporary name and renamed."""
    from safetensors.numpy import save_file

    cfg, tensors, _ = read(path)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    merged = {k: np.ascontiguousarray(np.asarray(tuned.get(k, v), np.float32)) for k, v in tensors.items()}
    save_file(merged, os.path.join(tmp, "model.safetensors"))
    bos, eos = _copy_tokenizer(path, tmp)
    cfg = {**cfg, "bos_token_id": cfg.get("bos_token_id", bos), "eos_token_id": cfg.get("eos_token_id", eos)}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _copy_tokenizer(path: str, out_dir: str) -> tuple[int | None, int | None]:
    """tokenizer.json (+ its config files) from an HF directory, or written from a GGUF file's
    vocabulary; returns the (bos, eos) ids."""
    from jaxsae import models

    src = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(src, "tokenizer.json")):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.isfile(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))
    tok = models.load_tokenizer(path)
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        tok.backend.save(os.path.join(out_dir, "tokenizer.json"))
    return tok.bos_id, tok.eos_id
