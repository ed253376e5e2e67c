"""The CTI client: consumer info, change windows, snapshot download.

Every answer is validated against the contract (../shared/docs/cti-api.md) before anyone acts on
it: a malformed answer is a BadFeedAnswer, never silently "offset 0". Transient trouble (429,
5xx, resets, timeouts) becomes FeedUnavailable, which the shared RetryPolicy retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import msgspec
import orjson

from content_sync import __version__, failpoints, tempfiles
from content_sync.errors import (
    BadFeedAnswer,
    DisallowedHost,
    FeedError,
    FeedUnavailable,
    SnapshotError,
    certificate_failure,
)
from content_sync.growing import GrowingFile
from content_sync.lazydoc import is_raw_object
from content_sync.retry import RetryPolicy, parse_retry_after
from content_sync.settings import MAX_WINDOW, CTISettings, tls_verify

__all__ = ["Change", "ConsumerInfo", "FeedClient", "user_agent"]

log = logging.getLogger(__name__)

ChangeType = Literal["create", "update", "delete"]
ERROR_DETAIL_BYTES = 300  # of an error page, quoted in the message; the rest is never read


def user_agent() -> str:
    return f"content-sync/{__version__}"


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    last_offset: int
    snapshot_link: str | None
    snapshot_offset: int


@dataclass(frozen=True, slots=True)
class Change:
    offset: int
    type: ChangeType
    resource: str
    version: int
    # A create's document: decoded, or the raw JSON text of an object as the feed sent it.
    payload: dict[str, Any] | msgspec.Raw | None = None
    operations: list[dict[str, Any]] | None = None


def _offset(value: object, what: str) -> int:
    # bool is an int in Python; the contract's offsets are plain non-negative integers.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadFeedAnswer(f"{what} is {value!r}, expected a non-negative integer")
    return value


class FeedClient:
    """Talks to one CTI base URL. Thread-safe for sequential use per feed."""

    def __init__(
        self,
        settings: CTISettings,
        retry: RetryPolicy,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._retry = retry
        self._allowed = settings.snapshot_hosts | {urlsplit(settings.base_url).hostname or ""}
        verify = tls_verify(settings.verify_certs, settings.ca_certs)
        self._http = httpx.Client(
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 15.0)),
            verify=verify,
            proxy=settings.proxy,
            headers={"User-Agent": user_agent(), "Accept": "application/json"},
            follow_redirects=True,
            transport=transport,
            event_hooks={"request": [self._check_host]},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_host(self, request: httpx.Request) -> None:
        # Runs for every request, redirects included, so no hop can leave the allow-list.
        host = (request.url.host or "").lower()
        if host not in self._allowed:
            raise DisallowedHost(
                f"refusing to fetch {request.url.copy_with(query=None)}: host {host!r} is not in "
                f"cti.allowed_hosts ({', '.join(sorted(self._allowed))})"
            )

    def consumer_url(self, context: str, consumer: str) -> str:
        return (
            f"{self._settings.base_url}/catalog/contexts/{quote(context, safe='')}"
            f"/consumers/{quote(consumer, safe='')}"
        )

    # -- JSON endpoints ------------------------------------------------------------------------

    def _get_json(
        self,
        url: str,
        params: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> Any:
        def once() -> Any:
            try:
                with self._http.stream("GET", url, params=params) as response:
                    _raise_for_status(response, url)
                    ctype = response.headers.get("Content-Type", "none")
                    body = _read_capped(response, url, self._settings.max_answer_bytes)
            except httpx.TimeoutException as exc:
                raise FeedUnavailable(f"feed timed out: {url}", cause="feed-timeout") from exc
            except httpx.TransportError as exc:
                if reason := certificate_failure(exc):
                    raise FeedError(
                        f"feed {url}: TLS certificate not trusted ({reason}); a private CA goes "
                        "in cti.ca_certs"
                    ) from None
                raise FeedUnavailable(
                    f"feed unreachable: {url}: {exc}", cause="feed-connection"
                ) from exc
            except (httpx.TooManyRedirects, httpx.DecodingError) as exc:
                raise BadFeedAnswer(f"{url}: {_describe(exc)}") from None
            try:
                return decode(body)
            except ValueError as exc:  # orjson also refuses nesting deeper than 1024
                raise BadFeedAnswer(
                    f"{url}: answer is not JSON (Content-Type {ctype}): {exc}"
                ) from None

        return self._retry.call(once)

    def consumer(self, context: str, consumer: str) -> ConsumerInfo:
        url = self.consumer_url(context, consumer)
        body = self._get_json(url)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise BadFeedAnswer(f"{url}: answer has no 'data' object")
        # The answer names its consumer: one for another (a misrouting proxy or cache) must not
        # pass for ours, whose offsets it does not describe.
        for key, asked in (("context", context), ("name", consumer)):
            if data.get(key) not in (None, asked):
                raise BadFeedAnswer(f"{url}: answer is for {key} {data[key]!r}, not {asked!r}")
        if data.get("last_offset") in (None, ""):
            raise BadFeedAnswer(f"{url}: answer has no last_offset")
        last = _offset(data["last_offset"], f"{url}: last_offset")
        link = data.get("last_snapshot_link") or None
        if link is not None and not isinstance(link, str):
            raise BadFeedAnswer(f"{url}: last_snapshot_link is not a string")
        snap = data.get("last_snapshot_offset")
        snap_offset = 0 if snap in (None, "") else _offset(snap, f"{url}: last_snapshot_offset")
        if link is not None and snap_offset > last:
            raise BadFeedAnswer(
                f"{url}: last_snapshot_offset {snap_offset} is beyond last_offset {last}"
            )
        return ConsumerInfo(last_offset=last, snapshot_link=link, snapshot_offset=snap_offset)

    def changes(
        self,
        context: str,
        consumer: str,
        from_offset: int,
        to_offset: int,
        *,
        with_empties: bool = True,
    ) -> list[Change]:
        """The changes with from < offset <= to, validated and in offset order."""
        if not 0 <= from_offset < to_offset or to_offset - from_offset > MAX_WINDOW:
            raise ValueError(f"bad window ({from_offset}, {to_offset}]")
        url = f"{self.consumer_url(context, consumer)}/changes"
        params = {
            "from_offset": str(from_offset),
            "to_offset": str(to_offset),
            "with_empties": "true" if with_empties else "false",
        }
        body = self._get_json(url, params, decode=_decode_changes)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise BadFeedAnswer(f"{url}: answer has no 'data' list")
        where = f"{url} ({from_offset}, {to_offset}]"
        if len(data) > to_offset - from_offset:
            raise BadFeedAnswer(f"{where}: {len(data)} changes cannot fit the window")
        out: list[Change] = []
        last = from_offset
        for item in data:
            change = _parse_change(item, context, where)
            if not last < change.offset <= to_offset:
                raise BadFeedAnswer(
                    f"{where}: change offset {change.offset} is out of order or outside the window"
                )
            last = change.offset
            out.append(change)
        return out

    # -- snapshot --------------------------------------------------------------------------------

    def download_snapshot(
        self,
        link: str,
        *,
        temp_dir: Path | None,
        max_bytes: int,
        progress: Callable[[int, int | None], None] | None = None,
        growing: GrowingFile | None = None,
    ) -> Path:
        """Stream the archive to a private temp file; resume with Range after a dropped connection.

        The caller owns (and must delete) the returned file. On failure nothing is left behind.
        With `growing`, every chunk is flushed and announced as it is written, so that another
        thread can read the archive while it downloads.
        """
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadFeedAnswer(f"snapshot link {link!r} is not an http(s) URL")
        try:
            tempfiles.remove_stale(temp_dir)
            fd, path = tempfiles.create(temp_dir)  # 0600, held while this process keeps it
        except BaseException as exc:
            if growing is not None:
                growing.finish(failed=True)  # a reader waiting for the file is told
            if isinstance(exc, OSError):  # missing, read-only or full: the operator's to fix
                where = tempfiles.directory(temp_dir)
                raise SnapshotError(
                    f"cannot create the download in {where} (sync.temp_dir): {exc}"
                ) from None
            raise
        if growing is not None:
            growing.created(path)
        try:
            with os.fdopen(fd, "wb") as out:
                self._retry.call(
                    lambda: self._download_once(link, out, max_bytes, progress, growing)
                )
        except BaseException:
            if growing is not None:
                growing.finish(failed=True)
            tempfiles.discard(path)
            raise
        if growing is not None:
            growing.finish(failed=False)
        return path

    def _download_once(
        self,
        link: str,
        out: Any,
        max_bytes: int,
        progress: Callable[[int, int | None], None] | None,
        growing: GrowingFile | None,
    ) -> None:
        have = out.tell()
        headers = {"Accept": "application/zip, application/octet-stream"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with self._http.stream("GET", link, headers=headers) as response:
                _raise_for_status(response, link)
                ctype = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
                if ctype == "text/html" or ctype.endswith("json"):  # an error or login page
                    raise BadFeedAnswer(f"snapshot {link} answered {ctype}, not a zip archive")
                total = _expected_total(response, have, link)
                if response.status_code == 200 and have:
                    # The server ignored our Range: start again from the first byte.
                    log.info("snapshot server does not resume; restarting the download")
                    out.seek(0)
                    out.truncate()
                    have = 0
                    if growing is not None:
                        growing.restarted()
                if total is not None and total > max_bytes:
                    raise SnapshotError(
                        f"snapshot {link} is {total} bytes, "
                        f"over sync.max_archive_bytes ({max_bytes})"
                    )
                for chunk in response.iter_bytes():  # as received: a drop loses nothing
                    out.write(chunk)
                    failpoints.hit("download-chunk")
                    have += len(chunk)
                    if growing is not None:
                        out.flush()  # what a reader is told is there must be in the file
                        growing.grew(have)
                    if have > max_bytes:
                        raise SnapshotError(
                            f"snapshot {link} exceeds sync.max_archive_bytes ({max_bytes})"
                        )
                    if progress is not None:
                        progress(have, total)
                if total is not None and have != total:
                    raise FeedUnavailable(
                        f"snapshot download ended at {have} of {total} bytes",
                        cause="feed-connection",
                    )
        except httpx.TimeoutException as exc:
            out.flush()
            raise FeedUnavailable(
                f"snapshot download timed out at {have} bytes", cause="feed-timeout"
            ) from exc
        except httpx.TransportError as exc:
            out.flush()
            if reason := certificate_failure(exc):
                raise FeedError(
                    f"snapshot {link}: TLS certificate not trusted ({reason}); a private CA goes "
                    "in cti.ca_certs"
                ) from None
            raise FeedUnavailable(
                f"snapshot download interrupted at {have} bytes: {exc}", cause="feed-connection"
            ) from exc
        except (httpx.TooManyRedirects, httpx.DecodingError) as exc:
            raise BadFeedAnswer(f"snapshot {link}: {_describe(exc)}") from None
        out.flush()


def _expected_total(response: httpx.Response, have: int, link: str) -> int | None:
    """Total archive size from Content-Range/Content-Length; checks a 206 resumes where we are."""
    if response.status_code == 206:
        value = response.headers.get("Content-Range", "")
        try:
            span, _, size = value.removeprefix("bytes ").partition("/")
            start = int(span.split("-")[0])
        except ValueError:
            raise BadFeedAnswer(f"{link}: unusable Content-Range {value!r}") from None
        if start != have:
            raise BadFeedAnswer(f"{link}: resumed at byte {start}, expected {have}")
        return int(size) if size.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _raise_for_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 300:
        return
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        cause = "feed-429" if status == 429 else "feed-5xx"
        raise FeedUnavailable(
            f"feed answered {status} for {url}", retry_after=retry_after, cause=cause
        )
    detail = ""
    with contextlib.suppress(Exception):
        head = b""
        for chunk in response.iter_bytes():  # a prefix only: the page may be huge
            head += chunk
            if len(head) >= ERROR_DETAIL_BYTES:
                break
        detail = f": {head[:ERROR_DETAIL_BYTES].decode('utf-8', 'replace')}"
    raise BadFeedAnswer(f"feed answered {status} for {url}{detail}")


def _read_capped(response: httpx.Response, url: str, limit: int) -> bytes:
    """The body of a JSON answer, refused once beyond `limit` bytes: it is parsed whole, so its
    size is what bounds memory, and a hostile feed must not choose that."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise BadFeedAnswer(
            f"{url}: answer of {length} bytes is over cti.max_answer_bytes ({limit})"
        )
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise BadFeedAnswer(f"{url}: answer exceeds cti.max_answer_bytes ({limit})")
        parts.append(chunk)
    return b"".join(parts)


