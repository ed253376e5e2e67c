"""The service: one APScheduler job per feed, clean stop on SIGTERM/SIGINT.

Scheduling choices, on purpose:
- max_instances=1: a feed never runs two cycles at once in this process (the lease covers other
  processes and hosts);
- coalesce=True: runs missed while a long cycle (a 4 GiB snapshot) was busy collapse into one;
- misfire_grace_time (settings, default 10 min): a run that starts late still runs, instead of
  APScheduler's 1 s default silently skipping it;
- jitter: replicas and feeds do not hit the feed in lockstep.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from content_sync.events import Events, Fanout
from content_sync.metrics import Metrics, schedule_period
from content_sync.runtime import Runtime
from content_sync.settings import ScheduleSettings, Settings
from content_sync.web import HttpServer, TriggerResult

__all__ = ["Service", "make_trigger"]

log = logging.getLogger(__name__)


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
        self._lock = threading.Lock()
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
            [f.name for f in settings.feeds],
            period=schedule_period(settings.schedule),
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
                self.runtime.feed_sync(name).run_cycle(resync=resync)
        except Exception:  # a bug must not kill the schedule; the next run tries again
            log.exception("feed %s: unexpected error in the cycle", name)
        finally:
            with self._lock:
                self._running.discard(name)

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
        schedule = self.settings.schedule
        now = datetime.now(UTC)
        for feed in self.settings.feeds:
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
        self.scheduler.shutdown(wait=True)
        if self.http is not None:
            self.http.stop()
        self.runtime.close()

    def run_forever(self, *, resync: bool = False) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping after the current window", signal.Signals(signum).name)
            self.runtime.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start(resync=resync)
        self.runtime.stop.wait()
        self.stop()
        log.info("stopped")
