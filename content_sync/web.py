"""The service's HTTP port: GET /metrics, GET /health, POST /feeds/<name>/sync[?resync=true].

The trigger answers 202 (a cycle was queued), 409 (one is running), 404 (unknown feed). Bound to a
loopback address it needs nothing; bound elsewhere it demands `Authorization: Bearer <http.token>`
(and refuses everything when no token is configured).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from content_sync.metrics import Metrics
from content_sync.settings import HttpSettings, is_loopback

__all__ = ["HttpServer", "TriggerResult"]

log = logging.getLogger(__name__)

TriggerResult = Literal["queued", "running", "unknown"]
Trigger = Callable[[str, bool], TriggerResult]


class HttpServer:
    def __init__(self, settings: HttpSettings, metrics: Metrics, trigger: Trigger) -> None:
        self.settings = settings
        self.metrics = metrics
        self.trigger = trigger
        self.needs_token = not is_loopback(settings.host)
        if self.needs_token and settings.token is None:
            log.warning(
                "http.host %s is not loopback and http.token is not set: the trigger is refused",
                settings.host,
            )
        self._server = ThreadingHTTPServer((settings.host, settings.port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info(
            "serving /metrics, /health and the trigger on %s:%d", self.settings.host, self.port
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _authorised(self, header: str | None) -> bool:
        if not self.needs_token:
            return True
        token = self.settings.token
        if token is None or header is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), token.get_secret_value().encode())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "content-sync"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode())

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/metrics":
                    self._send(200, outer.metrics.exposition(), "text/plain; version=0.0.4")
                elif path == "/health":
                    healthy, body = outer.metrics.health()
                    self._json(200 if healthy else 503, body)
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")
                if len(segments) != 3 or segments[0] != "feeds" or segments[2] != "sync":
                    self._json(404, {"error": "not found"})
                    return
                if not outer._authorised(self.headers.get("Authorization")):
                    self._json(401, {"error": "a valid bearer token (http.token) is required"})
                    return
                resync = parse_qs(parts.query).get("resync", ["false"])[0].lower() == "true"
                outcome = outer.trigger(segments[1], resync)
                status = {"queued": 202, "running": 409, "unknown": 404}[outcome]
                self._json(status, {"feed": segments[1], "result": outcome, "resync": resync})

        return Handler
