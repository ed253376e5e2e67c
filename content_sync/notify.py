"""The Command Manager notification: tell the vulnerability detector that content moved.

The plugin validates key order (action before target; inside action, name before args) and wants
args as strings, so the body is built as an ordered dict and sent as-is.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from content_sync.errors import NotifyError, NotifyUnavailable, certificate_failure
from content_sync.feed import user_agent
from content_sync.retry import RetryPolicy
from content_sync.settings import CommandManagerSettings, tls_verify

__all__ = ["Notifier", "command_body"]

log = logging.getLogger(__name__)


def command_body(settings: CommandManagerSettings, *, index: str, offset: int) -> dict[str, Any]:
    return {
        "commands": [
            {
                "action": {
                    "name": "update",
                    "args": {"index": index, "offset": str(offset)},
                    "version": settings.version,
                },
                "source": settings.source,
                "timeout": settings.command_timeout,
                "target": {"id": settings.target_id, "type": settings.target_type},
            }
        ]
    }


class Notifier:
    def __init__(
        self,
        settings: CommandManagerSettings,
        retry: RetryPolicy,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._retry = retry
        self._transport = transport
        password = settings.password_value()
        self._auth = (
            (settings.username, password) if settings.username and password is not None else None
        )
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def _http(self) -> httpx.Client:
        """Built at the first request: its TLS context loads a CA bundle (~30 ms of every
        start), which a process that notifies nobody (disabled, nothing moved) never needs."""
        with self._lock:
            if self._client is None:
                settings = self._settings
                self._client = httpx.Client(
                    timeout=settings.timeout,
                    verify=tls_verify(settings.verify_certs, settings.ca_certs),
                    auth=self._auth,
                    headers={"User-Agent": user_agent()},
                    transport=self._transport,
                )
            return self._client

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def probe(self) -> str | None:
        """Reach the endpoint without sending a command: None if reachable with our
        credentials, else what is wrong. (It only accepts POST: 405 still proves it is there.)"""
        url = self._settings.url
        try:
            response = self._http.get(url)
        except httpx.TransportError as exc:
            return f"unreachable: {type(exc).__name__}: {exc}"
        if response.status_code in (401, 403):
            return f"credentials refused ({response.status_code})"
        if response.status_code >= 500:
            return f"answered {response.status_code}"
        return None

    def send(self, *, index: str, offset: int) -> None:
        """POST one update command; raises NotifyUnavailable/NotifyError when not delivered."""
        body = command_body(self._settings, index=index, offset=offset)
        url = self._settings.url

        def once() -> None:
            try:
                response = self._http.post(url, json=body)
            except httpx.TransportError as exc:
                if reason := certificate_failure(exc):
                    raise NotifyError(
                        f"Command Manager {url}: TLS certificate not trusted ({reason}); a "
                        "private CA goes in command_manager.ca_certs"
                    ) from None
                raise NotifyUnavailable(
                    f"Command Manager unreachable at {url}: {exc}", cause="notify-connection"
                ) from exc
            if response.status_code == 429 or response.status_code >= 500:
                raise NotifyUnavailable(
                    f"Command Manager answered {response.status_code} at {url}",
                    cause=f"notify-{response.status_code}",
                )
            if response.status_code >= 300:
                raise NotifyError(
                    f"Command Manager refused the command at {url}: {response.status_code} "
                    f"{response.text[:300]}"
                )

        self._retry.call(once)
        log.info("notified the Command Manager: %s is at offset %d", index, offset)
