"""The token pipeline, on Grain: documents -> shuffled (seeded) -> tokenized -> packed into fixed
context windows that each start with BOS -> shuffled windows -> this process's share.

Packing follows the common SAE-training convention: documents are concatenated, each preceded by
BOS, and the stream is cut into windows of `context - 1` tokens with BOS prepended, so every window
starts like a fresh sequence. BOS (and pad) positions are markers, not text: `content_mask` flags
them so they never reach training data or metrics.

The result is a Grain `MapDataset` of [context] int32 windows: random access by index, so a
harvest can resume at any window and every process can take a disjoint slice.
"""

from __future__ import annotations

import grain
import numpy as np


def special_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that mark structure (BOS, and pad when it differs) and never count as text."""
    ids = {i for i in (tokenizer.bos_id, getattr(tokenizer, "pad_id", None)) if i is not None}
    return tuple(sorted(ids))


def content_mask(tokens_bt: np.ndarray, specials: tuple[int, ...]) -> np.ndarray:
    """True where a position holds a text token (not BOS/pad)."""
    return ~np.isin(np.asarray(tokens_bt), np.asarray(specials, dtype=np.int64))


def text_rows(acts_bt_, keep_bt: np.ndarray) -> np.ndarray:
    """Activations [batch, seq, ...] at the text positions as rows [n, width] (per-head sites'
    trailing [heads, head_dim] flattened), in window order."""
    acts = np.asarray(acts_bt_)
    return acts[keep_bt].reshape(int(keep_bt.sum()), -1)


def pack(token_lists, context: int, bos_id: int) -> np.ndarray:
    """[n_windows, context] int32: BOS-separated documents cut into windows that start with BOS
    (the last partial window is dropped)."""
    if context < 2:
        raise ValueError(f"context must be at least 2 (BOS + one token), got {context}")
    stream = np.concatenate([np.asarray([bos_id, *ids], np.int32) for ids in token_lists] or [np.zeros(0, np.int32)])
    body = context - 1
    n = len(stream) // body
    out = np.empty((n, context), np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = stream[: n * body].reshape(n, body)
    return out


def windows(docs: list[str], tokenizer, context: int, seed: int) -> grain.MapDataset:
    """All context windows of `docs` as a Grain MapDataset (deterministic from `seed`)."""
    if tokenizer.bos_id is None:
        raise ValueError("the tokenizer has no BOS token; windows need one to start each sequence")
    token_lists = list(grain.MapDataset.source(docs).shuffle(seed=seed).map(tokenizer.encode))
    packed = pack(token_lists, context, tokenizer.bos_id)
    if len(packed) == 0:
        raise ValueError(f"the corpus has fewer than {context} tokens: no full context window")
    return grain.MapDataset.source(packed).shuffle(seed=seed + 1)


def for_process(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's share: windows process_index, process_index + process_count, ..."""
    return ds[process_index::process_count]


def batch_array(ds: grain.MapDataset, start: int, size: int) -> np.ndarray:
    """Windows [start, start + size) stacked: [size, context] int32."""
    return np.stack([ds[i] for i in range(start, start + size)])
