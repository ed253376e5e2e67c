"""The HTTP feed against the wire contract of docs/cti-api.md, faults included."""

from __future__ import annotations

import email.utils
import io
import json
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonpatch
import jsonpointer
import pytest

from content_sync.testing.model import FeedModel
from content_sync.testing.replay import apply_changes, fetch_changes, load_snapshot
from content_sync.testing.server import FeedServer


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _changes(client: httpx.Client, server: FeedServer, **params: Any) -> httpx.Response:
    return client.get(server.changes_url, params=params)


def _link(client: httpx.Client, server: FeedServer) -> str:
    return str(client.get(server.consumer_url).json()["data"]["last_snapshot_link"])


# ---------------------------------------------------------------------- consumer endpoint


def test_consumer_shape(feed_server: FeedServer, client: httpx.Client) -> None:
    resp = client.get(feed_server.consumer_url)
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["data"]
    data = body["data"]
    assert list(data) == [
        "id",
        "name",
        "context",
        "operations",
        "inserted_at",
        "updated_at",
        "changes_url",
        "last_offset",
        "last_snapshot_at",
        "last_snapshot_link",
        "last_snapshot_offset",
        "paths_filter",
    ]
    model = feed_server.model
    assert data["name"] == "vd_4.8.0"
    assert data["context"] == "vd_1.0.0"
    assert data["operations"] is None
    assert data["paths_filter"] is None
    assert data["last_offset"] == model.head_offset
    assert data["last_snapshot_offset"] == model.snapshot_offset
    assert data["changes_url"] == feed_server.changes_url.removeprefix("http://")
    assert data["last_snapshot_link"] == (
        f"http://127.0.0.1:{feed_server.port}/store/contexts/vd_1.0.0/consumers/vd_4.8.0/"
        f"{model.snapshot_name}"
    )
    for key in ("inserted_at", "updated_at", "last_snapshot_at"):
        datetime.strptime(data[key], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_unknown_context_or_consumer_is_404(feed_server: FeedServer, client: httpx.Client) -> None:
    base = feed_server.base_url
    assert client.get(f"{base}/catalog/contexts/vd_9/consumers/vd_4.8.0").status_code == 404
    assert client.get(f"{base}/catalog/contexts/vd_1.0.0/consumers/nope").status_code == 404
    assert (
        client.get(
            f"{base}/catalog/contexts/vd_1.0.0/consumers/nope/changes",
            params={"from_offset": 0, "to_offset": 5},
        ).status_code
        == 404
    )
    store = feed_server.snapshot_url().rsplit("/", 1)[0]
    assert client.get(f"{store}/1_1.zip").status_code == 404


def test_consumer_follows_model_changes(feed_server: FeedServer, client: httpx.Client) -> None:
    head = feed_server.model.append_changes(25)
    data = client.get(feed_server.consumer_url).json()["data"]
    assert data["last_offset"] == head
    assert data["last_snapshot_offset"] == head - 25
    feed_server.model.publish_snapshot()
    data = client.get(feed_server.consumer_url).json()["data"]
    assert data["last_snapshot_offset"] == head
    assert data["last_snapshot_link"].endswith(feed_server.model.snapshot_name)
    # A test may swap the whole model.
    feed_server.model = FeedModel(resources=40, seed=5, workdir=feed_server.model.workdir / "b")
    assert client.get(feed_server.consumer_url).json()["data"]["last_offset"] == 40


def test_snapshot_host_override(feed_model: FeedModel, client: httpx.Client) -> None:
    with FeedServer(feed_model, snapshot_host="localhost") as server:
        link = _link(client, server)
        assert link.startswith(f"http://localhost:{server.port}/store/")
        assert client.get(link.replace("localhost", "127.0.0.1")).status_code == 200


# ---------------------------------------------------------------------- changes endpoint


@pytest.mark.parametrize(
    ("low", "high"), [(0, 1), (0, 1000), (1234, 2234), (2799, 2800), (500, 501), (999, 1500)]
)
def test_window_is_exactly_from_exclusive_to_inclusive(
    feed_server: FeedServer, client: httpx.Client, low: int, high: int
) -> None:
    resp = _changes(client, feed_server, from_offset=low, to_offset=high)
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert [c["offset"] for c in data] == list(range(low + 1, high + 1))
    assert data == feed_server.model.changes(low, high)


def test_window_beyond_head_returns_what_exists(
    feed_server: FeedServer, client: httpx.Client
) -> None:
    head = feed_server.model.head_offset
    data = _changes(client, feed_server, from_offset=head - 2, to_offset=head + 900).json()["data"]
    assert [c["offset"] for c in data] == [head - 1, head]
    assert _changes(client, feed_server, from_offset=head, to_offset=head + 10).json() == {
        "data": []
    }


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        (
            {"from_offset": 0, "to_offset": 1001},
            {"to_offset": ["range exceeds maximum of 1000 changes"]},
        ),
        ({"from_offset": 10, "to_offset": 10}, {"to_offset": ["must be greater than from_offset"]}),
        ({"from_offset": 11, "to_offset": 10}, {"to_offset": ["must be greater than from_offset"]}),
        ({"to_offset": 10}, {"from_offset": ["can't be blank"]}),
        ({}, {"from_offset": ["can't be blank"], "to_offset": ["can't be blank"]}),
        ({"from_offset": "abc", "to_offset": 10}, {"from_offset": ["is invalid"]}),
        ({"from_offset": "1.5", "to_offset": 10}, {"from_offset": ["is invalid"]}),
        (
            {"from_offset": -1, "to_offset": 10},
            {"from_offset": ["must be greater than or equal to 0"]},
        ),
        (
            {"from_offset": 0, "to_offset": 10, "with_empties": "maybe"},
            {"with_empties": ["is invalid"]},
        ),
    ],
)
def test_bad_windows_are_422(
    feed_server: FeedServer,
    client: httpx.Client,
    params: dict[str, Any],
    errors: dict[str, list[str]],
) -> None:
    resp = _changes(client, feed_server, **params)
    assert resp.status_code == 422
    assert resp.json() == {"errors": errors}


