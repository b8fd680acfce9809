"""Whole-context training data for attention replacements (multitoken transcoders).

An attention replacement needs every position of a context together: the attention's input at
each position, the base layer's attention patterns, and its output. A batch is B contexts packed
as `multitoken.pack` lays them out (x [B, T, D + H T], y [B, T, O]).

  arrays = contexts.collect(lm, tokens_nt, in_site, out_site)     # {"x", "pattern", "y"}
  contexts.save(directory, arrays, meta)                          # data.source=contexts
  ContextStreamSource(data_cfg, ...)                              # data.source=stream: the LM in the loop

Both sources are pure functions of the step (epoch e visits the contexts in the permutation
`default_rng((seed, e))`), so a resumed run trains on exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from jaxsae import sites
from jaxsae.atomic import atomic_write_text
from jaxsae.data.arrays import ArraySource
from jaxsae.dictionaries.multitoken import pack

FILES = ("x.npy", "pattern.npy", "y.npy", "meta.json")


def check_sites(in_sites, out_sites) -> tuple[str, str, str]:
    """(input site, pattern site, output site) of one attention layer, or a clear error."""
    if len(in_sites) != 1 or len(out_sites) != 1:
        raise ValueError("a multitoken transcoder replaces one attention layer: set --config.data.in_sites="
                         "('blocks.L.ln1.hook_normalized',) and --config.data.out_sites=('blocks.L.hook_attn_out',) "
                         f"(got in_sites={tuple(in_sites)}, out_sites={tuple(out_sites)})")
    (layer_in, kind_in), (layer_out, kind_out) = sites.parse(in_sites[0]), sites.parse(out_sites[0])
    if kind_in not in ("ln1.hook_normalized", "hook_resid_pre") or kind_out != "hook_attn_out" or layer_in != layer_out:
        raise ValueError(f"a multitoken transcoder reads blocks.L.ln1.hook_normalized (or hook_resid_pre) and writes "
                         f"blocks.L.hook_attn_out of the same layer L; got {in_sites[0]!r} -> {out_sites[0]!r}")
    return in_sites[0], f"blocks.{layer_out}.attn.hook_pattern", out_sites[0]


def capture_fn(lm, in_site: str, out_site: str):
    """tokens [B, T] -> (x [B, T, D], patterns [B, H, T, T], y [B, T, O]) as float32 host arrays."""
    site_in, site_p, site_out = check_sites((in_site,), (out_site,))
    capture = sites.capture_fn(lm, [site_in, site_p, site_out])

    def run(tokens_bt):
        acts = capture(jnp.asarray(tokens_bt, jnp.int32))
        return tuple(np.asarray(acts[s], np.float32) for s in (site_in, site_p, site_out))

    return run


def collect(lm, tokens_nt, in_site: str, out_site: str, batch_windows: int = 16) -> dict[str, np.ndarray]:
    """Every context's inputs, patterns and outputs: {"x" [N, T, D], "pattern" [N, H, T, T], "y" [N, T, O]}."""
    run = capture_fn(lm, in_site, out_site)
    parts = [run(tokens_nt[i : i + batch_windows]) for i in range(0, len(tokens_nt), batch_windows)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(("x", "pattern", "y"))}


