"""Wiring: settings -> the clients a cycle needs, built once and closed together."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace

import opensearchpy

from content_sync.errors import StoreError, StoreUnavailable
from content_sync.events import Events, current_feed
from content_sync.feed import FeedClient
from content_sync.notify import Notifier
from content_sync.retry import RetryPolicy
from content_sync.settings import (
    Settings,
    plaintext_credentials,
    public_url,
    unverified_endpoints,
)
from content_sync.store import Store, make_client
from content_sync.sync import FeedSync

__all__ = ["Runtime"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    events: Events = field(default_factory=Events)
    stop: threading.Event = field(default_factory=threading.Event)
    # Interactive commands (status, check) answer within seconds instead of retrying for long.
    quick: bool = False

    def __post_init__(self) -> None:
        # Every start (each command, each service start) says so, once per endpoint.
        for what, key, urls in unverified_endpoints(self.settings):
            log.warning(
                "TLS certificate verification is off for %s (%s: false): the identity of %s "
                "is not checked; give a private CA in %s instead",
                what,
                key,
                urls,
                key.replace("verify_certs", "ca_certs"),
            )
        for what, secret, key, urls in plaintext_credentials(self.settings):
            log.warning(
                "the credentials for %s (%s) travel unencrypted: %s uses plain HTTP (%s); "
                "use https://",
                what,
                secret,
                key,
                urls,
            )
        events = self.events
        retry = RetryPolicy.from_settings(self.settings.retry)
        if self.quick:
            retry = RetryPolicy(attempts=2, initial=0.5, max_wait=2.0, budget=10.0)
        self.retry = replace(
            retry, on_retry=lambda exc: events.retry(current_feed(), exc.cause), stop=self.stop
        )
        self.client = FeedClient(self.settings.cti, self.retry)
        self.store = Store(
            make_client(self.settings.opensearch), self.settings.opensearch, self.retry
        )
        self.store.lease_ttl = self.settings.sync.lease_ttl
        self.notifier = Notifier(self.settings.command_manager, self.retry)
        # Feeds whose refresh interval was checked for a dead catch-up's leftover (sync.py).
        self.refresh_checked: set[str] = set()

    def check_store(self) -> None:
        """One quick request: raises StoreUnavailable naming the hosts when OpenSearch is not
        reachable or refuses our credentials."""
        hosts = ", ".join(public_url(h) for h in self.settings.opensearch.hosts)
        try:
            self.store.client.info(request_timeout=10)
        except opensearchpy.AuthenticationException:
            raise StoreError(f"OpenSearch at {hosts} refused the credentials") from None
        except opensearchpy.SSLError as exc:
            raise StoreUnavailable(
                f"OpenSearch at {hosts}: TLS handshake failed: {exc.info} "
                "(a private CA goes in opensearch.ca_certs)"
            ) from None
        except opensearchpy.TransportError as exc:
            raise StoreUnavailable(
                f"OpenSearch at {hosts} is not reachable: {type(exc).__name__}"
            ) from None

    def feed_sync(self, name: str) -> FeedSync:
        return FeedSync(
            self.settings,
            self.settings.feed(name),
            client=self.client,
            store=self.store,
            notifier=self.notifier,
            events=self.events,
            stop=self.stop,
            refresh_checked=self.refresh_checked,
        )

    def close(self) -> None:
        self.client.close()
        self.notifier.close()
        self.store.client.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
