"""Reading HF-format model directories without torch: config.json + one or many safetensors
shards (`model.safetensors`, or `model.safetensors.index.json` naming the shards)."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np


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


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _map_file(file: str) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as a read-only memory-mapped NumPy view (nothing is
    read until a slice of it is used). The format: an 8-byte little-endian header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the raw bytes."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > os.path.getsize(file) - 8:
                raise ValueError(f"header length {n} runs past the end of the file")
            header = json.loads(f.read(n))
        data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + n) if os.path.getsize(file) > 8 + n else None
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            raw = data[begin:end] if end > begin else np.zeros(0, np.uint8)
            out[name] = raw.view(dtype).reshape(info["shape"])
        return out
    except Exception as e:
        raise CheckpointFormatError(f"{file}: unreadable safetensors file ({type(e).__name__}: {e})") from e


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """name -> memory-mapped array (stored dtype) for every tensor in every shard. Casting and
    placement happen per tensor as the model is bound (see placement.py), so a model is never
    held whole in one device's memory, nor twice in host memory."""
    out: dict[str, np.ndarray] = {}
    for file in shard_files(path):
        out.update(_map_file(file))
    return out


def require(tensors: dict, name: str):
    """tensors[name], or an error naming the missing tensor and what the checkpoint does hold."""
    if name not in tensors:
        raise CheckpointFormatError(f"missing tensor {name!r} (found {len(tensors)} tensors, e.g. {sorted(tensors)[:4]})")
    return tensors[name]