def test_page_limit_is_configurable(feed_model: FeedModel, client: httpx.Client) -> None:
    with FeedServer(feed_model, page_limit=100) as server:
        assert _changes(client, server, from_offset=0, to_offset=100).status_code == 200
        resp = _changes(client, server, from_offset=0, to_offset=101)
        assert resp.json() == {"errors": {"to_offset": ["range exceeds maximum of 100 changes"]}}


def test_with_empties_false_leaves_holes(feed_server: FeedServer, client: httpx.Client) -> None:
    full = _changes(client, feed_server, from_offset=300, to_offset=1300).json()["data"]
    lean = _changes(
        client, feed_server, from_offset=300, to_offset=1300, with_empties="false"
    ).json()["data"]
    assert (
        _changes(client, feed_server, from_offset=300, to_offset=1300, with_empties="true").json()[
            "data"
        ]
        == full
    )
    empties = [c for c in full if c["type"] == "update" and not c["operations"]]
    assert len(empties) > 10
    assert len(lean) == len(full) - len(empties) <= 1000
    assert all(c["type"] != "update" or c["operations"] for c in lean)


# ---------------------------------------------------------------------- snapshot download


def test_snapshot_download_layout(feed_server: FeedServer, client: httpx.Client) -> None:
    resp = client.get(_link(client, feed_server))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/zip"
    assert resp.headers["accept-ranges"] == "bytes"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.content == feed_server.model.snapshot_path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        (info,) = zf.infolist()
        offset, ts = feed_server.model.snapshot_name.removesuffix(".zip").split("_")
        assert info.filename == f"vd_1.0.0_vd_4.8.0_{offset}_{ts}.json"
        assert zf.testzip() is None


def test_key_snapshot_then_changes_over_http_equals_truth(
    feed_server: FeedServer, client: httpx.Client
) -> None:
    """Snapshot at S + every change in (S, head] applied with jsonpatch == truth at head."""
    model = feed_server.model
    snap_offset = model.snapshot_offset
    head = model.append_changes(2300)  # the snapshot now lags behind by 2,300 changes
    data = client.get(feed_server.consumer_url).json()["data"]
    assert data["last_offset"] == head
    assert data["last_snapshot_offset"] == snap_offset
    state = load_snapshot(client.get(data["last_snapshot_link"]).content)
    apply_changes(state, fetch_changes(client, feed_server.consumer_url, snap_offset, head))
    assert state == dict(model.truth())


def test_key_empty_state_then_all_changes_over_http_equals_truth(
    feed_server: FeedServer, client: httpx.Client
) -> None:
    model = feed_server.model
    state = apply_changes({}, fetch_changes(client, feed_server.consumer_url, 0, model.head_offset))
    assert state == dict(model.truth())


