"""Streaming mode (`--config.data.source=stream`): the LM forward feeds a mixing buffer that feeds
the train step, in one loop, with nothing written to disk.

The buffer is filled a chunk at a time: chunk c is `buffer_batches * batch_windows` consecutive
windows, run through the truncated model, their text positions' activations shuffled together
(from (seed, c)). Training rows are the chunks back to back, endlessly (later epochs reuse the
windows with new shuffles). Because the number of text positions of every chunk is known from the
tokens alone, `batch(step)` is a pure function of the step: a resumed run recomputes only the chunk
it is in, and gets exactly the rows an uninterrupted run would.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsae import sites
from jaxsae.config import DataConfig
from jaxsae.data import harvest as harvest_lib
from jaxsae.data import tokens as tokens_lib


class StreamSource:
    def __init__(self, d: DataConfig, seed: int, batch_size: int, process: tuple[int, int] = (0, 1)):
        lm, tok = harvest_lib.load_lm(d.lm)
        ds = harvest_lib.token_windows(d.text, tok, d.lm.context, seed)
        self.site = d.site or d.lm.sites[0]
        # multi-layer dictionaries read one site per layer (in_sites) and predict out_sites
        self.in_sites = tuple(d.in_sites) or (self.site,)
        self.out_sites = tuple(d.out_sites) or self.in_sites
        self.layered = bool(d.in_sites)
        self.read_sites = list(dict.fromkeys(self.in_sites + self.out_sites))
        self.model_name = harvest_lib.model_path(d.lm)
        self.seed, self.batch_size = seed, batch_size
        self.process_index, self.process_count = process
        self.bw = d.lm.batch_windows
        self.chunk_windows = d.lm.buffer_batches * self.bw
        self.n_chunks = len(ds) // self.chunk_windows
        if self.n_chunks == 0:
            raise ValueError(f"the corpus gives {len(ds)} windows, fewer than one mixing buffer of "
                             f"{self.chunk_windows}; lower data.lm.buffer_batches or data.lm.batch_windows")
        self.tokens = tokens_lib.batch_array(ds, 0, self.n_chunks * self.chunk_windows)
        keep = tokens_lib.content_mask(self.tokens, tokens_lib.special_ids(tok))
        counts = keep.reshape(self.n_chunks, -1).sum(1)
        self.keep = keep
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.epoch_rows = int(self.starts[-1])
        self.capture = sites.capture_fn(lm, self.read_sites)
        self._cache: dict[int, np.ndarray] = {}
        self.width = self._chunk(0).shape[1] // len(self.read_sites)
        self.d_in = self.d_out = self.width
        self.n_layers = len(self.in_sites) if self.layered else None

    def _chunk(self, c: int) -> np.ndarray:
        """Shuffled activations of chunk c (windows of chunk c mod n_chunks, shuffle from (seed, c))."""
        if c not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            w0 = (c % self.n_chunks) * self.chunk_windows
            rows = []
            for s in range(w0, w0 + self.chunk_windows, self.bw):
                acts = self.capture(jnp.asarray(self.tokens[s : s + self.bw]))
                keep = self.keep[s : s + self.bw]
                rows.append(np.concatenate([tokens_lib.text_rows(acts[site], keep).astype(np.float32)
                                            for site in self.read_sites], axis=1))
            x = np.concatenate(rows)
            self._cache[c] = x[np.random.default_rng((self.seed, c)).permutation(len(x))]
        return self._cache[c]

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        epoch, within = positions // self.epoch_rows, positions % self.epoch_rows
        local = np.searchsorted(self.starts, within, side="right") - 1
        chunk = epoch * self.n_chunks + local
        out = None
        for c in np.unique(chunk):
            m = chunk == c
            data = self._chunk(int(c))
            if out is None:
                out = np.empty((len(positions), data.shape[1]), np.float32)
            out[m] = data[within[m] - self.starts[local[m]]]
        return out

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The captured columns -> (x, y): [B, d] for one site, [B, L, d] for in/out site lists."""
        if not self.layered:
            return rows, rows
        per_site = rows.reshape(rows.shape[0], len(self.read_sites), self.width)
        col = {site: i for i, site in enumerate(self.read_sites)}
        x = per_site[:, [col[s] for s in self.in_sites]]
        y = x if self.out_sites == self.in_sites else per_site[:, [col[s] for s in self.out_sites]]
        return x, y

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self._split(self._rows(np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)))

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        share = self.batch_size // self.process_count
        x, y = self.global_batch(step)
        part = slice(self.process_index * share, (self.process_index + 1) * share)
        return x[part], y[part]
