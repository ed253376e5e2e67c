"""Private temp archives that any process can tell apart from a dead process's leftovers.

Downloads live in `sync.temp_dir`, which several processes may share: two replicas, a manual
`sync` beside the service, containers with a shared volume. Each process holds an exclusive
flock on every archive it keeps, from creation until it deletes it; the kernel drops the lock
when the process dies (SIGKILL, OOM kill, power cut aside), so a file nobody holds a lock on is a
leftover. Unlike the pid in the name (still there, for people), the lock means the same in every
pid namespace: a pid from another container may be alive here, or not, by coincidence. Over
NFS, Linux turns flock into a POSIX lock that the server arbitrates.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from pathlib import Path

__all__ = ["PATTERN", "create", "discard", "remove_stale"]

log = logging.getLogger(__name__)

PATTERN = "content-sync-*-*.zip"  # content-sync-<pid>-<kind><random>.zip
_held: dict[Path, int] = {}  # archive -> the descriptor holding its lock
_lock = threading.Lock()


def _try_lock(fd: int) -> bool | None:
    """True: locked. False: another process holds it. None: this file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: some FUSE and old NFS mounts
        return None
    return True


def create(temp_dir: Path | None, kind: str = "") -> tuple[int, Path]:
    """A new empty archive file (0600) in `temp_dir`, locked until discard(); returns a
    descriptor open for writing (the caller closes it) and the path."""
    while True:
        fd, name = tempfile.mkstemp(
            prefix=f"content-sync-{os.getpid()}-{kind}", suffix=".zip", dir=temp_dir
        )
        held = os.open(name, os.O_RDONLY)
        # Between mkstemp and the lock, remove_stale() in another process may take the file for a
        # leftover: it then holds the lock, or has deleted the file. Either way, start again.
        # Without locks at all, remove_stale() never deletes anything there: go on unlocked.
        if _try_lock(held) is not False and os.fstat(held).st_nlink > 0:
            path = Path(name)
            with _lock:
                _held[path] = held
            return fd, path
        os.close(held)
        os.close(fd)


def discard(path: Path) -> None:
    """Delete an archive from create(), then release its lock."""
    path.unlink(missing_ok=True)
    with _lock:
        held = _held.pop(path, None)
    if held is not None:
        os.close(held)


def remove_stale(temp_dir: Path | None) -> None:
    """Delete the archives of processes that died before they could; never a live one's."""
    for path in Path(temp_dir or tempfile.gettempdir()).glob(PATTERN):
        if not path.name.split("-")[2].isdigit():
            continue  # not a name create() gives
        with _lock:
            if path in _held:
                continue  # ours: over NFS a lock is per process, and would be granted again
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone already, or another user's
            continue
        try:
            # Still the file that was listed (not deleted by another process meanwhile). Where
            # locks are unsupported nothing can be told: leave it.
            if _try_lock(fd) is True and os.fstat(fd).st_nlink > 0:
                log.info("removing %s, left by a process that is gone", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        finally:
            os.close(fd)
