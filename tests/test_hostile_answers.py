"""Hostile feed answers: each is refused with an error that says what is wrong, and nothing of it
is applied.

Two levels. The CTI client alone at its HTTP edge (respx): the validation matrix, cheap. Then end
to end, real cycles against the real node through a tampering front (`Tamper`) between the
product and the local feed: after a hostile answer the state keeps the offset of the last window
that was written (windows are pipelined: one already fetched may or may not have been), its
status is `failed` with the reason, the content equals the feed's truth at that offset, and the
next clean cycle goes on from there. The oversized answer runs through the real console script,
whose peak memory the kernel reports.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
import yaml
from opensearchpy import OpenSearch

from content_sync.errors import BadFeedAnswer, DisallowedHost
from content_sync.feed import FeedClient
from content_sync.retry import RetryPolicy
from content_sync.runtime import Runtime
from content_sync.settings import CTISettings, Settings
from content_sync.store import FeedState
from content_sync.sync import CycleResult
from content_sync.testing.model import FeedModel
from content_sync.testing.procmem import run_measured
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, clean_env, settings_dict
from tests.reliability import TALLY

pytestmark = pytest.mark.reliability

BASE = "https://cti.example.test/api/v1"
CONSUMER = f"{BASE}/catalog/contexts/vd_1.0.0/consumers/vd_4.8.0"
CHANGES = f"{CONSUMER}/changes"
FAST = RetryPolicy(attempts=2, initial=0.001, max_wait=0.01, budget=5)
MiB = 1024 * 1024
SCRIPT = str(Path(sys.executable).parent / "content-sync")
MAX_RSS_MB = 200


def client(**kw: Any) -> FeedClient:
    return FeedClient(CTISettings(base_url=BASE, **kw), FAST)


def consumer_data(**data: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 4,
        "name": "vd_4.8.0",
        "context": "vd_1.0.0",
        "last_offset": 2000,
        "last_snapshot_link": "https://cti.example.test/store/x/1500_1.zip",
        "last_snapshot_offset": 1500,
    }
    base.update(data)
    return {"data": base}


def change(offset: Any, **extra: Any) -> dict[str, Any]:
    item = {"offset": offset, "type": "delete", "version": 1, "resource": f"CVE-{offset}"}
    item.update(extra)
    return item


def window(low: int, high: int) -> list[dict[str, Any]]:
    return [change(o) for o in range(low + 1, high + 1)]


def ask(feed: FeedClient, url: str) -> object:
    """The request behind `url`: the consumer, or the changes window (10, 20]."""
    if url == CONSUMER:
        return feed.consumer("vd_1.0.0", "vd_4.8.0")
    return feed.changes("vd_1.0.0", "vd_4.8.0", 10, 20)


class Body(httpx.SyncByteStream):
    """A streamed body of `total` bytes in 1 MiB pieces, never built whole; counts what was read."""

    def __init__(self, total: int, piece: bytes = b" ") -> None:
        self.total = total
        self.chunk = piece * MiB
        self.served = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.served < self.total:
            part = self.chunk[: self.total - self.served]
            self.served += len(part)
            yield part


# ------------------------------------------------------------------ the client alone (respx)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (consumer_data(last_offset=-5), "non-negative integer"),
        (consumer_data(last_offset=12.5), "non-negative integer"),
        (consumer_data(last_offset=2000.0), "non-negative integer"),
        (consumer_data(last_offset="2000"), "non-negative integer"),
        (consumer_data(last_offset=[2000]), "non-negative integer"),
        (consumer_data(last_offset=False), "non-negative integer"),
        (consumer_data(last_offset=None), "no last_offset"),
        (consumer_data(last_snapshot_offset=-1), "last_snapshot_offset"),
        (consumer_data(last_snapshot_offset="1500"), "last_snapshot_offset"),
        (consumer_data(last_snapshot_offset=2001), "beyond last_offset"),
        (consumer_data(last_snapshot_link=["https://cti.example.test/x.zip"]), "not a string"),
        # The answer carries the consumer's own name and context: an answer for another one
        # (a misrouting proxy or cache) must not pass for ours.
        (consumer_data(context="vd_9.9.9"), "context 'vd_9.9.9'"),
        (consumer_data(name="vd_4.9.0"), "name 'vd_4.9.0'"),
        ({"data": [consumer_data()["data"]]}, "no 'data' object"),
        ({"errors": {"detail": "Not Found"}}, "no 'data' object"),
        ("2000", "no 'data' object"),
    ],
)
@respx.mock
def test_hostile_consumer_answers_are_refused(body: Any, match: str) -> None:
    respx.get(CONSUMER).respond(json=body)
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match=match):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([change(-3)], "non-negative integer"),
        ([change(12.0)], "non-negative integer"),
        ([change("12")], "non-negative integer"),
        ([change(None)], "non-negative integer"),
        ([change(True)], "non-negative integer"),
        ([change(12), change(11)], "out of order"),
        ([change(12), change(12)], "out of order"),  # the same offset twice
        ([change(10)], "outside the window"),  # from_offset is excluded
        ([change(9)], "outside the window"),
        ([change(1011)], "outside the window"),
        ([change(12, context="vd_2.0.0")], "belongs to context 'vd_2.0.0'"),
        ([change(12, type="upsert")], "unknown type"),
        ([change(12, type=None)], "unknown type"),
        ([change(12, resource=None)], "no resource name"),
        ([change(12, resource=["CVE-1"])], "no resource name"),
        ([change(12, version="3")], "has version"),
        ([change(12, type="create")], "no payload object"),
        ([change(12, type="create", payload=[1])], "no payload object"),
        ([change(12, type="update", operations={"op": "add"})], "no operations list"),
        ([change(12, type="update", operations=["add"])], "no operations list"),
        (["CVE-1"], "not an object"),
        # More changes than the window (10, 1010] can hold: 1001 of them.
        ([*window(10, 1010), change(1010)], "1001 changes cannot fit the window"),
    ],
)
@respx.mock
def test_hostile_change_windows_are_refused(items: list[Any], match: str) -> None:
    respx.get(CHANGES).respond(json={"data": items})
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match=match):
        client().changes("vd_1.0.0", "vd_4.8.0", 10, 1010)


@respx.mock
def test_a_full_window_of_1000_changes_is_accepted() -> None:
    """The bound is the window's width, not less: the valid extreme passes."""
    respx.get(CHANGES).respond(json={"data": window(10, 1010)})
    assert len(client().changes("vd_1.0.0", "vd_4.8.0", 10, 1010)) == 1000


