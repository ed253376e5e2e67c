"""Temp archives: a leftover is a file no live process holds, whatever the pid in its name says
(pids are per namespace: containers sharing a temp volume see each other's as dead, or as
someone else's live process)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from content_sync import tempfiles
from content_sync.errors import SnapshotError
from content_sync.feed import FeedClient
from content_sync.growing import GrowingFile, Interrupted
from content_sync.retry import RetryPolicy
from content_sync.settings import CTISettings
from content_sync.sync import _temp_copy

HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another live process holding `path`'s lock, as create() does, until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def remove_stale_elsewhere(directory: Path) -> None:
    code = "import sys; from pathlib import Path; from content_sync import tempfiles\n"
    code += "tempfiles.remove_stale(Path(sys.argv[1]))\n"
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True, timeout=60)


def test_a_live_holder_keeps_its_archive_even_when_its_pid_looks_dead(tmp_path: Path) -> None:
    path = tmp_path / f"content-sync-{dead_pid()}-abc123.zip"  # as from another pid namespace
    path.write_bytes(b"PK partial download")
    with held_elsewhere(path):
        tempfiles.remove_stale(tmp_path)
        assert path.exists(), "a live process's download was deleted"
    tempfiles.remove_stale(tmp_path)  # the holder is gone: now it is a leftover
    assert not path.exists()


def test_an_archive_nobody_holds_is_a_leftover_even_when_its_pid_is_alive(tmp_path: Path) -> None:
    path = tmp_path / f"content-sync-{os.getppid()}-def456.zip"  # a pid reused by another process
    path.write_bytes(b"PK left by a SIGKILL")
    tempfiles.remove_stale(tmp_path)
    assert not path.exists()


def test_other_names_are_left_alone(tmp_path: Path) -> None:
    names = [
        "content-sync-export.zip",
        "content-sync-abc-1.zip",
        "other-1-2.zip",
        "content-sync-1-x",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"not ours")
    tempfiles.remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_created_archives_are_private_held_and_discarded(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        fd, path = tempfiles.create(tmp_path, "kept-")
    finally:
        os.umask(previous)
    with os.fdopen(fd, "wb") as out:
        out.write(b"PK")
    assert path.name.startswith(f"content-sync-{os.getpid()}-kept-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    remove_stale_elsewhere(tmp_path)  # another process: the lock says it is live
    tempfiles.remove_stale(tmp_path)  # this one: it is its own
    assert path.exists()
    tempfiles.discard(path)
    assert not path.exists()
    assert path not in tempfiles._held  # the lock's descriptor is closed
    tempfiles.discard(path)  # twice is harmless


def test_a_discarded_archive_is_not_held_any_more(tmp_path: Path) -> None:
    """discard() releases the lock, so nothing that outlives it (a copy under the same name
    restored by hand, say) is mistaken for live."""
    fd, path = tempfiles.create(tmp_path)
    os.close(fd)
    tempfiles.discard(path)
    path.write_bytes(b"PK")
    remove_stale_elsewhere(tmp_path)
    assert not path.exists()


def test_without_locks_nothing_is_deleted_and_downloads_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without flock (some FUSE mounts): nothing can be told, so nothing goes."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    fd, path = tempfiles.create(tmp_path)
    os.close(fd)
    other = tmp_path / f"content-sync-{dead_pid()}-left.zip"
    other.write_bytes(b"PK")
    tempfiles.remove_stale(tmp_path)
    assert path.exists() and other.exists()
    tempfiles.discard(path)
    assert not path.exists()


def test_a_file_taken_for_a_leftover_while_being_created_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """remove_stale() elsewhere may run between mkstemp and the lock: it deletes the new file,
    or holds its lock. create() then starts again with another file, held and existing."""
    real = tempfile.mkstemp
    calls: list[str] = []
    blockers: list[int] = []

    def racing(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)  # type: ignore[call-overload]
        calls.append(name)
        if len(calls) == 1:
            os.unlink(name)  # a remover deleted it
        elif len(calls) == 2:
            blocker = os.open(name, os.O_RDWR)  # a remover holds it (another description)
            fcntl.flock(blocker, fcntl.LOCK_EX)
            blockers.append(blocker)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", racing)
    fd, path = tempfiles.create(tmp_path)
    os.close(fd)
    try:
        assert len(calls) == 3 and str(path) == calls[2]
        assert path.exists()
        held = tempfiles._held[path]
        assert fcntl.fcntl(held, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR  # NFS needs it
        remove_stale_elsewhere(tmp_path)
        assert path.exists()
    finally:
        tempfiles.discard(path)
        for blocker in blockers:
            os.close(blocker)


def test_a_fifo_or_a_symlink_named_like_an_archive_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / f"content-sync-{dead_pid()}-fifo.zip"
    os.mkfifo(fifo)
    target = tmp_path / "precious"
    target.write_bytes(b"not ours")
    link = tmp_path / f"content-sync-{dead_pid()}-link.zip"
    link.symlink_to(target)
    tempfiles.remove_stale(tmp_path)  # returns: neither waits on the FIFO nor follows the link
    assert fifo.exists() and link.is_symlink() and target.read_bytes() == b"not ours"


def test_a_temp_dir_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    """Before any request: the download's file cannot be made (here temp_dir is a file)."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    client = FeedClient(CTISettings(base_url="http://127.0.0.1:9"), RetryPolicy(attempts=1))
    growing = GrowingFile()
    with pytest.raises(SnapshotError, match=r"sync\.temp_dir"):
        client.download_snapshot(
            "http://127.0.0.1:9/x.zip", temp_dir=not_a_dir, max_bytes=1 << 20, growing=growing
        )
    with pytest.raises(Interrupted):  # a reader waiting for the file is told, not left waiting
        growing.wait_created()


def test_a_kept_archive_that_cannot_be_copied_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "kept.zip"
    kept.write_bytes(b"PK" * 1000)
    temp = tmp_path / "temp"
    temp.mkdir()
    copy = _temp_copy(kept, temp)
    assert copy.read_bytes() == kept.read_bytes() and copy in tempfiles._held
    tempfiles.discard(copy)
    with pytest.raises(SnapshotError, match=r"sync\.temp_dir"):
        _temp_copy(tmp_path / "missing.zip", temp)  # the copy fails half-way
    assert list(temp.iterdir()) == []
    with pytest.raises(SnapshotError, match=r"sync\.temp_dir"):
        _temp_copy(kept, kept)  # the temp dir is a file
