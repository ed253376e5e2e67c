"""Prometheus metrics and the health verdict, fed by the cycle's events.

Each Metrics owns its registry (several services in one test process do not collide). Health is
judged from what this process saw: every feed's last cycle succeeded (or another replica holds
it), and its last success is younger than `healthy_intervals` schedule periods.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.triggers.cron import CronTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from content_sync.events import Events
from content_sync.settings import ScheduleSettings

if TYPE_CHECKING:
    from content_sync.store import FeedState
    from content_sync.sync import CycleResult

__all__ = ["Metrics", "schedule_period"]

STATUSES = ("running", "ready", "failed")
# Cycles range from a 0.1 s no-op to a 4 GiB snapshot load of half an hour.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)


def schedule_period(schedule: ScheduleSettings) -> float:
    """Seconds between two runs: the interval, or the gap between a cron's next two fires."""
    if schedule.cron:
        trigger = CronTrigger.from_crontab(schedule.cron, timezone=UTC)
        first = trigger.get_fire_time(None, datetime.now(UTC))
        assert first is not None
        second = trigger.get_fire_time(first, first + timedelta(seconds=1))
        assert second is not None
        return float((second - first).total_seconds())
    assert schedule.interval is not None
    return schedule.interval


@dataclass
class _Feed:
    outcome: str | None = None
    error: str | None = None
    last_success: float | None = None


class Metrics(Events):
    def __init__(self, periods: dict[str, float], *, healthy_intervals: float) -> None:
        """`periods`: each scheduled feed and the seconds between its runs."""
        self.registry = CollectorRegistry()
        self.periods = periods
        self.healthy_intervals = healthy_intervals
        self.started = time.time()
        feeds = list(periods)
        self._feeds = {name: _Feed() for name in feeds}
        self._lock = threading.Lock()
        r = self.registry
        self.local_offset = Gauge(
            "content_sync_local_offset",
            "Offset fully applied to the content index",
            ["feed"],
            registry=r,
        )
        self.remote_offset = Gauge(
            "content_sync_remote_offset", "last_offset seen at the feed", ["feed"], registry=r
        )
        self.lag = Gauge("content_sync_lag", "Remote minus local offset", ["feed"], registry=r)
        self.status = Gauge(
            "content_sync_status",
            "1 for the feed's current status",
            ["feed", "status"],
            registry=r,
        )
        self.last_success = Gauge(
            "content_sync_last_success_timestamp_seconds",
            "End of the last successful cycle",
            ["feed"],
            registry=r,
        )
        self.last_attempt = Gauge(
            "content_sync_last_attempt_timestamp_seconds",
            "Start of the last cycle",
            ["feed"],
            registry=r,
        )
        self.duration = Histogram(
            "content_sync_cycle_duration_seconds",
            "Duration of cycles",
            ["feed"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.snapshots = Counter(
            "content_sync_snapshot_initialisations_total",
            "Initialisations from a snapshot, by cause",
            ["feed", "cause"],
            registry=r,
        )
        self.changes = Counter(
            "content_sync_changes_applied_total",
            "Changes applied, by type",
            ["feed", "type"],
            registry=r,
        )
        self.documents = Counter(
            "content_sync_documents_indexed_total",
            "Content documents written",
            ["feed"],
            registry=r,
        )
        self.retries = Counter(
            "content_sync_retries_total",
            "Transient failures retried, by cause",
            ["feed", "cause"],
            registry=r,
        )
        self.failed = Counter(
            "content_sync_failed_cycles_total", "Cycles that ended failed", ["feed"], registry=r
        )
        self.pending = Gauge(
            "content_sync_notifications_pending",
            "1 while a Command Manager notification waits for delivery",
            ["feed"],
            registry=r,
        )
        for name in feeds:  # series exist from the start, so alerts see zeros, not absence
            self.failed.labels(name)
            self.documents.labels(name)
            self.pending.labels(name).set(0)

    # -- events ----------------------------------------------------------------------------------

    def retry(self, feed: str, cause: str) -> None:
        self.retries.labels(feed, cause or "unknown").inc()

    def snapshot_started(self, feed: str, reason: str) -> None:
        self.snapshots.labels(feed, reason).inc()

    def changes_applied(self, feed: str, kind: str, count: int) -> None:
        self.changes.labels(feed, kind).inc(count)

    def docs_written(self, feed: str, count: int) -> None:
        self.documents.labels(feed).inc(count)

    def cycle_started(self, feed: str) -> None:
        self.last_attempt.labels(feed).set(time.time())
        self._set_status(feed, "running")

    def cycle_finished(self, result: CycleResult, state: FeedState | None) -> None:
        feed = result.feed
        if state is not None:
            self.local_offset.labels(feed).set(state.local_offset)
            self.remote_offset.labels(feed).set(state.remote_offset)
            self.lag.labels(feed).set(max(state.remote_offset - state.local_offset, 0))
            self._set_status(feed, state.status)
            self.pending.labels(feed).set(1 if state.pending_command is not None else 0)
        elif result.outcome != "stopped":  # the state could not be read
            self._set_status(feed, "failed")
        self.duration.labels(feed).observe(result.seconds)
        with self._lock:
            record = self._feeds.setdefault(feed, _Feed())
            record.outcome, record.error = result.outcome, result.error
            if result.outcome == "ok":
                record.last_success = time.time()
                self.last_success.labels(feed).set(record.last_success)
            elif result.outcome == "failed":
                self.failed.labels(feed).inc()

    def _set_status(self, feed: str, status: str) -> None:
        for s in STATUSES:
            self.status.labels(feed, s).set(1 if s == status else 0)

    # -- outputs ---------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.time()
        feeds: dict[str, Any] = {}
        with self._lock:
            for name, record in self._feeds.items():
                limit = self.healthy_intervals * self.periods.get(name, 3600.0)
                problem: str | None = None
                since = record.last_success or self.started
                if record.outcome == "failed":
                    problem = f"last cycle failed: {record.error}"
                elif record.outcome == "skipped":
                    pass  # another replica holds the feed and does the work
                elif now - since > limit:
                    problem = f"no successful cycle for {now - since:.0f} s"
                feeds[name] = {
                    "healthy": problem is None,
                    "reason": problem,
                    "last_outcome": record.outcome,
                    "last_success_at": record.last_success,
                }
        healthy = all(f["healthy"] for f in feeds.values())
        return healthy, {"status": "ok" if healthy else "unhealthy", "feeds": feeds}
