"""The one retry policy: exponential backoff with jitter, honouring the server's Retry-After.

Only TransientError is retried. `Retry-After: 0` still backs off (the real feed sends it while it
keeps rate-limiting). The policy is data, built once from the settings and shared by every client.

A shutdown does not wait for a backoff: with the defaults one wait lasts up to a minute and a
call retries for up to 15 minutes, longer than systemd (120 s) or Docker (10 s) give a stopping
service. Once `stop` is set, a call that would wait to retry raises Stopped instead; what it was
doing is then left as a kill would leave it (not recorded), which every caller already copes with.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from content_sync.errors import Stopped, TransientError
from content_sync.settings import RetrySettings

__all__ = ["RetryPolicy", "parse_retry_after"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds or as an HTTP date -> seconds from now (never negative)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    initial: float = 1.0
    max_wait: float = 60.0
    budget: float = 900.0
    on_retry: Callable[[TransientError], None] | None = None
    # Set: the process is stopping, and waits to retry end at once (Stopped).
    stop: threading.Event | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, s: RetrySettings) -> RetryPolicy:
        return cls(attempts=s.attempts, initial=s.initial, max_wait=s.max_wait, budget=s.budget)

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(multiplier=self.initial, max=self.max_wait)(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None) or 0.0
        # The server's hint wins when longer, but never beyond our own ceiling.
        return min(max(backoff, hint), self.max_wait)

    def _before_sleep(self, state: RetryCallState) -> None:
        if self.stop is not None and self.stop.is_set():
            return  # no retry follows (sleep raises Stopped): nothing to announce or count
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError):
            sleep = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s; retry %d in %.1f s", exc, state.attempt_number, sleep)
            if self.on_retry is not None:
                self.on_retry(exc)

    def sleep(self, seconds: float) -> None:
        """Wait before a retry; raises Stopped if the process is stopping (or starts to)."""
        if self.stop is None:
            time.sleep(seconds)
        elif self.stop.wait(seconds):
            raise Stopped("stopping: not waiting to retry")

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying TransientError; the last error is re-raised when the budget is spent."""
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.budget),
            wait=self._wait,
            before_sleep=self._before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(fn)