def _describe(exc: httpx.RequestError) -> str:
    if isinstance(exc, httpx.TooManyRedirects):
        return f"too many redirects ({exc})"
    return f"cannot decode the answer ({exc})"


def _parse_change(item: object, context: str, where: str) -> Change:
    """One change of a changes answer: an _Item from _decode_changes, or a plainly decoded
    object (an answer of another shape)."""
    if isinstance(item, _Item):
        if (change := _valid(item, context)) is not None:
            return change
        found: tuple[object, ...] = (
            item.offset,
            item.type,
            item.resource,
            item.context,
            item.version,
            item.operations,
            None if item.payload is msgspec.UNSET else item.payload,
        )
    elif isinstance(item, dict):
        found = (
            item.get("offset"),
            item.get("type"),
            item.get("resource"),
            item.get("context"),
            item.get("version", 0),
            item.get("operations"),
            item.get("payload"),
        )
    else:
        raise BadFeedAnswer(f"{where}: a change is not an object")
    offset, kind, resource, owner, version, ops, payload = found
    offset = _offset(offset, f"{where}: change offset")
    given = kind
    kind = kind.lower() if isinstance(kind, str) else kind
    if not isinstance(resource, str) or not resource:
        raise BadFeedAnswer(f"{where}: change {offset} has no resource name")
    if owner not in (None, context):
        raise BadFeedAnswer(f"{where}: change {offset} belongs to context {owner!r}")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadFeedAnswer(f"{where}: change {offset} has version {version!r}")
    if kind == "create":
        if isinstance(payload, dict) or is_raw_object(payload):
            return Change(offset, "create", resource, version, payload=payload)
        raise BadFeedAnswer(f"{where}: create {offset} ({resource}) has no payload object")
    if kind == "update":
        if ops is None:
            ops = []
        if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
            raise BadFeedAnswer(f"{where}: update {offset} ({resource}) has no operations list")
        return Change(offset, "update", resource, version, operations=ops)
    if kind == "delete":
        return Change(offset, "delete", resource, version)
    raise BadFeedAnswer(f"{where}: change {offset} has unknown type {given!r}")


