"""One synchronisation cycle for one feed: the mission, top to bottom.

    1. read the state (OpenSearch) and the consumer (feed): local vs remote offset
    2. in sync: record the check, deliver a pending notification, done
    3. never initialised, feed rebuilt, local copy invalid, far behind, or asked: load the snapshot
       into a fresh index and swap it in (loader.py)
    4. walk the windows (F, T] up to the remote offset: fetch, multi-get, patch in memory, one
       bulk write, then record local_offset = T
    5. a change that does not apply means drift: re-initialise from the snapshot, patch on
    6. content moved: tell the Command Manager (kept as pending if it cannot be delivered)

Transient trouble is retried inside the clients; what still fails ends the cycle `failed` with the
offset of the last complete window kept, so the next cycle resumes there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from content_sync import failpoints, tempfiles
from content_sync.errors import (
    ContentSyncError,
    DriftError,
    FeedError,
    LeaseLostError,
    SnapshotError,
    Stopped,
    TransientError,
)
from content_sync.events import Events, feed_context
from content_sync.feed import Change, ConsumerInfo, FeedClient, iter_windows
from content_sync.growing import GrowingFile, Interrupted
from content_sync.keep import ArchiveKeeper
from content_sync.loader import LoadResult, load_archive, remove_leftovers
from content_sync.notify import Notifier
from content_sync.patching import WindowResult, apply_window, needs_stored
from content_sync.settings import FeedSettings, Settings
from content_sync.snapshot import content_source, offset_from_member_name
from content_sync.store import BulkOp, FeedState, Store, utcnow

__all__ = ["CycleResult", "FeedSync", "Plan", "Stopped"]

log = logging.getLogger(__name__)

CATCH_UP_REFRESH = "30s"  # the content index's refresh interval while windows are written
# Physical indices a catch-up in this process is writing at CATCH_UP_REFRESH right now: their
# slow refresh is ours, not left by a catch-up that died.
_slowed: set[str] = set()
_slowed_lock = threading.Lock()


@contextlib.contextmanager
def _slowing(index: str) -> Iterator[None]:
    with _slowed_lock:
        _slowed.add(index)
    try:
        yield
    finally:
        with _slowed_lock:
            _slowed.discard(index)


SnapshotReason = Literal[
    "first-run", "manual", "feed-rebuilt", "invalid-copy", "far-behind", "drift"
]


def _archive_offset(archive: Path) -> int:
    """The offset an archive holds, from its member name `<ctx>_<cons>_<offset>_<ts>.json`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"{archive}: not a readable zip archive: {exc}") from None
    offset = offset_from_member_name(names[0]) if len(names) == 1 else None
    if offset is None:
        raise SnapshotError(
            f"{archive}: cannot tell its offset from the member name {names[:1]}; give --offset"
        )
    return offset


def _default_keep_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY") or "/var/lib/content-sync") / "archives"


def _temp_copy(kept: Path, temp_dir: Path | None) -> Path:
    """A private copy of a kept archive, held like a download (a crash's leftover is removed
    like one)."""
    try:  # OSError: temp_dir missing or full, the kept archive unreadable
        fd, path = tempfiles.create(temp_dir, "kept-")
        try:
            with os.fdopen(fd, "wb") as out, kept.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        except BaseException:
            tempfiles.discard(path)
            raise
    except OSError as exc:
        raise SnapshotError(f"cannot copy {kept} to sync.temp_dir: {exc}") from None
    return path


