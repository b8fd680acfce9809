"""One writer per output directory: an advisory lock file holding the owner's pid, host and start time.

  with runlock.hold(workdir, "training"):
      ...  # nothing else can train, harvest or evaluate into `workdir` meanwhile

The lock is `DIR/.jaxsae.lock`, held with `flock` (so the kernel releases it the moment its process
dies, even on kill -9) and holding `{"pid", "host", "since", "what"}` so a second writer is told who
has the directory. A lock file left by a dead process is taken over with a message saying so. The
file is removed on release; an acquirer re-checks that the file it locked is still the one at the
path, so a release racing with an acquire never yields two owners.

flock is per host: two hosts writing one directory on a shared file system are refused only if the
file system honours flock across hosts (most NFS setups do, GCS FUSE does not). Multi-host jobs
take the lock on process 0, the one process that writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time

log = logging.getLogger("jaxsae")
LOCK_NAME = ".jaxsae.lock"


class LockedError(RuntimeError):
    """Another live process writes to this directory; the message names it."""


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class Lock:
    """A held lock (see `acquire`); `release()` gives it up."""

    def __init__(self, directory: str, fd: int, path: str):
        self.directory, self._fd, self.path = directory, fd, path

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def acquire(directory: str, what: str) -> Lock:
    """Lock `directory` (created if missing) for one writer doing `what`, or raise LockedError."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{directory}: its file system does not support file locks ({e.strerror}); "
                                  "jaxsae cannot guarantee one writer there: use a local directory") from None
            owner = _read(path)
            who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
            since = owner.get("since")
            when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
            raise LockedError(
                f"{directory} is in use by {who} ({owner.get('what', 'a jaxsae job')}{when}); wait for it to "
                f"finish or stop it, or use another directory. Only one job may write a directory at a time.") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous owner released (unlinked) between our open and our flock: retry
            os.close(fd)
            continue
        previous = _read(path)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
        if previous.get("pid") and (previous.get("pid"), previous.get("host")) != (me["pid"], me["host"]):
            state = ("no longer running" if previous.get("host") != me["host"] or not _pid_alive(int(previous["pid"]))
                     else "its lock was released")
            log.warning("%s: taking over a stale lock left by pid %s on host %s (%s)", directory,
                        previous.get("pid"), previous.get("host"), state)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        return Lock(directory, fd, path)
    raise LockedError(f"{directory}: could not take the lock {path} (it keeps changing hands); try again")


@contextlib.contextmanager
def hold(directory: str, what: str, enabled: bool = True):
    """Context manager: `acquire` on entry (unless `enabled` is False, e.g. on non-writing processes),
    release on exit."""
    lock = acquire(directory, what) if enabled else None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