@pytest.mark.parametrize(
    ("content", "ctype", "match"),
    [
        (b'{"data": [{"offset": 11, "type": "delete"', "application/json", "not JSON"),
        (b"", "application/json", "not JSON"),
        (b"<html><body>Scheduled maintenance</body></html>", "text/html", "text/html"),
        (b"data: 11, 12", "text/plain", "text/plain"),
        (b'{"data": [NaN]}', "application/json", "not JSON"),
        (b"\xff\xfe{\x00}\x00", "application/json", "not JSON"),  # UTF-16, not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "not JSON"),
    ],
)
@respx.mock
def test_bodies_that_are_not_json_are_refused(content: bytes, ctype: str, match: str) -> None:
    respx.get(CHANGES).respond(content=content, headers={"Content-Type": ctype})
    respx.get(CONSUMER).respond(content=content, headers={"Content-Type": ctype})
    TALLY["hostile inputs tried"] += 2
    with pytest.raises(BadFeedAnswer, match=match):
        client().changes("vd_1.0.0", "vd_4.8.0", 10, 20)
    with pytest.raises(BadFeedAnswer, match=match):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("url", [CONSUMER, CHANGES])
@respx.mock
def test_oversized_answers_are_refused_without_reading_them_whole(url: str, declared: bool) -> None:
    """80 MB of answer: refused at the cap (read no further), or before reading at all when the
    server announces its length."""
    body = Body(80 * MiB)
    headers = {"Content-Length": str(body.total)} if declared else {}
    respx.get(url).mock(return_value=httpx.Response(200, headers=headers, stream=body))
    feed = client(max_answer_bytes=8 * MiB)
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match=r"cti\.max_answer_bytes \(8388608\)"):
        ask(feed, url)
    assert body.served <= (0 if declared else 9 * MiB)


