"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target
(and the folder fsynced), so a reader, or a rerun after a kill or a power loss, sees the old file or
the new one, never half of one."""

from __future__ import annotations

import contextlib
import os


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and racy once threads run


def _mode_for(path: str) -> int:
    """An existing file keeps its permissions; a new one gets 0644 less the umask (like any file
    the user writes, whatever mode the writing library chose)."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return 0o644 & ~_UMASK


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: str, path: str) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, _mode_for(path))
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def atomic_write_bytes(path: str, write) -> None:
    """Write through `write(file)` to a temporary file, then commit it to `path`."""

    def produce(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_copy_into(path, produce)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_copy_into(path: str, produce) -> None:
    """For writers that only take a file name (e.g. safetensors' save_file): `produce(tmp_path)`
    writes the temporary file, which is then fsynced, given its mode and renamed to `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        produce(tmp)
        _commit(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temporaries(folder: str) -> list[str]:
    """Delete `*.tmp-PID` files a killed writer left in `folder` (recursively); their names."""
    gone = []
    for root, _, files in os.walk(folder):
        for f in files:
            if ".tmp-" in f:
                os.remove(os.path.join(root, f))
                gone.append(os.path.join(root, f))
    return gone
