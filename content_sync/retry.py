"""The one retry policy: exponential backoff with jitter, honouring the server's Retry-After.

Only TransientError is retried. `Retry-After: 0` still backs off (the real feed sends it while it
keeps rate-limiting). The policy is data, built once from the settings and shared by every client.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from content_sync.errors import TransientError
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
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError):
            sleep = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s; retry %d in %.1f s", exc, state.attempt_number, sleep)
            if self.on_retry is not None:
                self.on_retry(exc)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying TransientError; the last error is re-raised when the budget is spent."""
        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.budget),
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(fn)
