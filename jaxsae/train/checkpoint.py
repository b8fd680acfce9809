"""Orbax checkpoints of the train state, verified on restore.

Each checkpoint step holds four items: the train state, the run manifest (checked on resume: a
checkpoint written by a different run is refused), the data iterator's state, and `integrity`: a
hash of every state array (jaxsae.train.fingerprint). Saving refuses non-finite state, so a
diverged run can never replace good checkpoints with poisoned ones. Restoring re-hashes every
array; a checkpoint that is corrupt, truncated or unreadable is named, moved to
`checkpoints.quarantine/` beside the checkpoint directory, and the run falls back to the newest
good one. If none is good the run refuses to start, saying what to delete. Leftover temporary
folders of interrupted saves are reported and moved aside too. Nothing is ever deleted except by
the manager's own rotation of good checkpoints.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsae.train import fingerprint

log = logging.getLogger("jaxsae")

# manifest keys whose change makes a checkpoint unusable for exact resume
MATCH_KEYS = ("spec", "data", "seed", "batch_size", "d_in", "d_out")
# spec fields derived from train.steps (BatchTopK's threshold start): a new value on resume is a
# schedule change (logged by the loop), not a different dictionary
_DERIVED = re.compile(r"threshold_start_step=\d+(, )?")


def _comparable(key: str, value):
    return _DERIVED.sub("", value) if key == "spec" and isinstance(value, str) else value
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names it and the fix."""


class NonFiniteStateError(RuntimeError):
    """The state to be saved holds nan/inf; it was not saved."""

    def __init__(self, step: int, leaves: list[str]):
        self.step, self.leaves = step, leaves
        super().__init__(f"state at step {step} holds nan/inf in {', '.join(leaves[:4])}"
                         f"{' ...' if len(leaves) > 4 else ''}")