@respx.mock
def test_a_huge_error_page_is_not_read_whole() -> None:
    body = Body(80 * MiB, b"x")
    respx.get(CHANGES).mock(return_value=httpx.Response(404, stream=body))
    with pytest.raises(BadFeedAnswer, match="feed answered 404") as info:
        client().changes("vd_1.0.0", "vd_4.8.0", 10, 20)
    assert len(str(info.value)) < 1000
    assert body.served <= MiB


@pytest.mark.parametrize("url", [CONSUMER, CHANGES])
@respx.mock
def test_redirect_to_a_host_that_is_not_allowed(url: str) -> None:
    evil = "https://evil.example/api/v1/answer"
    respx.get(url).respond(302, headers={"Location": evil})
    route = respx.get(evil).respond(json=consumer_data())
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(DisallowedHost, match=r"'evil\.example' is not in cti\.allowed_hosts"):
        ask(client(), url)
    assert route.call_count == 0


@respx.mock
def test_redirect_within_the_allowed_host_is_followed() -> None:
    moved = f"{BASE}/v2/consumer"
    respx.get(CONSUMER).respond(301, headers={"Location": moved})
    respx.get(moved).respond(json=consumer_data())
    assert client().consumer("vd_1.0.0", "vd_4.8.0").last_offset == 2000


@respx.mock
def test_redirect_loop_is_a_clear_error() -> None:
    respx.get(CONSUMER).respond(302, headers={"Location": CONSUMER})
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match="redirect"):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@respx.mock
def test_undecodable_content_encoding_is_a_clear_error() -> None:
    garbage = httpx.ByteStream(b"this is not gzip")  # a stream: respx would decode content
    respx.get(CONSUMER).mock(
        return_value=httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=garbage)
    )
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match="decod"):
        client().consumer("vd_1.0.0", "vd_4.8.0")


@pytest.mark.parametrize(
    ("link", "error", "match"),
    [
        ("https://evil.example/store/1500_1.zip", DisallowedHost, "not in cti.allowed_hosts"),
        ("https://cti.example.test.evil.example/a.zip", DisallowedHost, "not in cti.allowed"),
        ("https://user@evil.example/a.zip", DisallowedHost, "not in cti.allowed_hosts"),
        ("file:///etc/passwd", BadFeedAnswer, "not an http"),
        ("ftp://cti.example.test/a.zip", BadFeedAnswer, "not an http"),
        ("/store/a.zip", BadFeedAnswer, "not an http"),
    ],
)
@respx.mock
def test_snapshot_links_that_lead_elsewhere(
    tmp_path: Path, link: str, error: type[Exception], match: str
) -> None:
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(error, match=match):
        client().download_snapshot(link, temp_dir=tmp_path, max_bytes=10**6)
    assert list(tmp_path.iterdir()) == []
    assert not respx.calls


@pytest.mark.parametrize(
    ("ctype", "content"),
    [
        ("text/html; charset=utf-8", b"<html><body>Please log in to the proxy</body></html>"),
        ("application/json", b'{"errors": {"detail": "Not Found"}}'),
    ],
)
@respx.mock
def test_snapshot_answered_with_a_page_instead_of_a_zip(
    tmp_path: Path, ctype: str, content: bytes
) -> None:
    link = "https://cti.example.test/store/a.zip"
    respx.get(link).respond(content=content, headers={"Content-Type": ctype})
    TALLY["hostile inputs tried"] += 1
    with pytest.raises(BadFeedAnswer, match="not a zip archive"):
        client().download_snapshot(link, temp_dir=tmp_path, max_bytes=10**6)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ end to end


Answer = tuple[int, dict[str, str], bytes | Iterator[bytes]]
Rule = Callable[[str, int, dict[str, str], Callable[[], bytes]], Answer | None]