def test_without_empties_only_offsets_and_versions_lag(
    feed_server: FeedServer, client: httpx.Client
) -> None:
    model = feed_server.model
    state = apply_changes(
        {},
        fetch_changes(client, feed_server.consumer_url, 0, model.head_offset, with_empties=False),
    )
    truth = dict(model.truth())
    assert {k: v["document"] for k, v in state.items()} == {
        k: v["document"] for k, v in truth.items()
    }
    lagging = [k for k in truth if state[k]["offset"] != truth[k]["offset"]]
    assert lagging
    assert all(model.is_empty(truth[k]["offset"]) for k in lagging)


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=100-", 100, None),
        ("bytes=0-0", 0, 0),
        ("bytes=10-99", 10, 99),
        ("bytes=5-999999999", 5, None),
    ],
)
def test_range_requests(
    feed_server: FeedServer, client: httpx.Client, header: str, first: int, last: int | None
) -> None:
    full = feed_server.model.snapshot_path.read_bytes()
    end = len(full) - 1 if last is None else last
    resp = client.get(_link(client, feed_server), headers={"Range": header})
    assert resp.status_code == 206
    assert resp.headers["content-range"] == f"bytes {first}-{end}/{len(full)}"
    assert resp.content == full[first : end + 1]


def test_range_unsatisfiable_and_disabled(feed_server: FeedServer, client: httpx.Client) -> None:
    size = feed_server.model.snapshot_path.stat().st_size
    link = _link(client, feed_server)
    resp = client.get(link, headers={"Range": f"bytes={size}-"})
    assert resp.status_code == 416
    assert resp.headers["content-range"] == f"bytes */{size}"
    feed_server.range_support = False
    resp = client.get(link, headers={"Range": "bytes=100-"})
    assert resp.status_code == 200
    assert len(resp.content) == size
    assert resp.headers["accept-ranges"] == "none"


def test_resume_after_drop_with_range(feed_server: FeedServer, client: httpx.Client) -> None:
    link = _link(client, feed_server)
    full = feed_server.model.snapshot_path.read_bytes()
    feed_server.inject("drop", on="snapshot")
    got = bytearray()

    def download() -> None:
        with client.stream("GET", link) as resp:
            assert int(resp.headers["content-length"]) == len(full)
            for chunk in resp.iter_raw():
                got.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        download()
    assert 0 < len(got) < len(full)
    resp = client.get(link, headers={"Range": f"bytes={len(got)}-"})
    assert resp.status_code == 206
    assert bytes(got) + resp.content == full


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("429", 429),
        ("429-zero", 429),
        ("500-ratelimit", 500),
        ("502", 502),
        ("503", 503),
        ("500", 500),
    ],
)
def test_status_faults_are_consumed_once(
    feed_server: FeedServer, client: httpx.Client, fault: str, status: int
) -> None:
    feed_server.inject(fault)
    resp = client.get(feed_server.consumer_url)
    assert resp.status_code == status
    if fault == "429":
        assert resp.headers["retry-after"] == "1"
    if fault == "429-zero":
        assert resp.headers["retry-after"] == "0"
    if fault == "500-ratelimit":
        assert "rate limit" in resp.text.lower()
    assert client.get(feed_server.consumer_url).status_code == 200
    assert [r.fault for r in feed_server.requests[-2:]] == [fault, None]
    assert [r.status for r in feed_server.requests[-2:]] == [status, 200]


