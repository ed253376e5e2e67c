"""Snapshot archive on disk -> a new physical index, verified, then swapped in atomically.

    archive --SnapshotReader--> batches of lines --Packer--> bulk bodies
        --Store.write_bodies (parallel bulk)--> new index
        --verify (archive complete, count == lines)--> _aliases swap --> old index deleted

Readers of the alias see the old content until the one atomic swap. If anything fails before it,
the new index is deleted and the alias is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from content_sync import failpoints, tempfiles
from content_sync.bulkbody import Body
from content_sync.errors import ContentSyncError, SnapshotError, Stopped
from content_sync.growing import GrowingFile
from content_sync.memory import release_free_memory
from content_sync.settings import SyncSettings
from content_sync.snapshot import SnapshotReader
from content_sync.store import BulkStats, Store

__all__ = ["LoadResult", "load_archive", "remove_leftovers"]

log = logging.getLogger(__name__)
PROGRESS_EVERY = 5000  # documents between progress callbacks


@dataclass(frozen=True)
class LoadResult:
    index: str
    documents: int
    bytes_read: int
    member: str
    seconds: float


def _may_be_live(store: Store, alias: str, index: str) -> bool:
    """False only when the alias is known to point elsewhere."""
    try:
        return store.alias_target(alias) == index
    except ContentSyncError:
        return True


def remove_orphans(store: Store, alias: str) -> None:
    """Delete half-built indices a crashed earlier load left behind (never the live one)."""
    for orphan in store.orphan_indices(alias):
        log.warning("removing %s, an index of %s left by an interrupted load", orphan, alias)
        store.delete_index(orphan)


def remove_leftovers(store: Store, alias: str, temp_dir: Path | None) -> None:
    """What a killed cycle may have left: half-built indices of `alias`, downloaded archives.
    Call it holding the feed's lease: no live load of this alias is then in progress."""
    remove_orphans(store, alias)
    tempfiles.remove_stale(temp_dir)


def load_archive(
    store: Store,
    alias: str,
    archive: Path,
    *,
    limits: SyncSettings,
    snapshot_offset: int | None,
    concurrency: int,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    growing: GrowingFile | None = None,
) -> LoadResult:
    """Load `archive` into a new index behind `alias` and swap it in. With `growing`, `archive`
    is still downloading: it is read as it arrives and verified once complete (see growing.py)."""
    started = time.monotonic()
    remove_orphans(store, alias)
    reader = SnapshotReader(
        archive,
        max_uncompressed_bytes=limits.max_uncompressed_bytes,
        max_line_bytes=limits.max_line_bytes,
        max_offset=snapshot_offset,
        growing=growing,
    )
    index = store.create_content_index(alias, loading=True)
    swapping = False
    try:
        stats = BulkStats()

        def bodies() -> Iterator[Body]:
            packer, read = store.packer(index), 0
            for batch in reader.batches():
                yield from packer.add_documents(batch)
                before, read = read, read + len(batch)
                if read // PROGRESS_EVERY != before // PROGRESS_EVERY:
                    release_free_memory()  # keeps a long load's memory flat (memory.py)
                    if should_stop is not None and should_stop():
                        raise Stopped(f"load of {archive.name} interrupted by shutdown")
                    if progress is not None:
                        progress(read, reader.bytes_read)
            last = packer.finish()
            if last is not None:
                yield last

        store.write_bodies(bodies(), concurrency=concurrency, stats=stats)
        if not reader.complete:  # the generator always completes or raises; belt and braces
            raise SnapshotError(f"{archive}: the archive was not read to its end")
        if reader.lines == 0:
            raise SnapshotError(f"{archive}: the snapshot holds no resources")
        store.finish_load(index)
        count = store.count(index)
        if count != reader.lines:
            raise SnapshotError(
                f"{archive}: {reader.lines} lines read but {count} documents indexed "
                "(a resource name appears more than once?)"
            )
        if progress is not None:
            progress(reader.lines, reader.bytes_read)
        failpoints.hit("before-swap")
        swapping = True
        old = store.swap_alias(alias, index)
        failpoints.hit("after-swap")
    except BaseException:
        # A swap whose answer was lost (then not retried: a stop, or the retry budget spent)
        # may have moved the alias: then this is the live index, left as a kill after the swap
        # would leave it. A later load removes it if it is not.
        if not swapping or not _may_be_live(store, alias, index):
            with contextlib.suppress(ContentSyncError):
                store.delete_index(index)
        raise
    for previous in old:
        try:
            store.delete_index(previous)
        except ContentSyncError as exc:  # the content is live; a later load removes the orphan
            log.warning("could not delete the previous index %s: %s", previous, exc)
    seconds = time.monotonic() - started
    log.info(
        "loaded %d documents (%.1f MB) from %s into %s in %.1f s; alias %s moved",
        reader.lines,
        reader.bytes_read / 1e6,
        reader.member_name,
        index,
        seconds,
        alias,
    )
    return LoadResult(index, reader.lines, reader.bytes_read, reader.member_name, seconds)
