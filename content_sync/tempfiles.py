"""Private temp archives that any process can tell apart from a dead process's leftovers.

Downloads live in `sync.temp_dir`, which several processes may share: two replicas, a manual
`sync` beside the service, containers with a shared volume. Each process holds an exclusive
flock on every archive it keeps, from creation until it deletes it; the kernel drops the lock
when the process dies (SIGKILL, OOM kill), so a file nobody holds a lock on is a leftover.
Unlike the pid in the name (still there, for people), the lock means the same in every pid
namespace: a pid from another container may be alive here, or not, by coincidence.

Locks belong to the open file description (locally, and in Linux's NFS emulation of flock, which
needs the file open for writing): the lock is taken on a duplicate of the descriptor the archive
is written through, so closing that one keeps it. Where the file system refuses locks, the
archive is renamed out of the pattern below: nothing can tell whether it is live, so it is never
removed as a leftover (a warning says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path

__all__ = ["PATTERN", "create", "directory", "discard", "probe", "remove_stale"]

log = logging.getLogger(__name__)

PATTERN = "content-sync-*-*.zip"  # content-sync-<pid>-<kind><random>.zip
_NOLOCK = "content-sync-nolock-"  # an archive that could not be locked: out of PATTERN's reach
_held: dict[Path, int] = {}  # archive -> the descriptor holding its lock
_lock = threading.Lock()
_warned: set[str] = set()


def directory(temp_dir: Path | None) -> Path:
    """Where archives go: `sync.temp_dir`, else the system's temp dir."""
    return Path(temp_dir or tempfile.gettempdir())


def _try_lock(fd: int) -> bool | None:
    """True: locked. False: another process holds it. None: this file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: some FUSE and NFS mounts
        return None
    return True


def _same_file(path: Path, fd: int) -> bool:
    """`path` still names the file open as `fd` (not deleted, nor replaced, meanwhile). Over NFS
    a deleted file still open is renamed, not unlinked: the link count would not tell."""
    try:
        named, opened = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def create(temp_dir: Path | None, kind: str = "") -> tuple[int, Path]:
    """A new empty archive file (0600) in `temp_dir`, held until discard(); returns a
    descriptor open for writing (the caller closes it) and the path."""
    while True:
        fd, name = tempfile.mkstemp(
            prefix=f"content-sync-{os.getpid()}-{kind}", suffix=".zip", dir=temp_dir
        )
        path = Path(name)
        held = os.dup(fd)
        locked = _try_lock(held)
        # Between mkstemp and the lock, remove_stale() elsewhere may take the file for a
        # leftover: it then holds the lock, or has deleted the file. Either way, start again.
        try:
            if locked is not False and _same_file(path, held):
                if locked is None:
                    path = _unlockable(path)
                with _lock:
                    _held[path] = held
                return fd, path
        except BaseException:
            path.unlink(missing_ok=True)
            os.close(held)
            os.close(fd)
            raise
        os.close(held)
        os.close(fd)


def _unlockable(path: Path) -> Path:
    """Rename an archive that cannot be locked out of remove_stale()'s reach."""
    where = str(path.parent)
    if where not in _warned:
        _warned.add(where)
        log.warning(
            "%s does not support file locks: archives that a killed content-sync process leaves "
            "there are not removed automatically (%s*.zip)",
            where,
            _NOLOCK,
        )
    renamed = path.with_name(path.name.replace("content-sync-", _NOLOCK, 1))
    os.rename(path, renamed)
    return renamed


def probe(temp_dir: Path | None) -> bool:
    """Make and delete an archive file in `temp_dir`: OSError if it cannot be written; False if
    it can, but has no file locks (leftovers there are then never removed automatically)."""
    fd, path = create(temp_dir, "probe-")
    os.close(fd)
    discard(path)
    return not path.name.startswith(_NOLOCK)


def discard(path: Path) -> None:
    """Delete an archive from create(), then release its lock."""
    try:
        path.unlink(missing_ok=True)
    finally:
        with _lock:
            held = _held.pop(path, None)
        if held is not None:
            os.close(held)


def remove_stale(temp_dir: Path | None) -> None:
    """Delete the archives of processes that died before they could; never a live one's, and
    nothing but this user's regular files named as create() names them."""
    with _lock:
        ours = {(s.st_dev, s.st_ino) for s in map(os.fstat, _held.values())}
    for path in directory(temp_dir).glob(PATTERN):
        if not path.name.split("-")[2].isdigit():
            continue
        try:
            _remove_if_stale(path, ours)
        except OSError as exc:  # another user's file in a shared /tmp, a stale NFS handle...
            log.debug("left %s alone: %s", path, exc)


def _remove_if_stale(path: Path, ours: set[tuple[int, int]]) -> None:
    # O_NOFOLLOW|O_NONBLOCK: a symlink or a FIFO planted under such a name is not followed, nor
    # waited on. O_RDWR: the NFS emulation of flock needs it.
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return
        if (info.st_dev, info.st_ino) in ours:
            return
        if _try_lock(fd) is True and _same_file(path, fd):
            log.info("removing %s, left by a process that is gone", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)
