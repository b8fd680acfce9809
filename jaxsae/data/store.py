"""The activation store: a directory of .npy shards, one folder per site, plus manifest.json.

  store/manifest.json                 model, sites, dtype, width, context, token counts, norm
                                      statistics, and every shard with its row count and sha256
  store/blocks.6.hook_resid_post/shard_000000.npy   [rows, d] activations of text positions

Every file is written to a temporary name and renamed into place, and the manifest lists a shard
only after it is complete, so a killed writer leaves either a shard the manifest knows or one it
does not (rewritten on resume). `Store.verify()` re-hashes every shard and names any that differ.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_dtypes
import numpy as np

from jaxsae.atomic import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "jaxsae-activation-store/1"


class StoreError(ValueError):
    """The store is missing, inconsistent or corrupt; the message names the file and the fix."""


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: str, manifest: dict) -> None:
    atomic_write_bytes(os.path.join(root, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def read_manifest(root: str) -> dict | None:
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: unreadable manifest ({e}); the store cannot be trusted, harvest it again") from e
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not a jaxsae activation store (format {manifest.get('format')!r})")
    return manifest


def shard_name(site: str, index: int) -> str:
    return os.path.join(site, f"shard_{index:06d}.npy")


def write_shard(root: str, site: str, index: int, rows_nd: np.ndarray) -> dict:
    """Write one shard atomically; its manifest entry {file, rows, sha256}."""
    os.makedirs(os.path.join(root, site), exist_ok=True)
    rel = shard_name(site, index)
    path = os.path.join(root, rel)
    rows_nd = np.ascontiguousarray(rows_nd)
    if rows_nd.dtype == ml_dtypes.bfloat16:  # .npy has no bfloat16: stored as its bits, typed by the manifest
        rows_nd = rows_nd.view(np.uint16)
    atomic_write_bytes(path, lambda f: np.save(f, rows_nd))
    return {"file": rel, "rows": int(rows_nd.shape[0]), "sha256": sha256(path)}


class Store:
    """Read side: per-site shards memory-mapped and addressable as one [N, d] array."""

    def __init__(self, root: str, verify: bool = False):
        manifest = read_manifest(root)
        if manifest is None:
            raise StoreError(f"{root!r} has no {MANIFEST}; write one with `python -m experiments.harvest "
                             f"--config.data.path={root}`")
        self.root, self.manifest = root, manifest
        if not manifest.get("complete"):
            raise StoreError(f"{root}: the harvest stopped after {manifest['windows_done']} of "
                             f"{manifest['windows_total']} windows; run the same harvest command again to finish it")
        if verify:
            self.verify()

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    def site(self, name: str) -> ShardedRows:
        if name not in self.manifest["sites"]:
            raise StoreError(f"{self.root}: no site {name!r} in the store; it holds {self.sites}")
        info = self.manifest["sites"][name]
        arrays = []
        for shard in info["shards"]:
            path = os.path.join(self.root, shard["file"])
            try:
                arr = np.load(path, mmap_mode="r")
            except Exception as e:
                raise StoreError(f"corrupt shard {path}: unreadable ({type(e).__name__}: {e}); "
                                 "delete the store and harvest again") from e
            if self.manifest.get("dtype") == "bfloat16" and arr.dtype == np.uint16:
                arr = arr.view(ml_dtypes.bfloat16)
            if arr.shape != (shard["rows"], info["d"]):
                raise StoreError(f"corrupt shard {path}: shape {arr.shape}, the manifest says "
                                 f"{(shard['rows'], info['d'])}; delete the store and harvest again")
            arrays.append(arr)
        return ShardedRows(arrays, info["d"])

    def verify(self) -> None:
        """Re-hash every shard; raise StoreError naming the first that differs from the manifest."""
        for name, info in self.manifest["sites"].items():
            for shard in info["shards"]:
                path = os.path.join(self.root, shard["file"])
                if not os.path.isfile(path):
                    raise StoreError(f"missing shard {path} (site {name}); delete the store and harvest again")
                if sha256(path) != shard["sha256"]:
                    raise StoreError(f"corrupt shard {path}: its sha256 differs from the manifest's "
                                     f"(site {name}); delete the store and harvest again")


class ShardedRows:
    """Several [n_i, d] arrays viewed as one [sum n_i, d] array for fancy-index reads."""

    def __init__(self, arrays: list[np.ndarray], d: int):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [a.shape[0] for a in arrays])
        self.shape = (int(self.starts[-1]), d)
        self.dtype = arrays[0].dtype if arrays else np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(which):
            m = which == s
            out[m] = self.arrays[s][idx[m] - self.starts[s]]
        return out
