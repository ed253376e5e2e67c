"""The exception tree. Callers catch by meaning, not by module:

ContentSyncError
├── SettingsError            settings.yaml / environment rejected (exit 2)
├── TransientError           worth retrying: the same call may succeed later
│   ├── FeedUnavailable      feed 429 / 5xx / timeout / connection reset (carries retry_after)
│   ├── StoreUnavailable     OpenSearch unreachable, 429 or 5xx
│   └── NotifyUnavailable    Command Manager unreachable or 5xx
├── FeedError                the feed answered something we refuse
│   ├── BadFeedAnswer        malformed body, missing fields, impossible offsets
│   └── DisallowedHost       a link or redirect to a host the operator did not allow
├── SnapshotError            the archive is corrupt, truncated, too large or not as expected
├── DriftError               a change does not apply: the local copy drifted from the feed
├── StoreError               OpenSearch refused a write (not a transient rejection)
├── NotifyError              the Command Manager refused the command (4xx)
├── LeaseHeldError           another writer holds this feed
├── LeaseLostError           another writer took this feed over while we wrote it
└── Stopped                  the service is shutting down (not a failure)
"""

from __future__ import annotations

import ssl

__all__ = [
    "BadFeedAnswer",
    "ContentSyncError",
    "DisallowedHost",
    "DriftError",
    "FeedError",
    "FeedUnavailable",
    "LeaseHeldError",
    "LeaseLostError",
    "NotifyError",
    "NotifyUnavailable",
    "SettingsError",
    "SnapshotError",
    "Stopped",
    "StoreError",
    "StoreUnavailable",
    "TransientError",
    "certificate_failure",
]


class ContentSyncError(Exception):
    """Base of every error this package raises on purpose."""


class SettingsError(ContentSyncError):
    """The settings are invalid; the message names the key."""


class TransientError(ContentSyncError):
    """A failure that a later attempt may not see. `retry_after` is the server's hint, seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, cause: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.cause = cause  # short label for metrics and logs, e.g. "feed-429"


class FeedError(ContentSyncError):
    """The feed's answer is unusable."""


class FeedUnavailable(TransientError):
    """The feed could not answer now."""


class BadFeedAnswer(FeedError):
    """The feed answered, but not what the contract promises."""


class DisallowedHost(FeedError):
    """A URL points at a host outside the operator's allow-list."""


class SnapshotError(ContentSyncError):
    """The snapshot archive cannot be trusted."""


class DriftError(ContentSyncError):
    """A change cannot be applied to the local copy: re-initialise from the snapshot."""

    def __init__(self, message: str, *, offset: int, resource: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.resource = resource


class StoreError(ContentSyncError):
    """OpenSearch refused an operation for a reason a retry will not fix."""


class StoreUnavailable(TransientError):
    """OpenSearch is unreachable, overloaded or failing."""


class NotifyError(ContentSyncError):
    """The Command Manager refused the command."""


class NotifyUnavailable(TransientError):
    """The Command Manager could not be reached."""


class LeaseHeldError(ContentSyncError):
    """Another process is synchronising this feed."""


class LeaseLostError(ContentSyncError):
    """Another process wrote this feed's state since we read it: we must stop writing."""


class Stopped(ContentSyncError):
    """The service is shutting down: work stopped at a safe point (nothing half-recorded)."""


def certificate_failure(exc: BaseException) -> str | None:
    """The reason, when `exc` (or what caused it) is a failed TLS certificate verification: a
    wrong or missing CA does not fix itself, so it is reported at once instead of retried."""
    seen: BaseException | None = exc
    for _ in range(10):  # httpx -> httpcore -> ssl: a short chain
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
