"""Hooks through which the cycle reports what happens (metrics, progress bars, logs).

The cycle calls these; the default does nothing. Observers subclass Events and override what they
need, so the core never imports a metrics or terminal library. `Fanout` feeds several observers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from content_sync.store import FeedState
    from content_sync.sync import CycleResult

__all__ = ["Events", "Fanout", "current_feed", "feed_context"]

_local = threading.local()


def current_feed() -> str:
    """The feed whose cycle runs on this thread ('' outside a cycle): labels retries."""
    return getattr(_local, "feed", "")


@contextlib.contextmanager
def feed_context(name: str) -> Iterator[None]:
    previous = current_feed()
    _local.feed = name
    try:
        yield
    finally:
        _local.feed = previous


class Events:
    def retry(self, feed: str, cause: str) -> None:
        """A transient failure is being retried; `cause` like 'feed-429', 'store-429'."""

    def snapshot_started(self, feed: str, reason: str) -> None:
        """A (re-)initialisation from the snapshot begins; `reason` like 'first-run', 'drift'."""

    def download_progress(self, feed: str, done: int, total: int | None) -> None:
        """Snapshot bytes downloaded so far."""

    def index_progress(self, feed: str, docs: int, size: int) -> None:
        """Snapshot documents (and their bytes) indexed so far."""

    def changes_applied(self, feed: str, kind: str, count: int) -> None:
        """`count` changes of type `kind` were applied and recorded."""

    def docs_written(self, feed: str, count: int) -> None:
        """Content documents written (indexed or deleted)."""

    def cycle_started(self, feed: str) -> None:
        """A cycle (or an import) begins."""

    def cycle_finished(self, result: CycleResult, state: FeedState | None) -> None:
        """A cycle ended; `state` is what was recorded for the feed (None: unknown, the state
        could not even be read)."""

    def close(self) -> None:
        """The command is done: release what the observer holds (terminal bars)."""


class Fanout(Events):
    """Forward every event to several observers, in order."""

    def __init__(self, *observers: Events) -> None:
        self.observers = observers

    def retry(self, feed: str, cause: str) -> None:
        for o in self.observers:
            o.retry(feed, cause)

    def snapshot_started(self, feed: str, reason: str) -> None:
        for o in self.observers:
            o.snapshot_started(feed, reason)

    def download_progress(self, feed: str, done: int, total: int | None) -> None:
        for o in self.observers:
            o.download_progress(feed, done, total)

    def index_progress(self, feed: str, docs: int, size: int) -> None:
        for o in self.observers:
            o.index_progress(feed, docs, size)

    def changes_applied(self, feed: str, kind: str, count: int) -> None:
        for o in self.observers:
            o.changes_applied(feed, kind, count)

    def docs_written(self, feed: str, count: int) -> None:
        for o in self.observers:
            o.docs_written(feed, count)

    def cycle_started(self, feed: str) -> None:
        for o in self.observers:
            o.cycle_started(feed)

    def cycle_finished(self, result: CycleResult, state: FeedState | None) -> None:
        for o in self.observers:
            o.cycle_finished(result, state)
