"""The bulk writer keeps `concurrency` requests in flight: a slow request never drains the rest.

No node is needed: the request itself is replaced, only the scheduling is under test."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.bulkbody import Body
from content_sync.errors import StoreError
from content_sync.retry import RetryPolicy
from content_sync.settings import OpenSearchSettings
from content_sync.store import BulkOp, Store


def _first_source(body: Body) -> bytes:
    return next(body.items()).split(b"\n")[1]


def _store(bulk_docs: int) -> Store:
    """A store whose requests each test replaces (its host is never reached)."""
    return Store(
        OpenSearch(["http://127.0.0.1:9"]),
        OpenSearchSettings(hosts=["http://127.0.0.1:9"], bulk_docs=bulk_docs),
        RetryPolicy(),
    )


def test_a_slow_request_does_not_stop_the_others() -> None:
    store = _store(bulk_docs=1)
    slow = threading.Event()  # the first request hangs until the test ends
    sent: list[bytes] = []
    lock = threading.Lock()

    def send(body: Body, stats: Any) -> None:
        with lock:
            sent.append(_first_source(body))
            first = len(sent) == 1
        if first:
            assert slow.wait(10), "the first request was never released"

    store._send = send  # type: ignore[method-assign]
    ops: list[BulkOp] = [("index", f"d{i}", b'{"n":%d}' % i, 1) for i in range(20)]
    writer = threading.Thread(target=store.write, args=("i", ops), kwargs={"concurrency": 2})
    writer.start()
    # With one request stuck, the other slot must still carry every other chunk.
    deadline = time.monotonic() + 5
    while len(sent) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    count = len(sent)
    slow.set()
    writer.join(10)
    assert count == 20, f"{count} of 20 chunks sent while one request was slow"


def _chunk_sizes(ops: list[BulkOp], **write: Any) -> list[int]:
    store = _store(bulk_docs=1000)
    sizes: list[int] = []
    lock = threading.Lock()

    def send(body: Body, stats: Any) -> None:
        with lock:
            sizes.append(body.docs)

    store._send = send  # type: ignore[method-assign]
    store.write("i", ops, **write)
    return sorted(sizes, reverse=True)


def test_a_window_is_spread_over_the_requests_in_flight() -> None:
    """The node indexes one request on one thread: a window's results go out as `concurrency`
    even requests, so that a single window keeps that many of its threads busy."""
    window: list[BulkOp] = [("index", f"d{i}", b'{"n":%d}' % i, 1) for i in range(641)]
    assert _chunk_sizes(window, concurrency=2, spread=True) == [321, 320]
    assert _chunk_sizes(window, concurrency=3, spread=True) == [214, 214, 213]
    assert _chunk_sizes(window, concurrency=1, spread=True) == [641]
    # A stream (a snapshot) is cut at the bounds only: chunks as large as they may be.
    assert _chunk_sizes(window, concurrency=2) == [641]
    assert _chunk_sizes(window * 2, concurrency=2) == [1000, 282]


def test_after_a_failed_request_the_chunks_not_yet_sent_are_dropped() -> None:
    """A write that failed (or is stopping) sends nothing more than what is already in flight."""
    store = _store(bulk_docs=1)
    sent: list[bytes] = []
    lock = threading.Lock()

    def send(body: Body, stats: Any) -> None:
        source = _first_source(body)
        if source == b'{"n":0}':
            time.sleep(0.05)
            raise StoreError("the node refused it")
        with lock:
            sent.append(source)
        time.sleep(0.3)  # in flight while the failure is seen

    store._send = send  # type: ignore[method-assign]
    ops: list[BulkOp] = [("index", f"d{i}", b'{"n":%d}' % i, 1) for i in range(20)]
    with pytest.raises(StoreError, match="refused"):
        store.write("i", ops, concurrency=2)
    # Chunk 1 was in flight and chunk 2 may have started in the failed request's slot; chunk 3
    # was still queued when the failure was seen.
    assert set(sent) <= {b'{"n":1}', b'{"n":2}'}, sent
