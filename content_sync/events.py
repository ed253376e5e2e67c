"""Hooks through which the cycle reports what happens (metrics, progress bars, logs).

The cycle calls these; the default does nothing. Observers subclass Events and override what they
need, so the core never imports a metrics or terminal library.
"""

from __future__ import annotations

__all__ = ["Events"]


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
