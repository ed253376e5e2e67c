"""The service: one APScheduler job per feed, clean stop on SIGTERM/SIGINT.

Scheduling choices, on purpose:
- max_instances=1: a feed never runs two cycles at once in this process (the lease covers other
  processes and hosts);
- coalesce=True: runs missed while a long cycle (a 4 GiB snapshot) was busy collapse into one;
- misfire_grace_time (settings, default 10 min): a run that starts late still runs, instead of
  APScheduler's 1 s default silently skipping it;
- jitter: replicas and feeds do not hit the feed in lockstep;
- a failed cycle (OpenSearch not up yet, the feed down) is retried after a backoff that doubles
  up to the feed's interval, instead of waiting a whole interval each time.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from content_sync.events import Events, Fanout
from content_sync.metrics import Metrics, schedule_period
from content_sync.runtime import Runtime
from content_sync.settings import FeedSettings, ScheduleSettings, Settings
from content_sync.signals import stop_on_signals
from content_sync.sync import CycleResult
from content_sync.web import HttpServer, TriggerResult

__all__ = ["Service", "make_trigger"]

log = logging.getLogger(__name__)


FAILURE_BACKOFF = 15.0  # seconds before the first retry of a failed cycle


def scheduled(settings: Settings) -> list[FeedSettings]:
    """The feeds the service runs: enabled and online."""
    return [f for f in settings.feeds if f.enabled and not f.offline]


def make_trigger(schedule: ScheduleSettings) -> BaseTrigger:
    jitter = int(schedule.jitter) or None
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron, timezone=UTC, jitter=jitter)
    assert schedule.interval is not None
    return IntervalTrigger(seconds=schedule.interval, timezone=UTC, jitter=jitter)


class Service:
    """Schedules the feeds of a Runtime; serves metrics, health and the trigger beside them.

    The Runtime's events must include `metrics` (build both with Service.build)."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.metrics = metrics
        self._resync: set[str] = set()
        self._running: set[str] = set()
        self._failures: dict[str, int] = {}
        self._lock = threading.Condition()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(self.settings.feeds)))},
        )
        self.http: HttpServer | None = None
        if self.settings.http.enabled:
            self.http = HttpServer(self.settings.http, metrics, self.trigger)

    @classmethod
    def build(cls, settings: Settings, *extra_events: Events) -> Service:
        metrics = Metrics(
            {f.name: schedule_period(settings.schedule.for_feed(f)) for f in scheduled(settings)},
            healthy_intervals=settings.http.healthy_intervals,
        )
        runtime = Runtime(settings, events=Fanout(metrics, *extra_events))
        return cls(runtime, metrics)

    def _run_feed(self, name: str) -> None:
        with self._lock:
            resync = name in self._resync
            self._resync.discard(name)
            self._running.add(name)
        try:
            if not self.runtime.stop.is_set():
                sync = self.runtime.feed_sync(name)
                sync.next_run = lambda result: self._next_run(name, result)
                if sync.run_cycle(resync=resync).outcome == "skipped":
                    self._when_free(name)
        except Exception:  # a bug must not kill the schedule; the next run tries again
            log.exception("feed %s: unexpected error in the cycle", name)
        finally:
            with self._lock:
                self._running.discard(name)
                self._lock.notify_all()

    def _next_run(self, name: str, result: CycleResult) -> str | None:
        """After a cycle: on failure, come back after a backoff (doubling, capped at the feed's
        period); on success, follow the schedule. Returns the next run time for the state."""
        if self.runtime.stop.is_set():
            return None  # shutting down: no next run (and the scheduler's lock may be held)
        job = self.scheduler.get_job(f"feed-{name}")
        if job is None:
            return None
        if result.outcome == "failed":
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            period = self.metrics.periods.get(name, 3600.0)
            delay = min(period, FAILURE_BACKOFF * 2 ** (failures - 1))
            soon = datetime.now(UTC) + timedelta(seconds=delay)
            if job.next_run_time is None or soon < job.next_run_time:
                job.modify(next_run_time=soon)
                log.info("feed %s: cycle failed; trying again in %.0f s", name, delay)
        else:
            self._failures.pop(name, None)
        when = job.next_run_time
        return when.astimezone(UTC).isoformat(timespec="seconds") if when else None

    def _when_free(self, name: str) -> None:
        """Another writer held the feed (perhaps one that died: a SIGKILL leaves its lease until
        it expires): come back once that lease can have expired, not a whole interval later."""
        job = self.scheduler.get_job(f"feed-{name}")
        soon = datetime.now(UTC) + timedelta(seconds=self.settings.sync.lease_ttl + 1)
        if job is None or self.runtime.stop.is_set():
            return
        if job.next_run_time is None or soon < job.next_run_time:
            job.modify(next_run_time=soon)
            log.info("feed %s: held by another writer; trying again at %s", name, soon)

    def trigger(self, name: str, resync: bool) -> TriggerResult:
        """Run a feed's cycle now (the on-demand trigger)."""
        job = self.scheduler.get_job(f"feed-{name}")
        if job is None:
            return "unknown"
        with self._lock:
            if name in self._running:
                return "running"
            if resync:
                self._resync.add(name)
        job.modify(next_run_time=datetime.now(UTC))
        log.info("feed %s: cycle requested over HTTP%s", name, " (resync)" if resync else "")
        return "queued"

    def start(self, *, resync: bool = False) -> None:
        now = datetime.now(UTC)
        for feed in self.settings.feeds:
            if feed not in scheduled(self.settings):
                log.info(
                    "feed %s is %s: not scheduled",
                    feed.name,
                    "disabled" if not feed.enabled else "offline (content comes by import)",
                )
        for feed in scheduled(self.settings):
            schedule = self.settings.schedule.for_feed(feed)
            if resync:
                self._resync.add(feed.name)
            # --resync must happen now even when run_on_start is off. (Passing
            # next_run_time=None would add the job paused: leave it out to follow the trigger.)
            first = {"next_run_time": now} if (schedule.run_on_start or resync) else {}
            self.scheduler.add_job(
                self._run_feed,
                trigger=make_trigger(schedule),
                args=[feed.name],
                id=f"feed-{feed.name}",
                name=f"sync {feed.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(schedule.misfire_grace_time),
                **first,
            )
        self.scheduler.start()
        for job in self.scheduler.get_jobs():
            log.info("scheduled %s; next run at %s", job.name, job.next_run_time)
        if self.http is not None:
            self.http.start()

    def stop(self) -> None:
        """Stop scheduling and wait for running cycles to reach a safe point."""
        self.runtime.stop.set()
        # Wait for running cycles here, not in shutdown(wait=True): that holds the scheduler's
        # lock while it waits, and a cycle ending asks the scheduler for its next run time.
        with self._lock:
            self._lock.wait_for(lambda: not self._running)
        self.scheduler.shutdown(wait=True)
        if self.http is not None:
            self.http.stop()
        self.runtime.close()

    def run_forever(self, *, resync: bool = False) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly (signals meanwhile change nothing)."""
        with stop_on_signals(self.runtime.stop):
            self.start(resync=resync)
            # Set by the signals' own thread (content_sync.signals): an untimed wait is woken
            # whichever thread the kernel delivered the signal to.
            self.runtime.stop.wait()
            self.stop()
        log.info("stopped")
