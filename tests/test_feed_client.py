"""The CTI client at its HTTP edge (respx): validation, retries, allowed hosts, resume."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
import respx

from content_sync.errors import (
    BadFeedAnswer,
    DisallowedHost,
    FeedUnavailable,
    SnapshotError,
    Stopped,
)
from content_sync.feed import FeedClient
from content_sync.retry import RetryPolicy
from content_sync.settings import CTISettings

BASE = "https://cti.example.test/api/v1"
CONSUMER = f"{BASE}/catalog/contexts/vd_1.0.0/consumers/vd_4.8.0"
FAST = RetryPolicy(attempts=4, initial=0.001, max_wait=0.01, budget=5)


def client(**kw: object) -> FeedClient:
    return FeedClient(CTISettings(base_url=BASE, **kw), FAST)  # type: ignore[arg-type]


def consumer_body(**data: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 4,
        "name": "vd_4.8.0",
        "context": "vd_1.0.0",
        "last_offset": 1675416,
        "last_snapshot_link": "https://cti.example.test/store/x/1672583_1.zip",
        "last_snapshot_offset": 1672583,
        "changes_url": "cti.example.test/api/v1/catalog/contexts/vd_1.0.0/consumers/x/changes",
    }
    base.update(data)
    return {"data": base}


@respx.mock
def test_consumer_parsed_and_user_agent_sent() -> None:
    route = respx.get(CONSUMER).respond(json=consumer_body())
    info = client().consumer("vd_1.0.0", "vd_4.8.0")
    assert (info.last_offset, info.snapshot_offset) == (1675416, 1672583)
    assert info.snapshot_link == "https://cti.example.test/store/x/1672583_1.zip"
    assert route.calls.last.request.headers["User-Agent"].startswith("content-sync/")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data": None},
        {"data": {"last_snapshot_offset": 3}},
        {"data": {"last_offset": None}},
        {"data": {"last_offset": ""}},
        {"data": {"last_offset": "12"}},
        {"data": {"last_offset": -1}},
        {"data": {"last_offset": True}},
        {
            "data": {
                "last_offset": 5,
                "last_snapshot_link": "http://x/y.zip",
                "last_snapshot_offset": 9,
            }
        },
        [],
    ],
)
@respx.mock
def test_bad_consumer_answers_are_errors_not_offset_zero(body: object) -> None:
    respx.get(CONSUMER).respond(json=body)
    with pytest.raises(BadFeedAnswer):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@respx.mock
def test_non_json_answer() -> None:
    respx.get(CONSUMER).respond(text="<html>maintenance</html>")
    with pytest.raises(BadFeedAnswer, match="not JSON"):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@respx.mock
def test_rate_limits_and_5xx_are_retried() -> None:
    route = respx.get(CONSUMER).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(500, json={"error": "rate limit"}),
            httpx.Response(503),
            httpx.Response(200, json=consumer_body(last_offset=7, last_snapshot_offset=5)),
        ]
    )
    assert client().consumer("vd_1.0.0", "vd_4.8.0").last_offset == 7
    assert route.call_count == 4


@respx.mock
def test_retry_budget_exhausted_raises_transient() -> None:
    respx.get(CONSUMER).respond(502)
    with pytest.raises(FeedUnavailable, match="502"):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@respx.mock
def test_a_stop_ends_the_wait_for_a_retry() -> None:
    """The server asks for two minutes; the policy's ceiling is one. A stop during that wait
    ends it at once, without another request."""
    route = respx.get(CONSUMER).respond(429, headers={"Retry-After": "120"})
    stop = threading.Event()
    policy = RetryPolicy(attempts=8, initial=1.0, max_wait=60.0, budget=900.0, stop=stop)
    feed = FeedClient(CTISettings(base_url=BASE), policy)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        feed.consumer("vd_1.0.0", "vd_4.8.0")
    assert time.monotonic() - started < 30  # not the 60 s wait
    assert route.call_count == 1
    # Already stopping: the call is still made once (a final state write must get its chance),
    # but not retried.
    with pytest.raises(Stopped):
        feed.consumer("vd_1.0.0", "vd_4.8.0")
    assert route.call_count == 2


@respx.mock
def test_changes_window_validated() -> None:
    ok = [
        {"offset": 11, "type": "Create", "version": 1, "resource": "A", "payload": {}},
        {"offset": 12, "type": "update", "version": 2, "resource": "A", "operations": []},
        {"offset": 15, "type": "DELETE", "version": 3, "resource": "A"},
    ]
    route = respx.get(f"{CONSUMER}/changes").respond(json={"data": ok})
    got = client().changes("vd_1.0.0", "vd_4.8.0", 10, 15, with_empties=False)
    assert [(c.offset, c.type) for c in got] == [(11, "create"), (12, "update"), (15, "delete")]
    assert dict(route.calls.last.request.url.params) == {
        "from_offset": "10",
        "to_offset": "15",
        "with_empties": "false",
    }


@pytest.mark.parametrize(
    "items",
    [
        [{"offset": 10, "type": "delete", "version": 1, "resource": "A"}],  # not above from
        [{"offset": 16, "type": "delete", "version": 1, "resource": "A"}],  # beyond to
        [
            {"offset": 13, "type": "delete", "version": 1, "resource": "A"},
            {"offset": 12, "type": "delete", "version": 1, "resource": "B"},
        ],  # backwards
        [{"offset": "12", "type": "delete", "version": 1, "resource": "A"}],
        [{"offset": 12, "type": "upsert", "version": 1, "resource": "A"}],
        [{"offset": 12, "type": "create", "version": 1, "resource": "A"}],  # no payload
        [{"offset": 12, "type": "update", "version": 1, "resource": "A", "operations": {}}],
        [{"offset": 12, "type": "delete", "version": 1, "resource": ""}],
        [{"offset": 12, "type": "delete", "version": 1, "resource": "A", "context": "other"}],
        [{"offset": 11 + i, "type": "delete", "version": 1, "resource": "A"} for i in range(6)],
    ],
)
@respx.mock
def test_hostile_windows_refused(items: list[dict[str, object]]) -> None:
    respx.get(f"{CONSUMER}/changes").respond(json={"data": items})
    with pytest.raises(BadFeedAnswer):
        client().changes("vd_1.0.0", "vd_4.8.0", 10, 15)


@respx.mock
def test_422_is_a_clear_error() -> None:
    respx.get(f"{CONSUMER}/changes").respond(
        422, json={"errors": {"to_offset": ["range exceeds maximum of 1000 changes"]}}
    )
    with pytest.raises(BadFeedAnswer, match="range exceeds maximum"):
        client().changes("vd_1.0.0", "vd_4.8.0", 0, 1000)


def test_window_wider_than_1000_never_sent() -> None:
    with pytest.raises(ValueError, match="bad window"):
        client().changes("vd_1.0.0", "vd_4.8.0", 0, 1001)


@respx.mock
def test_snapshot_host_not_allowed(tmp_path: Path) -> None:
    with pytest.raises(DisallowedHost, match=r"evil\.example"):
        client().download_snapshot("https://evil.example/x.zip", temp_dir=tmp_path, max_bytes=10**6)
    assert list(tmp_path.iterdir()) == []


@respx.mock
def test_redirect_to_disallowed_host_refused(tmp_path: Path) -> None:
    link = "https://cti.example.test/store/a.zip"
    respx.get(link).respond(302, headers={"Location": "https://evil.example/a.zip"})
    evil = respx.get("https://evil.example/a.zip").respond(content=b"PK")
    with pytest.raises(DisallowedHost):
        client().download_snapshot(link, temp_dir=tmp_path, max_bytes=10**6)
    assert evil.call_count == 0
    assert list(tmp_path.iterdir()) == []


@respx.mock
def test_download_resumes_with_range_after_a_drop(tmp_path: Path) -> None:
    link = "https://cti.example.test/store/a.zip"
    data = os.urandom(300_000)
    calls: list[str | None] = []

    def serve(request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("Range")
        calls.append(rng)
        if rng is None:
            # Full length announced, connection dropped after 100,000 bytes.
            def body() -> object:
                yield data[:100_000]
                raise httpx.RemoteProtocolError("peer closed connection")

            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=body())  # type: ignore[arg-type]
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
            content=data[start:],
        )

    respx.get(link).mock(side_effect=serve)
    path = client().download_snapshot(link, temp_dir=tmp_path, max_bytes=10**6)
    try:
        assert path.read_bytes() == data
        assert calls == [None, "bytes=100000-"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        path.unlink()


@respx.mock
def test_oversized_archive_refused(tmp_path: Path) -> None:
    link = "https://cti.example.test/store/a.zip"
    respx.get(link).respond(content=b"x" * 5000)
    with pytest.raises(SnapshotError, match="max_archive_bytes"):
        client().download_snapshot(link, temp_dir=tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []
