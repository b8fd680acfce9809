"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target,
so a reader (or a rerun after a kill) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os


def atomic_write_bytes(path: str, write, mode: int = 0o644) -> None:
    """Write through `write(file)` to a temporary file, fsync, then rename over `path`. The file gets
    `mode` (less the umask), like any other file the user writes, whatever the writer used."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_copy_into(path: str, produce) -> None:
    """For writers that only take a file name (e.g. safetensors' save_file): `produce(tmp_path)`
    writes the temporary file, which is then fsynced, given the usual mode and renamed to `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        produce(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
        os.replace(tmp, path)
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