def default_owner() -> str:
    """Who holds a lease: host, process and a random tag (pids repeat across containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _bulk_ops(window: WindowResult) -> list[BulkOp]:
    """The window's final documents as bulk operations, versioned by their change's offset."""
    return [
        (
            "index",
            name,
            content_source(doc["offset"], doc["version"], doc["document"]),
            doc["offset"],
        )
        if doc is not None
        else ("delete", name, None, window.deleted_at[name])
        for name, doc in window.final.items()
    ]


@dataclass
class CycleResult:
    feed: str
    before: int
    after: int = 0
    remote: int = 0
    snapshots: list[str] = field(default_factory=list)
    windows: int = 0
    changes: dict[str, int] = field(default_factory=lambda: {"create": 0, "update": 0, "delete": 0})
    documents: int = 0
    outcome: Literal["ok", "failed", "stopped", "skipped"] = "ok"
    error: str | None = None
    notified: bool = False
    seconds: float = 0.0

    @property
    def moved(self) -> bool:
        return self.after != self.before

    def summary(self) -> str:
        work = "+".join(["snapshot"] * len(self.snapshots) + (["changes"] if self.windows else []))
        text = (
            f"feed={self.feed} offset {self.before} -> {self.after} (remote {self.remote}) "
            f"work={work or 'none'} windows={self.windows} documents={self.documents} "
            f"seconds={self.seconds:.1f} outcome={self.outcome}"
        )
        if self.snapshots:
            text += f" snapshot_reason={','.join(self.snapshots)}"
        if self.error:
            text += f" error={self.error}"
        return text


@dataclass(frozen=True)
class Plan:
    """What a cycle would do: nothing, a snapshot (which offset, why), and/or windows."""

    feed: str
    local_offset: int
    remote_offset: int
    snapshot_reason: str | None
    snapshot_offset: int | None
    windows: int
    held_by: str | None = None

    def describe(self) -> str:
        if self.held_by:
            return f"feed {self.feed}: would skip: held by {self.held_by}"
        if self.snapshot_reason is None and self.windows == 0:
            return f"feed {self.feed}: nothing to do, in sync at offset {self.local_offset}"
        steps = []
        if self.snapshot_reason is not None:
            steps.append(
                f"load the snapshot at offset {self.snapshot_offset} ({self.snapshot_reason})"
            )
        if self.windows:
            steps.append(f"apply {self.windows} window(s) of changes up to {self.remote_offset}")
        return f"feed {self.feed}: offset {self.local_offset} -> {self.remote_offset}: " + (
            ", then ".join(steps)
        )


class _DownloadFailed(Exception):
    """The snapshot could not be downloaded (error: the feed's FeedError or TransientError)."""

    def __init__(self, error: FeedError | TransientError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Prefetched:
    """A window read ahead: its changes, and the stored documents of those it only updates."""

    high: int
    changes: list[Change]
    need: list[str]
    stored: dict[str, dict[str, Any]]


def _overlaid(
    window: _Prefetched, recent: list[dict[str, dict[str, Any] | None]]
) -> dict[str, dict[str, Any]]:
    """The window's stored documents as the two windows before it left them (newest wins)."""
    stored = window.stored
    for name in window.need:
        for final in reversed(recent):
            if name in final:
                if (doc := final[name]) is None:
                    stored.pop(name, None)
                else:
                    stored[name] = doc
                break
    return stored


class FeedSync:
    """Synchronises one configured feed. One instance per feed; not re-entrant."""

    def __init__(
        self,
        settings: Settings,
        feed: FeedSettings,
        *,
        client: FeedClient,
        store: Store,
        notifier: Notifier | None,
        events: Events | None = None,
        stop: threading.Event | None = None,
        owner: str | None = None,
        refresh_checked: set[str] | None = None,
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.client = client
        self.store = store
        self.notifier = notifier
        self.events = events or Events()
        self.stop = stop or threading.Event()
        self.owner = owner or default_owner()
        sync = settings.sync
        self.keeper = (
            ArchiveKeeper(sync.keep_archive_dir or _default_keep_dir(), sync.keep_archive_max_bytes)
            if sync.keep_archive
            else None
        )
        self._lease_lost = threading.Event()
        # Aliases whose refresh interval was checked for a dead catch-up's leftover. The Runtime
        # shares one set among its FeedSyncs (the service makes one per cycle): once per process.
        self._refresh_checked = set() if refresh_checked is None else refresh_checked
        # Set by the service: decides the next run after this cycle (ISO time), for the state.
        self.next_run: Callable[[CycleResult], str | None] | None = None

    # -- the cycle -------------------------------------------------------------------------------

    def run_cycle(self, *, resync: bool = False) -> CycleResult:
        with feed_context(self.feed.name):
            self.events.cycle_started(self.feed.name)
            return self._cycle(resync=resync)

    def _cycle(self, *, resync: bool) -> CycleResult:
        started = time.monotonic()
        feed = self.feed
        try:
            loaded = self.store.load_state(feed.state_id)
        except Stopped:  # stopping while OpenSearch did not answer: nothing read, nothing written
            result = CycleResult(feed=feed.name, before=0, outcome="stopped")
            log.info("feed %s: stopped before its state could be read", feed.name)
            self.events.cycle_finished(result, None)
            return result
        except ContentSyncError as exc:
            # Nothing is known, so nothing is written: not even a failed status.
            result = CycleResult(feed=feed.name, before=0, outcome="failed", error=str(exc))
            log.error("feed %s: cannot read its state: %s", feed.name, exc)
            if self.next_run is not None:
                self.next_run(result)
            self.events.cycle_finished(result, None)
            return result
        state = loaded or FeedState(feed.context, feed.consumer)
        result = CycleResult(feed=feed.name, before=state.local_offset, after=state.local_offset)
        if self._held_elsewhere(state, result):
            self.events.cycle_finished(result, state)
            return result
        try:
            info = self.client.consumer(feed.context, feed.consumer)
            result.remote = state.remote_offset = info.last_offset
            reason = self._snapshot_reason(state, info, resync=resync)
            # In sync: no further request but the final state write (and, in the process's first
            # cycle, one read of the refresh interval).
            killed = state.status == "running"  # the last cycle died: clean up after it
            stale = self._stale_refresh()
            behind = state.local_offset != info.last_offset
            if reason is not None or behind or killed or stale is not None:
                state.status, state.lease_owner = "running", self.owner
                self.store.save_state(feed.state_id, state)  # takes the lease, or conflicts
                with self._lease_kept(state):
                    if stale is not None:
                        self._restore_refresh(stale)
                    remove_leftovers(self.store, feed.index, self.settings.sync.temp_dir)
                    if reason is None and self.store.alias_target(feed.index) is None:
                        reason = "invalid-copy"  # the alias vanished: the offset means nothing
                    if reason is not None:
                        self._initialise(state, info, reason, result)
                    self._catch_up(state, info, result)
        except Stopped:
            result.outcome = "stopped"
        except LeaseLostError as exc:
            # Another process owns the feed now: it records and notifies; we write nothing more.
            result.outcome, result.error = "skipped", str(exc)
            result.after = state.local_offset
            log.warning("feed %s: %s", feed.name, exc)
            self.events.cycle_finished(result, state)
            return result
        except ContentSyncError as exc:
            result.outcome, result.error = "failed", str(exc)
            log.error("feed %s: cycle failed: %s", feed.name, exc)
        return self._end(state, result, started, "cycle")

    def _held_elsewhere(self, state: FeedState, result: CycleResult) -> bool:
        """True (and the result says so) when another live process holds the feed's lease."""
        if not state.lease_held_by_other(self.owner, time.time()):
            return False
        result.outcome = "skipped"
        result.error = f"feed {self.feed.name} is being synchronised by {state.lease_owner}"
        log.warning("%s", result.error)
        return True

    def _end(self, state: FeedState, result: CycleResult, started: float, what: str) -> CycleResult:
        result.after = state.local_offset
        self._finish(state, result)
        result.seconds = time.monotonic() - started
        log.info("%s %s", what, result.summary())
        self.events.cycle_finished(result, state)
        return result

    @contextlib.contextmanager
    def _lease_kept(self, state: FeedState) -> Iterator[None]:
        """Renew the lease in the background while long steps (a snapshot load) run."""
        done = threading.Event()
        period = max(self.store.lease_ttl / 3, 0.05)

        def renew() -> None:
            while not done.wait(period):
                try:
                    self.store.save_state(self.feed.state_id, state)
                except LeaseLostError:
                    self._lease_lost.set()
                    return
                except ContentSyncError as exc:  # the next renewal or window save retries
                    log.warning("feed %s: could not renew the lease: %s", self.feed.name, exc)

        self._lease_lost.clear()
        thread = threading.Thread(target=renew, name=f"lease-{self.feed.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _stale_refresh(self) -> str | None:
        """The live index, when a catch-up that died (SIGKILL, host restart) left it refreshing
        at CATCH_UP_REFRESH; checked once per process, with one read through the alias.

        Best effort: if the read fails, the next cycle checks again.
        """
        alias = self.feed.index
        if alias in self._refresh_checked:
            return None
        try:
            intervals = self.store.refresh_intervals(alias)
        except ContentSyncError as exc:
            log.debug("feed %s: could not read the refresh interval: %s", self.feed.name, exc)
            return None
        with _slowed_lock:
            stale = [
                index
                for index, interval in intervals.items()
                if interval == CATCH_UP_REFRESH and index not in _slowed
            ]
        if not stale:
            self._refresh_checked.add(alias)
            return None
        return str(stale[0])

    def _restore_refresh(self, index: str) -> None:
        """Back to the default refresh interval; under the lease, so no live catch-up is running
        in another process either."""
        with _slowed_lock:
            if index in _slowed:  # a catch-up in this process started since: it restores it
                return
        try:
            self.store.set_refresh_interval(index, None)
        except ContentSyncError as exc:
            log.warning(
                "feed %s: could not restore refreshes of %s: %s", self.feed.name, index, exc
            )
            return
        self._refresh_checked.add(self.feed.index)
        log.warning(
            "feed %s: index %s was left refreshing every %s by an interrupted catch-up; "
            "restored the default refresh interval",
            self.feed.name,
            index,
            CATCH_UP_REFRESH,
        )

    def _snapshot_reason(
        self, state: FeedState, info: ConsumerInfo, *, resync: bool
    ) -> SnapshotReason | None:
        if resync:
            return "manual"
        if state.local_offset == 0:
            return "first-run" if info.last_offset > 0 else None
        if state.local_offset > info.last_offset:
            return "feed-rebuilt"
        # A newer snapshot saves replaying the changes up to its offset; those after it are
        # patched either way. So it is what the snapshot skips that must outweigh a load, not
        # how far behind the feed is: a burst of changes right after a snapshot is replayed.
        skipped = info.snapshot_offset - state.local_offset
        if info.snapshot_link and skipped > self.settings.sync.snapshot_threshold:
            return "far-behind"
        return None

    def _finish(self, state: FeedState, result: CycleResult) -> None:
        """Record how the cycle ended and tell the Command Manager when content moved."""
        if result.outcome == "ok":
            state.status, state.last_error = "ready", None
            state.last_success_at = utcnow()
        elif result.outcome == "failed":
            state.status, state.last_error = "failed", (result.error or "")[:1000]
        elif state.lease_owner == self.owner:
            state.status = "ready"  # stopped between windows: what is recorded is complete
        # (Stopped before it took the lease, the cycle changed nothing: the status stays.)
        state.lease_owner = state.lease_expires_at = None  # released with this write
        if self.next_run is not None:
            state.next_run_at = self.next_run(result)
        if result.moved:
            state.pending_command = state.local_offset
        if (
            state.pending_command is not None
            and self.notifier is not None
            and self.notifier.enabled
        ):
            try:
                failpoints.hit("before-notify")
                self.notifier.send(index=self.feed.index, offset=state.pending_command)
                failpoints.hit("after-notify")
                state.pending_command, result.notified = None, True
            except ContentSyncError as exc:
                log.warning("feed %s: notification kept for a later cycle: %s", self.feed.name, exc)
        try:
            self.store.save_state(self.feed.state_id, state)
        except LeaseLostError as exc:
            log.warning("feed %s: %s", self.feed.name, exc)
            result.outcome, result.error = "skipped", str(exc)
        except ContentSyncError as exc:
            # Every window was recorded as it completed; only this summary write is lost.
            log.error("feed %s: could not record the end of the cycle: %s", self.feed.name, exc)
            if result.outcome == "ok":
                result.outcome, result.error = "failed", str(exc)

    # -- snapshot --------------------------------------------------------------------------------

    def _initialise(
        self, state: FeedState, info: ConsumerInfo, reason: SnapshotReason, result: CycleResult
    ) -> None:
        feed = self.feed
        if not info.snapshot_link:
            raise FeedError(
                f"feed {feed.name}: needs a snapshot ({reason}) but the feed offers none"
            )
        log.info(
            "feed %s: initialising from snapshot at offset %d (%s)",
            feed.name,
            info.snapshot_offset,
            reason,
        )
        self.events.snapshot_started(feed.name, reason)
        result.snapshots.append(reason)
        sync = self.settings.sync
        offset, source = info.snapshot_offset, "feed"
        link: str | None = info.snapshot_link
        loaded: LoadResult | None = None
        try:
            archive, loaded = self._download_and_load(info.snapshot_link, offset)
        except _DownloadFailed as failed:
            kept = self.keeper.latest(feed.state_id) if self.keeper else None
            if kept is None or reason not in ("drift", "invalid-copy"):
                raise failed.error from None
            log.warning(
                "feed %s: the snapshot cannot be downloaded (%s); re-initialising from the kept "
                "archive at offset %d: the content will be older than the feed's (%d)",
                feed.name,
                failed.error,
                kept.offset,
                info.last_offset,
            )
            archive = _temp_copy(kept.path, sync.temp_dir)
            offset, link, source = kept.offset, kept.link, f"kept:{kept.path.name}"
        try:
            if loaded is None:
                self._check_stop()
                loaded = self._load(archive, offset)
            if self.keeper is not None and source == "feed":
                self._keep(archive, offset, link)
        finally:
            tempfiles.discard(archive)
        result.documents += loaded.documents
        self.events.docs_written(feed.name, loaded.documents)
        state.local_offset = state.pending_command = offset  # announced even after a crash
        state.snapshot_link = link
        state.snapshot_offset = offset
        state.index = loaded.index
        state.content_source = source
        self.store.save_state(feed.state_id, state)
        failpoints.hit("snapshot-recorded")
        if source != "feed":
            # Correct content, but older than the feed's: patching on needs the feed back.
            raise FeedError(
                f"feed {feed.name}: restored the kept archive at offset {offset}; the feed's "
                f"snapshot could not be downloaded, so the content is older than the feed's"
            )

    def _keep(self, archive: Path, offset: int, link: str | None) -> None:
        """Keep the archive that just initialised the feed. The content is live by now: a full
        disk or a bad keep_archive_dir costs the fallback copy, never this cycle's result."""
        assert self.keeper is not None
        try:
            self.keeper.keep(self.feed.state_id, archive, offset=offset, link=link)
        except OSError as exc:
            self.keeper.discard(self.feed.state_id)
            log.warning(
                "feed %s: could not keep the snapshot archive in %s: %s",
                self.feed.name,
                self.keeper.directory,
                exc,
            )

    def _download_and_load(self, link: str, offset: int) -> tuple[Path, LoadResult]:
        """Download the archive and, at the same time, load it as it arrives (growing.py).

        If the download restarts from its first byte (a server that does not resume), what was
        read may not be the archive: it is loaded again from the complete file. If it fails,
        _DownloadFailed carries its error. If the load fails, the download is abandoned.
        """
        growing = GrowingFile()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"download-{self.feed.name}")
        download = pool.submit(self._download, link, growing)
        try:
            try:
                loaded = self._load(growing.wait_created(), offset, growing)
            except Interrupted:
                archive = self._downloaded(download)
                log.info(
                    "feed %s: the download restarted; loading the complete archive", self.feed.name
                )
                return archive, self._load(archive, offset)
            return self._downloaded(download), loaded
        except BaseException:
            growing.abandon()
            with contextlib.suppress(BaseException):  # the load's error is the one to report
                tempfiles.discard(download.result())
            raise
        finally:
            pool.shutdown(wait=True)

    def _download(self, link: str, growing: GrowingFile) -> Path:
        with feed_context(self.feed.name):
            return self.client.download_snapshot(
                link,
                temp_dir=self.settings.sync.temp_dir,
                max_bytes=self.settings.sync.max_archive_bytes,
                progress=self._download_progress,
                growing=growing,
            )

    @staticmethod
    def _downloaded(download: Future[Path]) -> Path:
        try:
            return download.result()
        except (FeedError, TransientError) as exc:
            raise _DownloadFailed(exc) from exc

    def _load(self, archive: Path, offset: int, growing: GrowingFile | None = None) -> LoadResult:
        feed = self.feed
        return load_archive(
            self.store,
            feed.index,
            archive,
            limits=self.settings.sync,
            snapshot_offset=offset,
            concurrency=self.settings.opensearch.bulk_concurrency,
            progress=lambda docs, size: self.events.index_progress(feed.name, docs, size),
            should_stop=self.stop.is_set,
            growing=growing,
        )

    def _download_progress(self, done: int, total: int | None) -> None:
        # Between chunks: a stop (or a lost lease) abandons the download; the client removes the
        # partial file on the way out.
        self._check_stop()
        self.events.download_progress(self.feed.name, done, total)

    def plan(self, *, resync: bool = False) -> Plan:
        """What run_cycle would do now, without writing anything (`sync --dry-run`)."""
        feed = self.feed
        state = self.store.peek_state(feed.state_id) or FeedState(feed.context, feed.consumer)
        info = self.client.consumer(feed.context, feed.consumer)
        reason = self._snapshot_reason(state, info, resync=resync)
        if (
            reason is None
            and state.local_offset != info.last_offset
            and self.store.alias_target(feed.index) is None
        ):
            reason = "invalid-copy"
        start = info.snapshot_offset if reason is not None else state.local_offset
        batch = self.settings.sync.batch_size
        windows = max(0, -(-(info.last_offset - start) // batch))
        return Plan(
            feed=feed.name,
            local_offset=state.local_offset,
            remote_offset=info.last_offset,
            snapshot_reason=reason,
            snapshot_offset=info.snapshot_offset if reason is not None else None,
            windows=windows,
            held_by=state.lease_owner
            if state.lease_held_by_other(self.owner, time.time())
            else None,
        )

    def import_archive(self, archive: Path, *, offset: int | None = None) -> CycleResult:
        """Initialise the feed from an archive on disk (air-gapped sites): same streaming,
        checks and atomic swap as online. The offset comes from the member name unless given."""
        started = time.monotonic()
        feed = self.feed
        state = self.store.load_state(feed.state_id) or FeedState(feed.context, feed.consumer)
        result = CycleResult(feed=feed.name, before=state.local_offset, after=state.local_offset)
        if self._held_elsewhere(state, result):
            return result
        if offset is None:
            offset = _archive_offset(archive)
        state.status, state.lease_owner = "running", self.owner
        try:
            self.store.save_state(feed.state_id, state)
            with self._lease_kept(state):
                self.events.snapshot_started(feed.name, "import")
                result.snapshots.append("import")
                loaded = self._load(archive, offset)
            result.documents = loaded.documents
            state.local_offset = state.snapshot_offset = offset
            state.snapshot_link = None
            state.index = loaded.index
            state.content_source = f"file:{archive.name}"
        except LeaseLostError as exc:
            result.outcome, result.error = "skipped", str(exc)
            return result
        except ContentSyncError as exc:
            result.outcome, result.error = "failed", str(exc)
            log.error("feed %s: import of %s failed: %s", feed.name, archive, exc)
        return self._end(state, result, started, "import")

    # -- changes ---------------------------------------------------------------------------------

    def _catch_up(self, state: FeedState, info: ConsumerInfo, result: CycleResult) -> None:
        fell_back = False
        while state.local_offset < info.last_offset:
            index = self._live_index(state)
            try:
                self._walk_windows(index, state, info.last_offset, result)
            except DriftError as exc:
                log.error(
                    "feed %s: local copy drifted at offset %d (%s): %s",
                    self.feed.name,
                    exc.offset,
                    exc.resource,
                    exc,
                )
                if fell_back:
                    raise  # the snapshot itself does not take the changes: nothing more to try
                fell_back = True
                self._initialise(state, info, "drift", result)

    def _live_index(self, state: FeedState) -> str:
        index = self.store.ensure_alias(self.feed.index)
        if state.index != index:
            state.index = index
        return index

    def _walk_windows(self, index: str, state: FeedState, remote: int, result: CycleResult) -> None:
        """Apply the windows up to `remote` in order, pipelined on three threads so that the node
        and this process work at the same time:

            prefetch:   fetch window N+1 from the feed, multi-get the documents it updates
            foreground: patch window N in memory, build its bulk body
            writer:     write window N-1, then record local_offset = its end

        The multi-get of N+1 starts once N-2 is written and recorded, but N-1 may be in flight
        and N is not computed yet: what those two leave is taken from memory (their results)
        instead, whatever the multi-get saw. One write is in flight at most, and windows are
        recorded strictly in order: what the state records has always been written.
        """
        feed = self.feed
        sync = self.settings.sync

        def prefetch(low: int, high: int, skip: frozenset[str]) -> _Prefetched:
            with feed_context(feed.name):
                changes = self.client.changes(
                    feed.context, feed.consumer, low, high, with_empties=sync.with_empties
                )
                need = needs_stored(changes)
                stored = self.store.mget(index, [n for n in need if n not in skip])
            return _Prefetched(high, changes, need, stored)

        spans = iter_windows(state.local_offset, remote, sync.batch_size)
        with self._refresh_slowed(index, remote - state.local_offset > sync.batch_size):
            self._pipeline(index, state, spans, prefetch, result)

    @contextlib.contextmanager
    def _refresh_slowed(self, index: str, slow: bool) -> Iterator[None]:
        """Refresh the content index rarely while several windows are written, then once.

        A refresh a second turns each window into small segments that are then merged again: a
        fifth of the node's work in a long catch-up. Readers still see changes within
        CATCH_UP_REFRESH, and all of them once the windows are done, before the state says
        `ready`. A crash leaves the slower interval; the next process's first cycle restores it
        (_stale_refresh), and so does this process's next cycle if the restore below fails.
        """
        if not slow:
            yield
            return
        with _slowing(index):
            self.store.set_refresh_interval(index, CATCH_UP_REFRESH)
            ok = False
            try:
                yield
                ok = True
            finally:
                try:
                    self.store.set_refresh_interval(index, None)
                    self.store.refresh(index)
                except ContentSyncError as exc:
                    self._refresh_checked.discard(self.feed.index)  # the next cycle checks again
                    if ok:
                        raise
                    log.warning(
                        "feed %s: could not restore refreshes of %s: %s",
                        self.feed.name,
                        index,
                        exc,
                    )

    def _pipeline(
        self,
        index: str,
        state: FeedState,
        spans: Iterator[tuple[int, int]],
        prefetch: Callable[[int, int, frozenset[str]], _Prefetched],
        result: CycleResult,
    ) -> None:
        feed = self.feed
        # One answer at most is being read ahead (its size is bounded by cti.max_answer_bytes).
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fetch-{feed.name}")
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{feed.name}")
        writing: Future[None] | None = None
        # The final documents of the last two windows, oldest first: when a window's multi-get
        # ran, the first was being written and the second not computed yet.
        recent: list[dict[str, dict[str, Any] | None]] = [{}, {}]

        def ahead() -> Future[_Prefetched] | None:
            # Called once every write but the one in flight (recent[1]'s) is recorded.
            span = next(spans, None)
            return None if span is None else reader.submit(prefetch, *span, frozenset(recent[1]))

        coming = ahead()
        try:
            while coming is not None:
                self._check_stop()
                window_in = coming.result()
                coming = ahead()
                window = apply_window(window_in.changes, _overlaid(window_in, recent))
                ops = _bulk_ops(window)
                if writing is not None:
                    writing.result()  # N-1 recorded before N is written
                high = window_in.high
                writing = writer.submit(self._write_window, index, ops, window, state, high, result)
                recent = [recent[1], window.final]
            if writing is not None:
                writing.result()
        except BaseException:
            # The write in flight must land (or fail) before the caller records or re-initialises
            # anything; a prefetch still running is abandoned (it only reads).
            if writing is not None and not writing.cancel():
                exc = writing.exception()
                if exc is not None:
                    log.warning("feed %s: the last window's write failed: %s", feed.name, exc)
            raise
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
            writer.shutdown(wait=False)

    def _write_window(
        self,
        index: str,
        ops: list[BulkOp],
        window: WindowResult,
        state: FeedState,
        high: int,
        result: CycleResult,
    ) -> None:
        """One bulk write; only when every item succeeded is the window recorded."""
        feed = self.feed
        with feed_context(feed.name):
            if ops:
                concurrency = self.settings.opensearch.bulk_concurrency
                self.store.write(index, ops, concurrency=concurrency, spread=True)
            failpoints.hit("window-written")
            state.local_offset = state.pending_command = high  # announced even after a crash
            self.store.save_state(feed.state_id, state)
            failpoints.hit("window-recorded")
        result.windows += 1
        for kind, count in window.applied.items():
            result.changes[kind] += count
            if count:
                self.events.changes_applied(feed.name, kind, count)
        result.documents += len(ops)
        if ops:
            self.events.docs_written(feed.name, len(ops))

    def _check_stop(self) -> None:
        if self._lease_lost.is_set():
            raise LeaseLostError(f"feed {self.feed.name}: another process took over the lease")
        if self.stop.is_set():
            raise Stopped()
