"""In-memory / memory-mapped activation arrays as a deterministic, epoch-shuffled batch source.

global_batch(step) is a pure function of (seed, step): row positions [step*B, (step+1)*B) of an
endless stream whose epoch e is the permutation `default_rng((seed, e))` of the rows. With several
processes, batch(step) is this process's contiguous share of that global batch (process p of P
reads rows [p*B/P, (p+1)*B/P)), so the processes together train on exactly the rows one process would.
"""

from __future__ import annotations

import os

import numpy as np


def load_npy(path: str, name: str = "data.path") -> np.ndarray:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file {path!r}; pass an existing .npy file of shape [N, d_in]")
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as e:
        raise ValueError(f"{name}: {path!r} is not a readable .npy array ({e})") from e
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: {path!r} must be a 2-D float array [N, width], got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: {path!r} has no rows")
    bad = nonfinite_rows(arr)
    if len(bad):
        raise ValueError(f"{name}: {path!r} has {len(bad)} row(s) holding nan/inf (first: row {bad[0]}); "
                         "drop or fix them before training, e.g. x = x[np.isfinite(x).all(1)]")
    return arr


def nonfinite_rows(arr: np.ndarray, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """Indices of rows holding nan/inf, read in chunks (a memory map is never loaded whole)."""
    step = max(1, chunk_bytes // max(1, arr.shape[1] * arr.dtype.itemsize))
    bad = [np.nonzero(~np.isfinite(arr[i : i + step]).all(axis=1))[0] + i for i in range(0, arr.shape[0], step)]
    return np.concatenate(bad)


class ArraySource:
    def __init__(self, x_nd: np.ndarray, y_no: np.ndarray | None, seed: int, batch_size: int,
                 expect_d_in: int | None = None, expect_d_out: int | None = None, process: tuple[int, int] = (0, 1)):
        if y_no is not None and y_no.shape[0] != x_nd.shape[0]:
            raise ValueError(f"data: x has {x_nd.shape[0]} rows but y has {y_no.shape[0]}; they must match row for row")
        for what, arr, want in (("input", x_nd, expect_d_in), ("target", y_no, expect_d_out)):
            if arr is not None and want is not None and arr.shape[-1] != want:
                raise ValueError(f"data: {what} width is {arr.shape[-1]} but the dictionary expects {want}; "
                                 f"pass data of width {want} or change the dictionary's width")
        self.x, self.y = x_nd, y_no
        self.seed, self.batch_size = seed, batch_size
        self.n = x_nd.shape[0]
        self.d_in = x_nd.shape[-1]
        self.d_out = self.d_in if y_no is None else y_no.shape[-1]
        self.n_layers = x_nd.shape[1] if len(x_nd.shape) == 3 else None
        self._perms: dict[int, np.ndarray] = {}
        self.process_index, self.process_count = process
        if batch_size % self.process_count:
            raise ValueError(f"batch_size {batch_size} does not split over {self.process_count} processes; "
                             f"use a multiple of {self.process_count}")

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epoch, within = pos // self.n, pos % self.n
        out = np.empty_like(pos)
        for e in np.unique(epoch):
            m = epoch == e
            out[m] = self._perm(int(e))[within[m]]
        return out

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self._read(self.rows(step))

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's share of global batch `step`."""
        share = self.batch_size // self.process_count
        return self._read(self.rows(step)[self.process_index * share : (self.process_index + 1) * share])

    def _read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(idx)  # sorted reads are kinder to memory maps
        x = np.empty((len(idx), *self.x.shape[1:]), np.float32)
        x[order] = self.x[idx[order]]
        if self.y is None:
            return x, x
        y = np.empty((len(idx), *self.y.shape[1:]), np.float32)
        y[order] = self.y[idx[order]]
        return x, y


class StackedRows:
    """Several [N, d] row arrays (one per site, e.g. per layer) read as one [N, L, d] array."""

    def __init__(self, arrays: list, names: list[str]):
        widths = {a.shape[1] for a in arrays}
        rows = {a.shape[0] for a in arrays}
        if len(widths) != 1 or len(rows) != 1:
            raise ValueError(f"data: the sites {names} must share one width and row count to be stacked as "
                             f"layers; widths {[a.shape[1] for a in arrays]}, rows {[a.shape[0] for a in arrays]}")
        self.arrays = arrays
        self.shape = (rows.pop(), len(arrays), widths.pop())
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return np.stack([np.asarray(a[idx], np.float32) for a in self.arrays], axis=1)
