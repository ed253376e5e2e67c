"""Progress of a snapshot load: bars in a terminal, a log line every PERIOD seconds otherwise."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from typing import Any

from content_sync.events import Events

__all__ = ["LoggedProgress", "TerminalProgress", "progress_events"]

log = logging.getLogger("content_sync.progress")
PERIOD = 30.0


class LoggedProgress(Events):
    """For services: at most one progress line per PERIOD seconds per kind."""

    def __init__(self, period: float = PERIOD) -> None:
        self._period = period
        self._last: dict[str, float] = {}

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, 0.0) < self._period:
            return False
        self._last[key] = now
        return True

    def download_progress(self, feed: str, done: int, total: int | None) -> None:
        if self._due(f"dl-{feed}"):
            of = f" of {total / 1e6:.1f}" if total else ""
            log.info("feed %s: snapshot download %.1f%s MB", feed, done / 1e6, of)

    def index_progress(self, feed: str, docs: int, size: int) -> None:
        if self._due(f"ix-{feed}"):
            log.info("feed %s: %d snapshot documents indexed (%.1f MB)", feed, docs, size / 1e6)


class TerminalProgress(Events):
    """For a person at a terminal: tqdm bars for the download (bytes) and indexing (documents)."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def _bar(self, key: str, **kw: Any) -> Any:
        from tqdm import tqdm

        if key not in self._bars:
            # A pseudo-terminal may report 0 columns (tqdm then draws nothing): fall back to 100.
            columns = shutil.get_terminal_size((100, 20)).columns or 100
            self._bars[key] = tqdm(file=sys.stderr, ncols=columns, **kw)
        return self._bars[key]

    def download_progress(self, feed: str, done: int, total: int | None) -> None:
        bar = self._bar(
            f"dl-{feed}", desc=f"{feed} download", unit="B", unit_scale=True, total=total
        )
        bar.update(done - bar.n)

    def index_progress(self, feed: str, docs: int, size: int) -> None:
        bar = self._bar(f"ix-{feed}", desc=f"{feed} indexing", unit=" docs", unit_scale=True)
        bar.update(docs - bar.n)

    def snapshot_started(self, feed: str, reason: str) -> None:
        self.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def progress_events(interactive: bool | None = None) -> Events:
    tty = sys.stderr.isatty() if interactive is None else interactive
    return TerminalProgress() if tty else LoggedProgress()
