"""Bulk writes and multi-gets go through the connection directly, not through the client's
request method (Store._post_bytes): a host that refuses connections or answers 502/503/504 is
skipped for a while, as the client would, and an answer that is not JSON is a clear error."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.errors import Stopped, StoreError, TransientError
from content_sync.lazydoc import decoded
from content_sync.retry import RetryPolicy
from content_sync.settings import OpenSearchSettings
from content_sync.snapshot import content_source
from content_sync.store import CONTENT_MAPPING, BulkOp, Store, make_client


@pytest.mark.parametrize("failure", ["refused", "503"])
def test_a_dead_host_is_skipped_after_its_first_failure(
    os_client: OpenSearch, opensearch_url: str, prefix: str, failure: str
) -> None:
    with contextlib.ExitStack() as stack:
        dead = (
            "http://127.0.0.1:9"
            if failure == "refused"
            else stack.enter_context(serving(lambda _p, _b: (503, b'{"error":"unavailable"}')))
        )
        _write_and_read_through(os_client, opensearch_url, prefix, dead)


def _write_and_read_through(os_client: OpenSearch, url: str, prefix: str, dead: str) -> None:
    index = f"{prefix}-hosts"
    os_client.indices.create(index=index, body={"mappings": CONTENT_MAPPING})
    retried: list[TransientError] = []
    settings = OpenSearchSettings(hosts=[dead, url])
    store = Store(
        make_client(settings),
        settings,
        RetryPolicy(attempts=3, initial=0.001, max_wait=0.01, budget=10, on_retry=retried.append),
    )
    expected: dict[str, dict[str, object]] = {}
    for i in range(10):
        name = f"CVE-2026-{i:04d}"
        source = b'{"offset":%d,"version":1,"document":{"n":%d}}' % (i + 1, i)
        store.write(index, [("index", name, source, i + 1)])
        expected[name] = {"offset": i + 1, "version": 1, "document": {"n": i}}
        got = store.mget(index, [name])
        assert {k: decoded(v) for k, v in got.items()} == {name: expected[name]}
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 20})["hits"]["hits"]
    assert {h["_id"]: h["_source"] for h in hits} == expected
    # Round robin over [dead, live] without marking the dead one would fail every other request.
    assert len(retried) <= 1, [str(e) for e in retried]


Answer = Callable[[str, bytes], tuple[int, bytes]]


@contextlib.contextmanager
def serving(answer: Answer) -> Iterator[str]:
    """A stand-in node on loopback: every POST (path, body) gets `answer`'s (status, body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            status, reply = answer(self.path, self.rfile.read(int(self.headers["content-length"])))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def bulk_items(body: bytes) -> list[tuple[bytes, bytes]]:
    """(action line, source line) pairs of an NDJSON bulk body of index actions."""
    lines = body.splitlines(keepends=True)
    return [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]


def test_a_bulk_answer_that_is_not_json_is_a_clear_error() -> None:
    with serving(lambda _path, _body: (200, b"<html>proxy error</html>")) as url:
        settings = OpenSearchSettings(hosts=[url])
        store = Store(make_client(settings), settings, RetryPolicy(attempts=1))
        with pytest.raises(StoreError, match=r"bulk answer not understood.*proxy error"):
            store.write("content", [("index", "CVE-1", b'{"offset":1}', 1)])


