"""Bulk writes and multi-gets go through the connection directly, not through the client's
request method (Store._post_bytes): a host that refuses connections or answers 502/503/504 is
skipped for a while, as the client would, and an answer that is not JSON is a clear error."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opensearchpy import OpenSearch

from content_sync.errors import StoreError, TransientError
from content_sync.lazydoc import decoded
from content_sync.retry import RetryPolicy
from content_sync.settings import OpenSearchSettings
from content_sync.store import CONTENT_MAPPING, Store, make_client


@pytest.mark.parametrize("failure", ["refused", "503"])
def test_a_dead_host_is_skipped_after_its_first_failure(
    os_client: OpenSearch, opensearch_url: str, prefix: str, failure: str
) -> None:
    with contextlib.ExitStack() as stack:
        dead = (
            "http://127.0.0.1:9"
            if failure == "refused"
            else stack.enter_context(serving(503, b'{"error":"unavailable"}'))
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


def stand_in(status: int, body: bytes) -> ThreadingHTTPServer:
    """A stand-in node that answers every POST with `status` and `body`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def serving(status: int, body: bytes) -> Iterator[str]:
    server = stand_in(status, body)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_bulk_answer_that_is_not_json_is_a_clear_error() -> None:
    with serving(200, b"<html>proxy error</html>") as url:
        settings = OpenSearchSettings(hosts=[url])
        store = Store(make_client(settings), settings, RetryPolicy(attempts=1))
        with pytest.raises(StoreError, match=r"bulk answer not understood.*proxy error"):
            store.write("content", [("index", "CVE-1", b'{"offset":1}', 1)])
