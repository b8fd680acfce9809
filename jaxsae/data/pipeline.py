"""Batches for the train loop through Grain: a `MapDataset` over step indices mapped to the
source's `batch(step)`, read ahead on a background thread so assembling the next batch (store reads,
shuffling, toy generation) overlaps the device step.

The iterator's state (`get_state()`, Grain's {"next_index": step}) is saved in the same orbax
checkpoint as the train state and restored with it, so a resumed run reads exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import grain


def batches(source, total_steps: int, state: dict | None = None, prefetch: int = 2):
    """An iterator of (x, y) host batches for steps [0, total_steps), positioned by `state`."""
    ds = grain.MapDataset.range(total_steps).map(source.batch)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))
    if state is not None:
        it.set_state(state)
    return it


def position(state: dict) -> int:
    """The step the iterator state will produce next."""
    return int(state["next_index"])