class RejectingProxy:
    """In front of the real node: the first time a bulk request carries a document whose number
    is odd, that item is not forwarded and is answered 429 (the node's queue is full), as the
    node answers items it rejects; everything else goes to the node as sent."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.bulk_bodies: list[bytes] = []
        self.rejected: set[str] = set()
        self._lock = threading.Lock()

    def answer(self, path: str, body: bytes) -> tuple[int, bytes]:
        return self.bulk(path, body) if path.startswith("/_bulk") else self.forward(path, body)

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.node + path, body, {"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def bulk(self, path: str, body: bytes) -> tuple[int, bytes]:
        keep: list[bytes] = []
        outcome: list[dict[str, Any] | None] = []
        with self._lock:
            self.bulk_bodies.append(body)
            for action, source in bulk_items(body):
                name = json.loads(action)["index"]["_id"]
                if int(name.rsplit("-", 1)[1]) % 2 and name not in self.rejected:
                    self.rejected.add(name)
                    outcome.append({"index": {"status": 429, "error": {"type": "rejected"}}})
                else:
                    keep.append(action + source)
                    outcome.append(None)
        forwarded: list[Any] = []
        if keep:
            status, answer = self.forward(path, b"".join(keep))
            assert status == 200, answer
            forwarded = json.loads(answer).get("items", [{"index": {"status": 201}}] * len(keep))
        node = iter(forwarded)
        merged = [o if o is not None else next(node) for o in outcome]
        return 200, json.dumps({"errors": True, "items": merged}).encode()


def test_bulk_items_rejected_with_429_are_sent_again_alone_and_land(
    os_client: OpenSearch, opensearch_url: str, prefix: str
) -> None:
    index = f"{prefix}-rejected"
    os_client.indices.create(index=index, body={"mappings": CONTENT_MAPPING})
    proxy = RejectingProxy(opensearch_url)
    with serving(proxy.answer) as url:
        settings = OpenSearchSettings(hosts=[url], bulk_docs=7)
        store = Store(
            make_client(settings), settings, RetryPolicy(attempts=3, initial=0.001, max_wait=0.01)
        )
        sources = {
            f"CVE-2026-{i}": b'{"offset":%d,"version":2,"document":{"n":%d,"pad":"%s"}}'
            % (i, i, b"x" * (i * 37))
            for i in range(1, 41)
        }
        ops: list[BulkOp] = [("index", n, s, int(n.rsplit("-", 1)[1])) for n, s in sources.items()]
        stats = store.write(index, ops, concurrency=2)
    odd = {n for n in sources if int(n.rsplit("-", 1)[1]) % 2}
    assert proxy.rejected == odd
    assert stats.item_retries == len(odd) and stats.docs == 40 + len(odd)
    # Each retry carried only its own chunk's rejected items, byte for byte as first sent: the
    # reused buffers held no stale bytes of another request.
    sent: dict[str, list[bytes]] = {}
    for body in proxy.bulk_bodies:
        for action, source in bulk_items(body):
            name = json.loads(action)["index"]["_id"]
            sent.setdefault(name, []).append(action + source)
    for name, copies in sent.items():
        assert len(copies) == (2 if name in odd else 1), name
        assert all(c.endswith(sources[name] + b"\n") for c in copies), name
        assert copies[0] == copies[-1]
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100})["hits"]["hits"]
    assert {h["_id"]: h["_source"] for h in hits} == {n: json.loads(s) for n, s in sources.items()}


def test_a_stop_ends_the_wait_to_resend_rejected_items(
    os_client: OpenSearch, opensearch_url: str, prefix: str
) -> None:
    """Items the node rejected with 429 wait before they are sent again; a stopping process
    does not wait (the load or window they belong to is then not recorded)."""
    index = f"{prefix}-rejected-stop"
    os_client.indices.create(index=index, body={"mappings": CONTENT_MAPPING})
    proxy = RejectingProxy(opensearch_url)
    stop = threading.Event()
    stop.set()
    with serving(proxy.answer) as url:
        settings = OpenSearchSettings(hosts=[url], bulk_docs=10)
        store = Store(
            make_client(settings), settings, RetryPolicy(initial=30, max_wait=60, stop=stop)
        )
        ops: list[BulkOp] = [
            ("index", f"CVE-2026-{i}", b'{"offset":%d,"version":1,"document":{}}' % i, i)
            for i in range(1, 11)
        ]
        with pytest.raises(Stopped):
            store.write(index, ops)
    assert proxy.rejected == {f"CVE-2026-{i}" for i in range(1, 11, 2)}
    assert len(proxy.bulk_bodies) == 1  # sent once, not again


def test_each_bulk_request_is_logged_at_debug_with_the_nodes_own_time(
    os_client: OpenSearch, opensearch_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow load is then either the node's (its `took`) or this process's (the rest)."""
    index = f"{prefix}-took"
    os_client.indices.create(index=index, body={"mappings": CONTENT_MAPPING})
    settings = OpenSearchSettings(hosts=[opensearch_url], bulk_docs=4)
    store = Store(make_client(settings), settings, RetryPolicy())
    ops: list[BulkOp] = [
        ("index", f"CVE-2026-{i}", b'{"offset":%d,"version":1,"document":{}}' % i, i)
        for i in range(1, 11)
    ]
    caplog.set_level(logging.DEBUG, logger="content_sync.store")
    store.write(index, ops, concurrency=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "content_sync.store"]
    pattern = re.compile(
        r"bulk request of (\d+) items \(\d+ bytes\) answered in \d+ ms; node took (\d+) ms"
    )
    matched = [m for line in lines if (m := pattern.fullmatch(line))]
    assert sorted(int(m[1]) for m in matched) == [2, 4, 4], lines
    os_client.indices.refresh(index=index)
    assert os_client.count(index=index)["count"] == 10


def test_a_document_stored_indented_is_written_back_on_one_line(
    os_client: OpenSearch, opensearch_url: str, prefix: str
) -> None:
    """A document stored indented (not by content-sync) comes back from a multi-get with
    newlines in its raw JSON; written back with the parts no patch reached passed through, it
    must still be one line of the bulk body."""
    index = f"{prefix}-indented"
    os_client.indices.create(index=index, body={"mappings": CONTENT_MAPPING})
    source = {"offset": 3, "version": 1, "document": {"a": [1, {"b": "x\ny"}], "c": 2.5}}
    os_client.index(
        index=index,
        id="CVE-1",
        body=json.dumps(source, indent=2),
        params={"version": 3, "version_type": "external", "refresh": "true"},
    )
    settings = OpenSearchSettings(hosts=[opensearch_url])
    store = Store(make_client(settings), settings, RetryPolicy())
    document = store.mget(index, ["CVE-1"])["CVE-1"]["document"]
    store.write(index, [("index", "CVE-1", content_source(4, 2, document), 4)])
    got = os_client.get(index=index, id="CVE-1")["_source"]
    assert got == {"offset": 4, "version": 2, "document": source["document"]}
