"""Orbax checkpoints of the train state, with a JSON manifest checked on resume.

A run resumes only from a checkpoint whose manifest matches its own (architecture and widths,
data stream, seed, batch size); anything else, and any checkpoint that cannot be read, is a
`CheckpointError` naming the problem and the fix. Never a silent restart from scratch.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names it and the fix."""


# manifest keys whose change makes a checkpoint unusable for exact resume
MATCH_KEYS = ("spec", "data", "seed", "batch_size", "d_in", "d_out")


class Checkpointer:
    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "manifest", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, manifest: dict, data: dict | None = None) -> None:
        """One checkpoint: train state, run manifest and the data iterator's state, together."""
        items = dict(state=ocp.args.StandardSave(state), manifest=ocp.args.JsonSave(manifest))
        if data is not None:
            items["data"] = ocp.args.JsonSave(data)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_data(self, step: int) -> dict | None:
        """The data iterator state saved with checkpoint `step` (None for checkpoints without one)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
            return None
        return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

    def _leftovers(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory) if not n.startswith("."))

    def restore(self, abstract_state: Any, manifest: dict) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint, or None when the directory holds none."""
        step = self.latest_step()
        if step is None:
            junk = self._leftovers()
            if junk:
                raise CheckpointError(
                    f"{self.directory} holds {junk} but no complete checkpoint; refusing to start from "
                    "scratch over it. Remove the directory or choose another --workdir.")
            return None
        where = os.path.join(self.directory, str(step))
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore()))["manifest"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} has an unreadable manifest ({type(e).__name__}: {e}); "
                                  "delete that step directory to resume from an older one") from e
        diffs = [k for k in MATCH_KEYS if saved.get(k) != manifest.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {manifest.get(k)!r}" for k in diffs)
            raise CheckpointError(f"checkpoint {where} was written by a different run ({detail}). "
                                  "Use the original config, or a fresh --workdir for the new one.")
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is corrupt or incomplete ({type(e).__name__}: {e}); "
                                  "delete that step directory to resume from an older one") from e
        return step, state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