class Tamper:
    """An HTTP front on 127.0.0.1 for a FeedServer: passes every request through, except those
    for which `rule(kind, n, query, upstream)` returns an answer (`n` counts requests of that
    kind since the rule was set; `upstream()` fetches the true body)."""

    def __init__(self, upstream: FeedServer) -> None:
        self.upstream = upstream
        self.rule: Rule | None = None
        self.counts: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = f"{self.origin}/api/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arm(self, rule: Rule | None) -> None:
        self.counts.clear()
        self.rule = rule

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fetch(self, path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=30)
        try:
            conn.request("GET", path)
            got = conn.getresponse()
            return got.status, got.getheader("Content-Type", ""), got.read()
        finally:
            conn.close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        kind = (
            "changes"
            if url.path.endswith("/changes")
            else "snapshot"
            if url.path.startswith("/store/")
            else "consumer"
        )
        self.counts[kind] += 1
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        answer = None
        if self.rule is not None:
            answer = self.rule(kind, self.counts[kind], query, lambda: self._fetch(handler.path)[2])
        if answer is None:
            status, ctype, body = self._fetch(handler.path)
            answer = (status, {"Content-Type": ctype}, body)
        status, headers, content = answer
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            if isinstance(content, bytes):
                handler.send_header("Content-Length", str(len(content)))
                handler.end_headers()
                handler.wfile.write(content)
                return
            handler.send_header("Connection", "close")  # the body ends when the connection does
            handler.end_headers()
            handler.close_connection = True
            for piece in content:
                handler.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client refused to read on: as it should


@dataclass
class Live:
    """One feed kept in sync by the real product through the tampering front."""

    model: FeedModel
    server: FeedServer
    tamper: Tamper
    runtime: Runtime
    client: OpenSearch
    config: Path

    @property
    def alias(self) -> str:
        return self.runtime.settings.feed(FEED).index

    def state(self) -> FeedState:
        state = self.runtime.store.peek_state(self.runtime.settings.feed(FEED).state_id)
        assert state is not None
        return state

    def cycle(self, *, resync: bool = False) -> CycleResult:
        return self.runtime.feed_sync(FEED).run_cycle(resync=resync)

    def in_sync(self, *, compare: bool = False) -> int:
        """A clean cycle (no tampering): ok and at the head (content compared with the truth
        on request: each case compares once, right after its hostile cycle)."""
        self.tamper.arm(None)
        result = self.cycle()
        head = self.model.head_offset
        assert result.outcome == "ok" and result.after == head, result.error
        if compare:
            compare_with_truth(self.client, self.alias, self.model, head)
        return head

    def ready(self) -> int:
        """The offset a case starts from: the head, in sync (as the previous case left it)."""
        state = self.state()
        if state.status != "ready" or state.local_offset != self.model.head_offset:
            return self.in_sync()
        return state.local_offset


def compare_with_truth(client: OpenSearch, alias: str, model: FeedModel, offset: int) -> None:
    """assert_matches_truth, tallied: documents compared, and any difference as corruption."""
    try:
        TALLY["documents compared"] += assert_matches_truth(client, alias, model, offset)
    except AssertionError:
        TALLY["lost/duplicated/corrupted"] += 1
        raise


