"""An HTTP stand-in for the Wazuh CTI catalog API (and the Command Manager), on 127.0.0.1.

Speaks the wire contract of docs/cti-api.md from a `FeedModel`, and misbehaves on request
(`inject`) the way the real service is known to.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from content_sync.testing.model import FeedModel

__all__ = ["FAULTS", "FAULT_TARGETS", "FeedServer", "Headers", "RequestRecord"]

_T = TypeVar("_T")

FAULTS = (
    "429",
    "429-date",
    "429-zero",
    "500-ratelimit",
    "500",
    "401",
    "502",
    "503",
    "drop",
    "reset",
    "slow",
    "truncated-zip",
    "bad-crc",
    "malformed-line",
)
FAULT_TARGETS = ("consumer", "changes", "snapshot", "command", "any")
# These only make sense for a snapshot download: they never match another request.
_SNAPSHOT_ONLY = frozenset({"truncated-zip", "bad-crc", "malformed-line"})
_COMMAND_PATH = "/_plugins/_command_manager/commands"
_API = "/api/v1/catalog/contexts/"
_STORE = "/store/contexts/"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Headers(dict[str, str]):
    """Request headers with case-insensitive lookup (keys are stored lower-cased)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        return super().get(key.lower(), default)


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    kind: str  # consumer | changes | snapshot | command | other
    body: bytes = b""
    status: int = 0  # 0 = the connection was closed without an answer
    fault: str | None = None
    at: float = field(default_factory=time.time)


@dataclass
class _Fault:
    name: str
    times: int
    on: str
    delay: float

    def matches(self, kind: str) -> bool:
        if self.name in _SNAPSHOT_ONLY and kind != "snapshot":
            return False
        return self.on in ("any", kind)


class _Dropped(Exception):
    """The handler closed the connection on purpose."""


