"""A download in progress that a reader can follow: the snapshot is indexed while it arrives.

    download thread: created(path) -> grew(n) ... grew(n) -> finish() | finish(error)
    loader:          reader() -> read(size) blocks until the bytes are written (b"" at the end)

Downloading first and loading after would leave the node idle for the whole download (minutes for
the real feed's archive over the Internet) and the network idle for the whole load. The download
itself is unchanged (temp file, Range resume, retries); the reader only ever sees bytes that were
written and flushed. When the download restarts from the first byte (a server without Range),
fails, or the reader gives up, the other side is told: a read raises Interrupted, a grew() raises
Abandoned.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from content_sync.errors import Stopped

__all__ = ["Abandoned", "GrowingFile", "Interrupted"]


class Interrupted(Exception):
    """The download failed, restarted from its first byte, or was abandoned: what was read so
    far may not be the archive. The download's own outcome says what to do."""


class Abandoned(Stopped):
    """The reader gave up (the load failed): the download stops at its next chunk."""


class GrowingFile:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._path: Path | None = None
        self._size = 0  # bytes written and flushed
        self._restarts = 0
        self._done = False
        self._failed = False
        self._abandoned = False

    # -- the download's side ---------------------------------------------------------------------

    def created(self, path: Path) -> None:
        with self._cond:
            self._path = path
            self._cond.notify_all()

    def grew(self, size: int) -> None:
        """`size` bytes are now flushed to the file."""
        with self._cond:
            if self._abandoned:
                raise Abandoned("the load of this download stopped")
            self._size = size
            self._cond.notify_all()

    def restarted(self) -> None:
        """The file was truncated: the download starts again from the first byte."""
        with self._cond:
            self._restarts += 1
            self._size = 0
            self._cond.notify_all()

    def finish(self, *, failed: bool) -> None:
        with self._cond:
            self._done, self._failed = True, failed
            self._cond.notify_all()

    # -- the reader's side -----------------------------------------------------------------------

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def wait_created(self) -> Path:
        """The download's file, once it exists."""
        with self._cond:
            while self._path is None:
                self._check()
                if self._done:  # pragma: no cover - a download always creates its file first
                    raise Interrupted("the download ended before it started")
                self._cond.wait()
            return self._path

    def reader(self) -> GrowingReader:
        path = self.wait_created()
        with self._cond:
            try:
                return GrowingReader(self, path, self._restarts)
            except FileNotFoundError:  # a failed download removes its file
                self._check()
                raise

    def wait_complete(self) -> None:
        """Return once the download finished well; Interrupted if it did not."""
        with self._cond:
            while not self._done:
                self._check()
                self._cond.wait()
            self._check()

    def _check(self, restarts: int | None = None) -> None:
        if self._failed or self._abandoned:
            raise Interrupted("the download failed")
        if restarts is not None and restarts != self._restarts:
            raise Interrupted("the download restarted from its first byte")

    def _available(self, position: int, restarts: int) -> int:
        """Bytes readable at `position` (0 at the end of a finished download), waiting for some."""
        with self._cond:
            while True:
                self._check(restarts)
                if self._size > position or self._done:
                    return max(0, self._size - position)
                self._cond.wait()


class GrowingReader:
    """Sequential reads of a GrowingFile, blocking until the bytes are there."""

    def __init__(self, file: GrowingFile, path: Path, restarts: int) -> None:
        self.path = path
        self._file = file
        self._restarts = restarts
        self._fd = os.open(path, os.O_RDONLY)
        self.position = 0

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (at least one), or b"" at the end of the finished download."""
        available = self._file._available(self.position, self._restarts)
        if available == 0:
            return b""
        data = os.pread(self._fd, min(size, available), self.position)
        self.position += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)