@pytest.fixture(scope="module")
def live(
    _feed_model_template: FeedModel,
    tmp_path_factory: pytest.TempPathFactory,
    opensearch_url: str,
    os_client: OpenSearch,
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("hostile-answers")
    model = _feed_model_template.clone(root / "feed")
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    (root / "tmp").mkdir()
    with FeedServer(model) as server:
        tamper = Tamper(server)
        data = settings_dict(server, opensearch_url, prefix, root / "tmp", sync={"batch_size": 100})
        data["cti"]["base_url"] = tamper.base_url
        data["command_manager"]["enabled"] = False
        data["retry"] = {"attempts": 2, "initial": 0.01, "max_wait": 0.05, "budget": 5}
        config = root / "settings.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        runtime = Runtime(Settings.model_validate(data))
        feed = Live(model, server, tamper, runtime, os_client, config)
        try:
            feed.in_sync(compare=True)
            yield feed
        finally:
            runtime.close()
            tamper.close()
            os_client.indices.delete(
                index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all"
            )
            model.close()


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _items(upstream: Callable[[], bytes]) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(upstream())["data"]
    return data


def _reverse(upstream: Callable[[], bytes], query: dict[str, str]) -> Answer:
    return 200, {"Content-Type": "application/json"}, _json({"data": _items(upstream)[::-1]})


def _other_context(upstream: Callable[[], bytes], query: dict[str, str]) -> Answer:
    items = _items(upstream)
    items[len(items) // 2]["context"] = "vd_0.9.0"
    return 200, {"Content-Type": "application/json"}, _json({"data": items})


def _overfull(upstream: Callable[[], bytes], query: dict[str, str]) -> Answer:
    items = _items(upstream)
    return 200, {"Content-Type": "application/json"}, _json({"data": items + items[-1:]})


def _html(upstream: Callable[[], bytes], query: dict[str, str]) -> Answer:
    page = b"<html><head><title>503</title></head><body>maintenance</body></html>"
    return 200, {"Content-Type": "text/html"}, page


CHANGE_ATTACKS: dict[str, tuple[Callable[[Callable[[], bytes], dict[str, str]], Answer], str]] = {
    "backwards": (_reverse, "out of order"),
    "other-context": (_other_context, "belongs to context 'vd_0.9.0'"),
    "overfull-window": (_overfull, "cannot fit the window"),
    "html-page": (_html, "text/html"),
}


@pytest.mark.parametrize("attack", sorted(CHANGE_ATTACKS))
def test_hostile_window_mid_catch_up_keeps_the_content_true(live: Live, attack: str) -> None:
    """Windows of 100; the second window of the catch-up is hostile. Nothing of it lands; the
    first is recorded if its write got under way before the refusal (windows are pipelined), and
    either way the content equals the feed's truth at the recorded offset. The next clean cycle
    finishes the catch-up."""
    make, match = CHANGE_ATTACKS[attack]
    before = live.ready()
    index = live.state().index
    live.model.append_changes(250)
    second = str(before + 100)

    def rule(kind: str, n: int, query: dict[str, str], up: Callable[[], bytes]) -> Answer | None:
        hostile = kind == "changes" and query.get("from_offset") == second
        return make(up, query) if hostile else None

    live.tamper.arm(rule)
    TALLY["hostile inputs tried"] += 1

    result = live.cycle()

    assert result.outcome == "failed" and match in (result.error or ""), result.error
    state = live.state()
    assert state.local_offset in (before, before + 100) and state.status == "failed"
    assert state.last_error and match in state.last_error
    assert state.index == index and list(live.client.indices.get_alias(name=live.alias)) == [index]
    compare_with_truth(live.client, live.alias, live.model, state.local_offset)
    live.in_sync()


def _consumer(change: Callable[[dict[str, Any]], None]) -> Rule:
    def rule(kind: str, n: int, query: dict[str, str], up: Callable[[], bytes]) -> Answer | None:
        if kind != "consumer":
            return None
        body = json.loads(up())
        change(body["data"])
        return 200, {"Content-Type": "application/json"}, _json(body)

    return rule


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.update(values)


@pytest.mark.parametrize(
    ("attack", "edit", "match"),
    [
        ("other-context", _set(context="vd_0.9.0"), "context 'vd_0.9.0'"),
        ("other-consumer", _set(name="vd_3.0.0"), "name 'vd_3.0.0'"),
        ("string-offset", _set(last_offset="99999"), "non-negative integer"),
    ],
)
def test_hostile_consumer_answer_applies_nothing(
    live: Live, attack: str, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    before = live.ready()
    live.model.append_changes(150)
    live.tamper.arm(_consumer(edit))
    TALLY["hostile inputs tried"] += 1

    result = live.cycle()

    assert result.outcome == "failed" and match in (result.error or ""), result.error
    assert not live.tamper.counts["changes"] and not live.tamper.counts["snapshot"]
    state = live.state()
    assert state.local_offset == before and state.status == "failed"
    assert state.last_error and match in state.last_error
    compare_with_truth(live.client, live.alias, live.model, before)
    live.in_sync()


def _snapshot_link(link: str) -> Rule:
    return _consumer(_set(last_snapshot_link=link))


@pytest.mark.parametrize("attack", ["other-host", "redirect-to-other-host", "html-instead-of-zip"])
def test_hostile_snapshot_link_changes_nothing(live: Live, attack: str) -> None:
    """A re-initialisation whose snapshot leads elsewhere, or is not a zip: the live index, its
    content and the offset stay; no half-built index, no file left."""
    before = live.ready()
    index = live.state().index
    name = live.model.snapshot_name
    real = f"/store/contexts/{live.model.context}/consumers/{live.model.consumer}/{name}"
    elsewhere = f"http://localhost:{live.server.port}{real}"  # same server, another host name
    match = "not in cti.allowed_hosts"
    if attack == "other-host":
        rule = _snapshot_link(elsewhere)
    else:
        link_rule = _snapshot_link(f"{live.tamper.origin}{real}")

        def rule(
            kind: str, n: int, query: dict[str, str], up: Callable[[], bytes]
        ) -> Answer | None:
            if kind == "snapshot" and attack == "redirect-to-other-host":
                return 302, {"Location": elsewhere}, b""
            if kind == "snapshot":
                return 200, {"Content-Type": "text/html"}, b"<html>Sign in to continue</html>"
            return link_rule(kind, n, query, up)

        if attack == "html-instead-of-zip":
            match = "not a zip archive"
    live.tamper.arm(rule)
    snapshots_served = len(live.server.requests_of("snapshot"))
    TALLY["hostile inputs tried"] += 1

    result = live.cycle(resync=True)

    assert result.outcome == "failed" and match in (result.error or ""), result.error
    assert len(live.server.requests_of("snapshot")) == snapshots_served  # never fetched
    state = live.state()
    assert (state.local_offset, state.status, state.index) == (before, "failed", index)
    assert sorted(live.client.indices.get(index=f"{live.alias}.v*")) == [index]
    assert list((live.config.parent / "tmp").iterdir()) == []
    compare_with_truth(live.client, live.alias, live.model, before)
    live.in_sync()


def test_oversized_changes_answer_keeps_memory_bounded(live: Live, tmp_path: Path) -> None:
    """The real console script against a changes answer of 300 MB that announces no length: it
    stops reading at cti.max_answer_bytes (64 MiB by default), says so, applies nothing, and its
    peak memory stays far below the answer's size."""
    before = live.ready()
    live.model.append_changes(50)
    sent = Counter[str]()

    def flood() -> Iterator[bytes]:
        yield b'{"data": [{"offset": %d, "type": "create", "version": 1, "resource": "CVE-X", ' % (
            before + 1
        )
        yield b'"payload": {"blob": "'
        piece = b"A" * MiB
        for _ in range(300):
            sent["bytes"] += len(piece)
            yield piece
        yield b'"}}]}'

    def rule(kind: str, n: int, query: dict[str, str], up: Callable[[], bytes]) -> Answer | None:
        return (200, {"Content-Type": "application/json"}, flood()) if kind == "changes" else None

    live.tamper.arm(rule)
    TALLY["hostile inputs tried"] += 1

    run = run_cli("sync", "--config", str(live.config), workdir=tmp_path)

    assert run.code == 1 and "cti.max_answer_bytes (67108864)" in run.stderr, run.stderr[-2000:]
    assert run.peak_mb < MAX_RSS_MB, f"peak RSS {run.peak_mb:.0f} MB"
    assert sent["bytes"] < 100 * MiB  # the rest was never read
    state = live.state()
    assert (state.local_offset, state.status) == (before, "failed")
    compare_with_truth(live.client, live.alias, live.model, before)
    live.in_sync()


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float


def run_cli(*args: str, workdir: Path, env: dict[str, str] | None = None) -> CliRun:
    """The real console script as a subprocess, with its own peak RSS (procmem). Output goes to
    files: a pipe would need reading while it runs."""
    out, err = workdir / "cli.out", workdir / "cli.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        run = run_measured([SCRIPT, *args], stdout=fout, stderr=ferr, env=clean_env(**(env or {})))
    return CliRun(
        code=run.returncode,
        stdout=out.read_text(errors="replace"),
        stderr=err.read_text(errors="replace"),
        peak_mb=run.peak_rss_mb,
        seconds=run.seconds,
    )