class _Unusable(Exception):
    """Internal: this checkpoint step cannot be used (corrupt, incomplete); carries a one-line reason."""


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_agree(ok: bool) -> bool:
    """True only if every process found the step usable (each verifies its own reads)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# read errors that say nothing about the checkpoint itself: never a reason to quarantine it
_TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.ENOMEM, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR}


def _transient(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS)


def one_line(e: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters (orbax/TensorStore errors can run
    to hundreds of lines of spec)."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= limit else first[:limit] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data: dict | None
    manifest: dict


class Checkpointer:
    def __init__(self, directory: str, keep: int = 2, writer: bool = True):
        """`writer`: this process may move folders aside (process 0 of a multi-host job)."""
        self.directory = os.path.abspath(directory)
        self.quarantine_dir = self.directory.rstrip("/") + ".quarantine"
        self.writer = writer
        os.makedirs(self.directory, exist_ok=True)
        if writer:
            self._move_tmp_leftovers()
        _sync("jaxsae_checkpoint_leftovers")  # no process lists the folders process 0 is moving
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "manifest", "data", "integrity"),
        )

    # -- what is on disk ---------------------------------------------------------------------
    def saved_steps(self) -> list[int]:
        """Steps with a finished checkpoint on disk, ascending (not counting a save in flight)."""
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit()
                      and os.path.isdir(os.path.join(self.directory, n)))

    def latest_step(self) -> int | None:
        steps = self.saved_steps()
        return steps[-1] if steps else None

    def _quarantine(self, name: str, reason: str) -> str:
        if not self.writer:
            return os.path.join(self.directory, name)
        os.makedirs(self.quarantine_dir, exist_ok=True)
        dest = os.path.join(self.quarantine_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        shutil.move(os.path.join(self.directory, name), dest)
        log.warning("checkpoint %s: %s; moved to %s", os.path.join(self.directory, name), reason, dest)
        return dest

    def _move_tmp_leftovers(self) -> None:
        """Temporary folders of saves that never finished (a kill or an error during an async save)."""
        for name in sorted(os.listdir(self.directory)):
            if TMP_SUFFIX in name and os.path.isdir(os.path.join(self.directory, name)):
                self._quarantine(name, "the save of this step never finished (ignored)")

    # -- save ----------------------------------------------------------------------------------
    def save(self, step: int, state: Any, manifest: dict, data: dict | None = None) -> None:
        """One checkpoint: train state, run manifest, data iterator state and array hashes. Raises
        NonFiniteStateError (and saves nothing) if any state array holds nan/inf."""
        hashes, bad = fingerprint.inspect(state)
        if bad:
            raise NonFiniteStateError(step, bad)
        manifest = {**manifest, "integrity_format": 1}  # restores of this checkpoint require the checksums
        items = dict(state=ocp.args.StandardSave(state), manifest=ocp.args.JsonSave(manifest),
                     integrity=ocp.args.JsonSave({"format": 1, "arrays": hashes}))
        if data is not None:
            items["data"] = ocp.args.JsonSave(data)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # an earlier async save that failed surfaces here
            raise CheckpointError(f"saving a checkpoint in {self.directory} failed ({one_line(e)}); the finished "
                                  f"checkpoints {self.saved_steps()} are intact: rerun to resume from the newest") from e

    # -- restore -------------------------------------------------------------------------------
    def _item(self, step: int, name: str, arg):
        return self.manager.restore(step, args=ocp.args.Composite(**{name: arg}))[name]

    def _try_step(self, step: int, abstract_state: Any, manifest: dict) -> Restored:
        where = os.path.join(self.directory, str(step))
        try:
            saved = self._item(step, "manifest", ocp.args.JsonRestore())
        except Exception as e:
            raise _Unusable(f"unreadable manifest ({one_line(e)})") from e
        diffs = [k for k in MATCH_KEYS if _comparable(k, saved.get(k)) != _comparable(k, manifest.get(k))]
        if diffs:
            detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {manifest.get(k)!r}" for k in diffs)
            raise CheckpointError(f"checkpoint {where} was written by a different run ({detail}). "
                                  "Use the original config, or a fresh --workdir for the new one.")
        integrity = None
        if os.path.isdir(os.path.join(where, "integrity")):
            try:
                integrity = self._item(step, "integrity", ocp.args.JsonRestore())["arrays"]
            except Exception as e:
                raise _Unusable(f"unreadable checksums ({one_line(e)})") from e
        elif saved.get("integrity_format"):
            raise _Unusable("its checksums (the integrity/ folder) are missing")
        if integrity is not None:
            expect = {k: (v["shape"], v["dtype"]) for k, v in integrity.items()}
            names, leaves = fingerprint.leaf_paths(abstract_state)
            now = {k: (list(a.shape), str(a.dtype)) for k, a in zip(names, leaves)}
            if expect != now:
                changed = sorted(k for k in set(expect) | set(now) if expect.get(k) != now.get(k))
                raise CheckpointError(
                    f"checkpoint {where} holds a train state of another layout ({', '.join(changed[:4])}"
                    f"{' ...' if len(changed) > 4 else ''} differ): a setting that shapes the optimiser or the "
                    "dictionary changed (e.g. train.grad_clip). Use the original config, or a fresh --workdir.")
        try:
            state = self._item(step, "state", ocp.args.StandardRestore(abstract_state))
        except Exception as e:
            if _transient(e):
                raise CheckpointError(f"could not read checkpoint {where} ({one_line(e)}); this looks like a "
                                      "passing I/O or memory problem, not a damaged checkpoint: rerun") from e
            raise _Unusable(f"corrupt or incomplete state ({one_line(e)})") from e
        if integrity is not None:
            now, _ = fingerprint.inspect(state)
            bad = fingerprint.mismatches(integrity, now)
            if bad:
                raise _Unusable(f"corrupt: the checksum of {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                                "differs from the one saved with it")
        else:
            log.warning("checkpoint %s has no checksums (written by an older jaxsae): restored unverified", where)
        data = None
        if os.path.isdir(os.path.join(where, "data")):
            try:
                data = self._item(step, "data", ocp.args.JsonRestore())
            except Exception as e:
                raise _Unusable(f"unreadable data-iterator state ({one_line(e)})") from e
        return Restored(step, state, data, saved)

    def restore(self, abstract_state: Any, manifest: dict) -> Restored | None:
        """The newest checkpoint that verifies, or None when the directory holds no checkpoint.
        Unusable newer ones are moved to the quarantine folder (named in the log)."""
        steps = self.saved_steps()
        if not steps:
            junk = sorted(n for n in os.listdir(self.directory) if not n.startswith(".") and TMP_SUFFIX not in n)
            if junk:
                raise CheckpointError(
                    f"{self.directory} holds {junk} but no complete checkpoint; refusing to start from scratch over it. "
                    "Remove the directory or choose another --workdir.")
            return None
        bad: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                found, why = self._try_step(step, abstract_state, manifest), None
            except _Unusable as e:
                found, why = None, str(e)
            if not _all_agree(found is not None):
                bad.append((step, why or "unreadable on another process"))
                continue
            for s, why in bad:
                self._quarantine(str(s), why + f"; falling back to step {step}")
            if bad:
                _sync("jaxsae_checkpoint_quarantine")
                self.manager.reload()
            return found
        listing = "; ".join(f"step {s}: {why}" for s, why in bad)
        raise CheckpointError(f"no usable checkpoint in {self.directory} ({listing}). Delete that directory to "
                              "train from scratch (or restore it from a copy).")

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"saving a checkpoint in {self.directory} failed ({one_line(e)}); the finished "
                                  f"checkpoints {self.saved_steps()} are intact: rerun to resume from the newest") from e

    def close(self) -> None:
        self.wait()
        self.manager.close()