class FeedServer:
    """Serves `model` (which a test may mutate or replace while the server runs).

    The socket is bound in the constructor (URLs are valid at once); start() begins serving in a
    daemon thread, stop() closes everything. Also a context manager. With `ssl_context` (a server
    context holding the certificate) it speaks HTTPS, and its URLs say so.
    """

    range_support: bool = True

    def __init__(
        self,
        model: FeedModel,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        snapshot_host: str | None = None,
        page_limit: int = 1000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.model = model
        self.ssl_context = ssl_context
        # More consumers served beside `model` (tests of several feeds on one CTI base URL).
        self.extra_models: list[FeedModel] = []
        self.host = host
        self.snapshot_host = snapshot_host
        self.page_limit = page_limit
        self.requests: list[RequestRecord] = []
        self.commands: list[dict[str, Any]] = []
        self.command_auth: tuple[str, str] | None = None
        self.range_support = True
        # JSON answers indented, as a feed may send them: JSON allows whitespace between any two
        # tokens, so a payload passed through raw then holds newlines.
        self.pretty = False
        # Snapshot downloads paced to this many bytes a second (None: as fast as loopback goes);
        # benchmarks use it to stand for a feed that is far away.
        self.snapshot_rate: float | None = None
        # Changes answers rendered ahead of time (prerender): (model, head, from, to, empties).
        self._rendered: dict[tuple[int, int, int, int, bool], bytes] = {}
        self._want_port = port
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bind()

    # ------------------------------------------------------------------ lifecycle

    def prerender(self, spans: Iterable[tuple[int, int]], *, with_empties: bool = True) -> None:
        """Render the changes answers of `spans` now, so that serving them costs (nearly) no CPU.

        For benchmarks: a real feed's CPU is on other machines, while this stand-in shares the
        product's cores (rendering a window of 1000 changes with 100 generated 12 KB payloads
        takes ~50 ms). The answers are the same bytes; they are dropped when the feed moves."""
        model = self.model
        for lo, hi in spans:
            key = (id(model), model.head_offset, lo, hi, with_empties)
            self._rendered[key] = orjson.dumps(
                {"data": model.changes(lo, hi, with_empties=with_empties)}
            )

    def rendered(self, model: FeedModel, lo: int, hi: int, with_empties: bool) -> bytes | None:
        if not self._rendered:
            return None
        return self._rendered.get((id(model), model.head_offset, lo, hi, with_empties))

    def _bind(self) -> _HTTPServer:
        if self._httpd is None:
            # Bound at construction so the URLs are known before start(); a restart after stop()
            # reuses the same port.
            self._httpd = _HTTPServer((self.host, self._want_port), _Handler)
            self._httpd.feed = self
            self._httpd.ssl_context = self.ssl_context
            self._want_port = int(self._httpd.server_address[1])
        return self._httpd

    def start(self) -> FeedServer:
        httpd = self._bind()
        if self._thread is None:
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"feed-server-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection (idle keep-alive ones too)."""
        httpd, self._httpd = self._httpd, None
        thread, self._thread = self._thread, None
        if httpd is None:
            return
        if thread is not None:
            httpd.shutdown()
            thread.join(timeout=5)
        httpd.server_close()
        httpd.close_connections()

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self._want_port

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    @property
    def consumer_url(self) -> str:
        m = self.model
        return f"{self.base_url}/catalog/contexts/{m.context}/consumers/{m.consumer}"

    @property
    def changes_url(self) -> str:
        return f"{self.consumer_url}/changes"

    @property
    def command_url(self) -> str:
        return f"{self.origin}{_COMMAND_PATH}"

    def snapshot_url(self, name: str | None = None, model: FeedModel | None = None) -> str:
        """The link of snapshot `name` (default: the current one), as the consumer shows it."""
        m = model or self.model
        return (
            f"{self.scheme}://{self.snapshot_host or self.host}:{self.port}{_STORE}{m.context}"
            f"/consumers/{m.consumer}/{name or m.snapshot_name}"
        )

    # ------------------------------------------------------------------ faults

    def inject(self, fault: str, *, times: int = 1, on: str = "any", delay: float = 0.0) -> None:
        """Make the next `times` matching requests misbehave with `fault` (see FAULTS).

        Faults are consumed one per matching request, oldest first. Snapshot-only faults
        (truncated-zip, bad-crc, malformed-line) only ever match snapshot downloads. `delay`:
        how long 'slow' stalls, or the Retry-After seconds of '429' (default 1).
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        if on not in FAULT_TARGETS:
            raise ValueError(f"unknown target {on!r}; expected one of {FAULT_TARGETS}")
        if times < 1:
            raise ValueError("times must be >= 1")
        if fault == "slow" and delay <= 0:
            raise ValueError("the 'slow' fault needs delay > 0")
        with self._lock:
            self._faults.append(_Fault(fault, times, on, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return [(f.name, f.times, f.on) for f in self._faults]

    def _take_fault(self, kind: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(kind):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ helpers for tests

    def requests_of(self, kind: str) -> list[RequestRecord]:
        return [r for r in list(self.requests) if r.kind == kind]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    feed: FeedServer
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake happens in the handler's thread (on the first read), so a client that
            # stalls or refuses the certificate never blocks the accept loop.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that refused our certificate (or hung up mid-handshake) is not a server bug.
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Close idle keep-alive connections too, so clients see the server go away."""
        with self._open_lock:
            socks = list(self._open)
            self._open.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _kind(method: str, path: str) -> str:
    if path == _COMMAND_PATH:
        return "command"
    if path.startswith(_STORE):
        return "snapshot"
    if path.startswith(_API):
        return "changes" if path.endswith("/changes") else "consumer"
    return "other"


def _error_json(status: int, reason: str, kind: str = "illegal_argument_exception") -> bytes:
    """An OpenSearch-style error body (what the Command Manager plugin answers)."""
    return json.dumps(
        {
            "error": {
                "root_cause": [{"type": kind, "reason": reason}],
                "type": kind,
                "reason": reason,
            },
            "status": status,
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cti-local/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `FeedServer.requests` instead of stderr noise

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ------------------------------------------------------------------ plumbing

    def _handle(self) -> None:
        feed = self.server.feed
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = b""
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            body = self.rfile.read(int(length))
        kind = _kind(self.command, path)
        self._rec = RequestRecord(
            self.command, path, query, Headers(list(self.headers.items())), kind, body
        )
        feed.requests.append(self._rec)
        try:
            fault = feed._take_fault(kind)
            variant = None
            if fault is not None:
                self._rec.fault = fault.name
                if fault.name == "slow":
                    time.sleep(fault.delay)
                elif fault.name in _SNAPSHOT_ONLY:
                    variant = fault.name
                elif fault.name != "drop" or kind != "snapshot":
                    self._fault(fault.name, kind, fault.delay)
                    return
            self._route(
                feed,
                kind,
                path,
                query,
                body,
                variant=variant,
                drop=fault is not None and fault.name == "drop",
            )
        except _Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away (e.g. its timeout fired)

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        ctype: str = "application/json; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        if self.server.feed.pretty:
            body = json.dumps(obj, ensure_ascii=False, indent=2).encode()
            self._send(status, body, headers=headers)
            return
        try:
            # orjson: a 1000-change answer costs ~3 ms instead of ~20, which matters when this
            # stand-in shares the machine's cores with the product and the node (benchmarks).
            body = orjson.dumps(obj)
        except TypeError:  # what orjson cannot represent (e.g. integers beyond 64 bits)
            body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        self._send(status, body, headers=headers)

    def _drop(self, *, reset: bool = False) -> None:
        """Close the connection without (further) answer."""
        self.close_connection = True
        try:
            if reset:  # RST instead of FIN: the client sees "connection reset by peer"
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped

    def _fault(self, name: str, kind: str, delay: float) -> None:
        if name == "429":
            wait = str(int(delay) if delay > 0 else 1)
            self._json(429, {"errors": {"detail": "Too Many Requests"}}, {"Retry-After": wait})
        elif name == "429-date":
            when = email.utils.formatdate(int(time.time()) + 2, usegmt=True)
            self._json(429, {"errors": {"detail": "Too Many Requests"}}, {"Retry-After": when})
        elif name == "429-zero":
            self._json(429, {"errors": {"detail": "Too Many Requests"}}, {"Retry-After": "0"})
        elif name == "500-ratelimit":
            self._json(500, {"errors": {"detail": "Rate limit exceeded. Please retry later."}})
        elif name == "500":
            if kind == "command":
                self._send(
                    500, _error_json(500, "failed to index the command", "index_failed_exception")
                )
            else:
                self._json(500, {"errors": {"detail": "Internal Server Error"}})
        elif name == "401":
            self._unauthorized()
        elif name in ("502", "503"):
            text = "Bad Gateway" if name == "502" else "Service Temporarily Unavailable"
            html = (
                f"<html><head><title>{name} {text}</title></head><body><center><h1>{name} "
                f"{text}</h1></center></body></html>\n"
            )
            self._send(int(name), html.encode(), ctype="text/html")
        elif name == "drop":
            self._drop()
        elif name == "reset":
            self._drop(reset=True)

    def _unauthorized(self) -> None:
        self._send(
            401,
            _error_json(401, "Authentication finally failed", "security_exception"),
            headers={"WWW-Authenticate": 'Basic realm="OpenSearch Security"'},
        )

    # ------------------------------------------------------------------ routes

    def _route(
        self,
        feed: FeedServer,
        kind: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        *,
        variant: str | None,
        drop: bool,
    ) -> None:
        model = feed.model
        if kind == "command":
            if self.command != "POST":
                self._send(405, _error_json(405, "method not allowed"))
            else:
                self._command(feed, body)
            return
        if self.command not in ("GET", "HEAD"):
            self._json(405, {"errors": {"detail": "Method Not Allowed"}})
            return
        for candidate in (model, *feed.extra_models):
            api = f"{_API}{candidate.context}/consumers/{candidate.consumer}"
            if path == api or path.startswith(
                (api + "/", f"{_STORE}{candidate.context}/consumers/{candidate.consumer}/")
            ):
                model = candidate
                break
        prefix = f"{_API}{model.context}/consumers/{model.consumer}"
        store = f"{_STORE}{model.context}/consumers/{model.consumer}/"
        if path in (prefix, prefix + "/"):
            self._consumer(feed, model)
        elif path == prefix + "/changes":
            self._changes(feed, model, query)
        elif path.startswith(store) and path[len(store) :] in model.snapshots:
            self._snapshot(feed, model, path[len(store) :], variant=variant, drop=drop)
        else:
            self._json(404, {"errors": {"detail": "Not Found"}})

    def _consumer(self, feed: FeedServer, model: FeedModel) -> None:
        with model.lock:  # one consistent view even while a test appends or publishes
            head = model.head_offset
            snap = model.snapshot
            link = feed.snapshot_url(snap.name, model) if snap else None
            data = {
                "id": 4,
                "name": model.consumer,
                "context": model.context,
                "operations": None,
                "inserted_at": "2023-11-23T19:34:18.698495Z",
                "updated_at": model.inserted_at(head) if head else "2023-11-23T19:34:18.698495Z",
                "changes_url": (
                    f"{feed.host}:{feed.port}{_API}{model.context}/consumers/"
                    f"{model.consumer}/changes"
                ),
                "last_offset": head,
                "last_snapshot_at": snap.published_at if snap else None,
                "last_snapshot_link": link,
                "last_snapshot_offset": snap.offset if snap else 0,
                "paths_filter": None,
            }
        self._json(200, {"data": data})

    def _changes(self, feed: FeedServer, model: FeedModel, query: dict[str, str]) -> None:
        errors: dict[str, list[str]] = {}
        values: dict[str, int] = {}
        for key in ("from_offset", "to_offset"):
            raw = query.get(key)
            if raw is None or raw == "":
                errors[key] = ["can't be blank"]
            elif not re.fullmatch(r"-?\d+", raw):
                errors[key] = ["is invalid"]
            elif int(raw) < 0:
                errors[key] = ["must be greater than or equal to 0"]
            else:
                values[key] = int(raw)
        empties = query.get("with_empties", "true").lower()
        if empties not in ("true", "false"):
            errors["with_empties"] = ["is invalid"]
        if errors:
            self._json(422, {"errors": errors})
            return
        lo, hi = values["from_offset"], values["to_offset"]
        if lo >= hi:
            self._json(422, {"errors": {"to_offset": ["must be greater than from_offset"]}})
            return
        if hi - lo > feed.page_limit:
            self._json(
                422,
                {"errors": {"to_offset": [f"range exceeds maximum of {feed.page_limit} changes"]}},
            )
            return
        body = feed.rendered(model, lo, hi, empties == "true")
        if body is not None:
            self._send(200, body)
            return
        self._json(200, {"data": model.changes(lo, hi, with_empties=empties == "true")})

    def _snapshot(
        self, feed: FeedServer, model: FeedModel, name: str, *, variant: str | None, drop: bool
    ) -> None:
        snap = model.snapshots[name]
        path: Path = model.variant(variant, name) if variant else snap.path
        size = path.stat().st_size
        start, length, status = 0, size, 200
        headers = {
            "Accept-Ranges": "bytes" if feed.range_support else "none",
            "Last-Modified": email.utils.formatdate(snap.ts, usegmt=True),
            "ETag": f'"{name}{"-" + variant if variant else ""}"',
        }
        wanted = self.headers.get("Range")
        if wanted and feed.range_support:
            m = _RANGE.fullmatch(wanted.strip())
            if m:  # other syntaxes (multi-range, suffix) are ignored: full 200, as RFC 9110 allows
                first = int(m.group(1))
                last = int(m.group(2)) if m.group(2) else size - 1
                if first >= size or last < first:
                    self._send(416, b"", headers={"Content-Range": f"bytes */{size}"})
                    return
                last = min(last, size - 1)
                start, length, status = first, last - first + 1, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        # A drop sends the full Content-Length but only half the bytes, then closes.
        count = max(1, length // 2) if drop and length > 1 else length
        with open(path, "rb") as fh:
            if count and feed.snapshot_rate:
                self._paced(fh, start, count, feed.snapshot_rate)
            elif count:
                self.connection.sendfile(fh, offset=start, count=count)
        if drop:
            self._drop()

    def _paced(self, fh: BinaryIO, start: int, count: int, rate: float) -> None:
        """Send `count` bytes from `start` at about `rate` bytes a second."""
        piece = max(1, int(rate / 20))  # 20 pieces a second: smooth enough for any reader
        began, sent = time.monotonic(), 0
        fh.seek(start)
        while sent < count:
            data = fh.read(min(piece, count - sent))
            if not data:
                break
            self.wfile.write(data)
            sent += len(data)
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)

    def _command(self, feed: FeedServer, body: bytes) -> None:
        if feed.command_auth is not None:
            user, password = feed.command_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            if self.headers.get("Authorization", "") != f"Basic {token}":
                self._unauthorized()
                return
        try:
            parsed = json.loads(body, object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(
                400, _error_json(400, f"failed to parse request body: {exc}", "parsing_exception")
            )
            return
        problem = validate_commands(parsed)
        if problem:
            self._send(400, _error_json(400, problem))
            return
        feed.commands.append(parsed)
        orders = [{"_id": str(uuid.uuid4())} for _ in parsed["commands"]]
        self._json(200, {"_index": "wazuh-commands", "orders": orders, "result": "OK"})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate field [{key}]")
        out[key] = value
    return out


def validate_commands(body: Any) -> str | None:
    """Why the Command Manager plugin would refuse `body` (parsed with key order kept), or None.

    Mirrors the plugin's streaming parser: inside a command `action` must come before `target`,
    inside `action` `name` before `args`; `args.index` and `args.offset` are strings; `target`
    has `id` and `type`; `source` and `timeout` are present.
    """
    if not isinstance(body, dict) or not isinstance(body.get("commands"), list):
        return "request body must be an object with a [commands] array"
    if not body["commands"]:
        return "[commands] must not be empty"
    for i, cmd in enumerate(body["commands"]):
        where = f"commands[{i}]"
        if not isinstance(cmd, dict):
            return f"{where} must be an object"
        for key in ("source", "timeout", "target", "action"):
            if key not in cmd:
                return f"{where}: missing required field [{key}]"
        keys = list(cmd)
        if keys.index("action") > keys.index("target"):
            return f"{where}: [action] must come before [target]"
        if not isinstance(cmd["source"], str) or not cmd["source"]:
            return f"{where}: [source] must be a non-empty string"
        timeout = cmd["timeout"]
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            return f"{where}: [timeout] must be a positive integer"
        target = cmd["target"]
        if not isinstance(target, dict) or not all(
            isinstance(target.get(k), str) and target[k] for k in ("id", "type")
        ):
            return f"{where}: [target] needs string [id] and [type]"
        action = cmd["action"]
        if not isinstance(action, dict):
            return f"{where}: [action] must be an object"
        if "name" not in action or "args" not in action:
            return f"{where}: [action] needs [name] and [args]"
        akeys = list(action)
        if akeys.index("name") > akeys.index("args"):
            return f"{where}: [action.name] must come before [action.args]"
        if not isinstance(action["name"], str) or not action["name"]:
            return f"{where}: [action.name] must be a non-empty string"
        if "version" in action and not isinstance(action["version"], str):
            return f"{where}: [action.version] must be a string"
        args = action["args"]
        if not isinstance(args, dict):
            return f"{where}: [action.args] must be an object"
        for key in ("index", "offset"):
            if not isinstance(args.get(key), str):
                return f"{where}: [action.args.{key}] must be a string"
    return None
