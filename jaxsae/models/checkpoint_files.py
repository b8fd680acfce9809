"""Reading HF-format model directories without torch: config.json + one or many safetensors
shards (`model.safetensors`, or `model.safetensors.index.json` naming the shards)."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open


class CheckpointFormatError(ValueError):
    """The directory is not a readable HF checkpoint; the message names what was found."""


def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        found = sorted(os.listdir(path)) if os.path.isdir(path) else "nothing (no such directory)"
        raise CheckpointFormatError(f"{path!r} has no config.json; an HF model directory needs config.json and "
                                    f"*.safetensors files. Found: {found}")
    with open(cfg_path) as f:
        return json.load(f)


def shard_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
        if missing:
            raise CheckpointFormatError(f"{path}: the shard index names files that are missing: {missing}")
        return [os.path.join(path, n) for n in names]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    others = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if others:
        return [os.path.join(path, n) for n in others]
    raise CheckpointFormatError(f"{path}: no safetensors weights (model.safetensors or an index); found "
                                f"{sorted(os.listdir(path))}. PyTorch .bin checkpoints are not read (they need torch).")


def read_tensors(path: str, dtype=jnp.float32) -> dict[str, np.ndarray]:
    """name -> array (float32 unless `dtype` says otherwise) for every tensor in every shard."""
    out: dict[str, np.ndarray] = {}
    for file in shard_files(path):
        try:
            with safe_open(file, framework="flax") as f:  # jax arrays: bf16 included
                for name in f.keys():
                    out[name] = np.asarray(f.get_tensor(name).astype(dtype))
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise CheckpointFormatError(f"{file}: unreadable safetensors file ({type(e).__name__}: {e})") from e
    return out