def test_429_with_http_date(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.inject("429-date")
    resp = client.get(feed_server.consumer_url)
    assert resp.status_code == 429
    when = email.utils.parsedate_to_datetime(resp.headers["retry-after"])
    ahead = (when - datetime.now(UTC)).total_seconds()
    assert 0 < ahead <= 2.1


def test_fault_targets_and_times(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.inject("503", on="changes", times=2)
    assert client.get(feed_server.consumer_url).status_code == 200
    assert _changes(client, feed_server, from_offset=0, to_offset=5).status_code == 503
    assert _changes(client, feed_server, from_offset=0, to_offset=5).status_code == 503
    assert _changes(client, feed_server, from_offset=0, to_offset=5).status_code == 200
    feed_server.inject("502", times=3)
    feed_server.clear_faults()
    assert client.get(feed_server.consumer_url).status_code == 200
    with pytest.raises(ValueError, match="unknown fault"):
        feed_server.inject("418")
    with pytest.raises(ValueError, match="unknown target"):
        feed_server.inject("502", on="everything")


def test_drop_without_answer(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.inject("drop", on="changes")
    with pytest.raises(httpx.RemoteProtocolError):
        _changes(client, feed_server, from_offset=0, to_offset=5)
    assert feed_server.requests[-1].status == 0
    assert _changes(client, feed_server, from_offset=0, to_offset=5).status_code == 200
    feed_server.inject("reset", on="consumer")
    with pytest.raises(httpx.TransportError):
        client.get(feed_server.consumer_url)
    assert client.get(feed_server.consumer_url).status_code == 200


def test_slow_answer_exceeds_client_timeout(feed_server: FeedServer) -> None:
    feed_server.inject("slow", delay=1.5, on="consumer")
    started = time.monotonic()
    with httpx.Client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(feed_server.consumer_url)
    assert time.monotonic() - started < 1.4
    with httpx.Client(timeout=5) as patient:
        feed_server.inject("slow", delay=0.3)
        started = time.monotonic()
        assert patient.get(feed_server.consumer_url).status_code == 200
        assert time.monotonic() - started >= 0.3


def test_truncated_zip(feed_server: FeedServer, client: httpx.Client) -> None:
    link = _link(client, feed_server)
    feed_server.inject("truncated-zip", on="any")
    # Snapshot-only faults never fire on API calls.
    assert client.get(feed_server.consumer_url).status_code == 200
    resp = client.get(link)
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) == len(resp.content)
    full = feed_server.model.snapshot_path.read_bytes()
    assert len(resp.content) < len(full)
    assert full.startswith(resp.content)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(resp.content))
    assert client.get(link).content == full


def test_bad_crc(feed_server: FeedServer, client: httpx.Client) -> None:
    model = feed_server.model
    feed_server.inject("bad-crc", on="snapshot")
    content = client.get(_link(client, feed_server)).content
    lines: list[Any] = []

    def read_all(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        with zf.open(info) as member:
            lines.extend(json.loads(line) for line in member)  # every line still parses

    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        (info,) = zf.infolist()
        assert model.snapshot is not None
        assert info.file_size == model.snapshot.member_size
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            read_all(zf, info)
    assert len(lines) >= model.snapshot_lines - 1
    # Built once, reused.
    assert model.variant("bad-crc") == model.variant("bad-crc")


def test_malformed_line(feed_server: FeedServer, client: httpx.Client) -> None:
    model = feed_server.model
    feed_server.inject("malformed-line", on="snapshot")
    content = client.get(_link(client, feed_server)).content
    bad = 0
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        assert zf.testzip() is None  # the archive itself is sound
        (info,) = zf.infolist()
        with zf.open(info) as member:
            lines = member.read().splitlines()
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad += 1
    assert bad == 1
    assert len(lines) == model.snapshot_lines


def test_bad_patch_over_http(feed_server: FeedServer, client: httpx.Client) -> None:
    model = feed_server.model
    offset = model.append_bad_patch()
    (change,) = _changes(client, feed_server, from_offset=offset - 1, to_offset=offset).json()[
        "data"
    ]
    state = load_snapshot(client.get(_link(client, feed_server)).content)
    apply_changes(
        state, fetch_changes(client, feed_server.consumer_url, model.snapshot_offset, offset - 1)
    )
    with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
        apply_changes(state, [change])


def test_rebuilt_feed_has_lower_offset(feed_server: FeedServer, client: httpx.Client) -> None:
    before = client.get(feed_server.consumer_url).json()["data"]["last_offset"]
    feed_server.model.rebuild(resources=100, seed=4)
    data = client.get(feed_server.consumer_url).json()["data"]
    assert data["last_offset"] == 100 < before
    assert data["last_snapshot_offset"] == 100
    state = load_snapshot(client.get(data["last_snapshot_link"]).content)
    assert state == dict(feed_server.model.truth())


def test_requests_are_recorded(feed_server: FeedServer, client: httpx.Client) -> None:
    client.get(feed_server.consumer_url, headers={"User-Agent": "content-sync/0.1.0"})
    _changes(client, feed_server, from_offset=3, to_offset=9, with_empties="false")
    consumer, changes = feed_server.requests[-2:]
    assert consumer.kind == "consumer"
    assert consumer.headers["User-Agent"] == "content-sync/0.1.0"
    assert consumer.headers.get("user-agent") == "content-sync/0.1.0"
    assert "USER-AGENT" in consumer.headers
    assert changes.kind == "changes"
    assert changes.query == {"from_offset": "3", "to_offset": "9", "with_empties": "false"}
    assert changes.status == 200
    assert changes.method == "GET"


def test_urls_before_start_and_restart(feed_model: FeedModel, client: httpx.Client) -> None:
    server = FeedServer(feed_model)
    url = server.consumer_url  # known before start: the socket is bound at construction
    assert (
        server.command_url == f"http://127.0.0.1:{server.port}/_plugins/_command_manager/commands"
    )
    with server:
        assert client.get(url).status_code == 200
    with pytest.raises(httpx.TransportError):
        client.get(url)
    with server:  # restarts on the same port
        assert server.consumer_url == url
        assert client.get(url).status_code == 200