def _valid(item: _Item, context: str) -> Change | None:
    """The change an _Item describes, if it is valid, in few steps (a JSON decoder gives exact
    types: no bool passes for an int); else None, for _parse_change to say what is wrong."""
    offset, resource, version, kind = item.offset, item.resource, item.version, item.type
    if (
        type(offset) is not int
        or offset < 0
        or type(resource) is not str
        or not resource
        or item.context not in (None, context)
        or type(version) is not int
        or type(kind) is not str
    ):
        return None
    kind = kind.lower()
    if kind == "update":
        ops = item.operations
        if ops is None:
            ops = []
        elif type(ops) is not list:
            return None
        for op in ops:
            if type(op) is not dict:
                return None
        return Change(offset, "update", resource, version, operations=ops)
    if kind == "create" and is_raw_object(item.payload):
        return Change(offset, "create", resource, version, payload=item.payload)
    if kind == "delete":
        return Change(offset, "delete", resource, version)
    return None


class _Item(msgspec.Struct, gc=False):
    """A change as the fast decoder reads it: the payload (a whole CVE record for a create) is
    left raw, as lazydoc and the bulk encoder take it; everything else is checked by
    _parse_change, as for a plainly decoded answer. (No cycles run through these: gc=False.)"""

    offset: Any = None
    type: Any = None
    resource: Any = None
    context: Any = None
    version: Any = 0
    operations: Any = None
    payload: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _Changes(msgspec.Struct, gc=False):
    data: list[_Item]


_CHANGES = msgspec.json.Decoder(_Changes)


def _decode_changes(body: bytes) -> Any:
    """A changes answer with the creates' payloads left undecoded (most of a window's bytes),
    its changes as _Items. An answer of another shape is decoded plainly, for _parse_change to
    say what is wrong."""
    try:
        answer = _CHANGES.decode(body)
    except msgspec.ValidationError:
        return orjson.loads(body)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    return {"data": answer.data}


def iter_windows(start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """(F, T] windows covering (start, end], each at most `size` wide."""
    low = start
    while low < end:
        high = min(low + size, end)
        yield low, high
        low = high