def save(directory: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write the arrays and meta.json (written last: a directory without it is incomplete)."""
    os.makedirs(directory, exist_ok=True)
    for name in ("x", "pattern", "y"):
        tmp = os.path.join(directory, f".{name}.tmp.npy")
        np.save(tmp, np.asarray(arrays[name], np.float32))
        os.replace(tmp, os.path.join(directory, f"{name}.npy"))
    atomic_write_text(os.path.join(directory, "meta.json"), json.dumps(meta or {}, indent=2))


def load(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    missing = [f for f in FILES if not os.path.isfile(os.path.join(directory or "", f))]
    if missing:
        raise FileNotFoundError(f"data.path={directory!r} is not a complete contexts directory (missing "
                                f"{', '.join(missing)}); write one with jaxsae.data.contexts.save")
    arrays = {n: np.load(os.path.join(directory, f"{n}.npy"), mmap_mode="r") for n in ("x", "pattern", "y")}
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    n, t = arrays["x"].shape[:2]
    if arrays["pattern"].shape[0] != n or arrays["pattern"].shape[2:] != (t, t) or arrays["y"].shape[:2] != (n, t):
        raise ValueError(f"{directory}: x {arrays['x'].shape}, pattern {arrays['pattern'].shape} and y "
                         f"{arrays['y'].shape} must be [N, T, D], [N, H, T, T] and [N, T, O]")
    return arrays, meta


class ContextArraySource(ArraySource):
    """Contexts held in arrays (memory-mapped from a contexts directory, or in memory)."""

    def __init__(self, arrays: dict[str, np.ndarray], seed: int, batch_size: int, meta: dict | None = None,
                 process: tuple[int, int] = (0, 1)):
        super().__init__(arrays["x"], arrays["y"], seed, batch_size, process=process)
        self.pattern = arrays["pattern"]
        self.n_layers = None
        self.n_heads, self.n_ctx = int(self.pattern.shape[1]), int(self.pattern.shape[2])
        self.spec_fields = {"n_heads": self.n_heads, "n_ctx": self.n_ctx}
        meta = meta or {}
        self.in_sites, self.out_sites = tuple(meta.get("in_sites", ())), tuple(meta.get("out_sites", ()))
        self.site = self.out_sites[0] if self.out_sites else None
        self.model_name = meta.get("model")

    def _read(self, idx):
        x, y = super()._read(idx)
        order = np.argsort(idx)
        pattern = np.empty((len(idx), *self.pattern.shape[1:]), np.float32)
        pattern[order] = self.pattern[idx[order]]
        return pack(x, pattern), y


def from_directory(directory: str, seed: int, batch_size: int, process=(0, 1)) -> ContextArraySource:
    arrays, meta = load(directory)
    return ContextArraySource(arrays, seed, batch_size, meta, process)


class ContextStreamSource:
    """The LM in the loop: batch(step) runs the (truncated) model on that step's B context windows
    of the corpus and packs the layer's inputs, patterns and outputs; nothing is written to disk."""

    def __init__(self, d, seed: int, batch_size: int, process: tuple[int, int] = (0, 1)):
        from jaxsae.data import harvest as harvest_lib
        from jaxsae.data import tokens as tokens_lib

        self.in_site, _, self.out_site = check_sites(d.in_sites, d.out_sites)
        self.in_sites, self.out_sites, self.site = (self.in_site,), (self.out_site,), self.out_site
        lm, tok = harvest_lib.load_lm(d.lm)
        ds = harvest_lib.token_windows(d.text, tok, d.lm.context, seed)
        self.model_name = harvest_lib.model_path(d.lm)
        n = min(len(ds), d.lm.windows) if d.lm.windows > 0 else len(ds)  # lm.windows > 0: only the first ones
        self.tokens = tokens_lib.batch_array(ds, 0, n)
        if len(self.tokens) < batch_size:
            raise ValueError(f"the corpus gives {len(self.tokens)} context windows, fewer than one batch of "
                             f"train.batch_size={batch_size} contexts; lower the batch size or add text")
        self.run = capture_fn(lm, self.in_site, self.out_site)
        self._windows = ArraySource(np.zeros((len(self.tokens), 1), np.float32), None, seed, batch_size,
                                    process=process)
        self.seed, self.batch_size = seed, batch_size
        self.process_index, self.process_count = process
        x, pattern, y = self.run(self.tokens[:1])
        self.d_in, self.d_out, self.n_layers = x.shape[-1], y.shape[-1], None
        self.n_heads, self.n_ctx = int(pattern.shape[1]), int(pattern.shape[2])
        self.spec_fields = {"n_heads": self.n_heads, "n_ctx": self.n_ctx}

    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        x, pattern, y = self.run(self.tokens[self._windows.rows(step)])
        return pack(x, pattern), y

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        share = self.batch_size // self.process_count
        x, y = self.global_batch(step)
        part = slice(self.process_index * share, (self.process_index + 1) * share)
        return x[part], y[part]
