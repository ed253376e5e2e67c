"""Bulk bodies built in reused buffers: the bytes sent are exactly the NDJSON of the items."""

from __future__ import annotations

import msgspec
import pytest

from content_sync.bulkbody import BodyBuffers, Item, item_bytes, source_bytes


def ndjson(items: list[Item]) -> bytes:
    return b"".join(a + (source_bytes(s) + b"\n" if s is not None else b"") for a, s in items)


INDEX: list[Item] = [
    (b'{"index":{"_id":"CVE-1"}}\n', b'{"offset":1,"document":{"a":"\xc3\xa9"}}'),
    (b'{"delete":{"_id":"CVE-2"}}\n', None),
    (b'{"index":{"_id":"CVE-3"}}\n', b'{"offset":3,"document":{}}'),
]


def test_body_is_the_items_ndjson() -> None:
    with BodyBuffers(1000, keep_bytes=1 << 20).body(INDEX) as body:
        assert bytes(body) == ndjson(INDEX)


def test_a_buffer_is_reused_and_a_shorter_body_does_not_carry_the_longer_tail() -> None:
    buffers = BodyBuffers(1000, keep_bytes=1 << 20)
    with buffers.body(INDEX) as body:
        first = body.obj
    short = INDEX[1:2]
    with buffers.body(short) as body:
        assert body.obj is first  # the same memory, faulted in once
        assert bytes(body) == ndjson(short)


def test_a_buffer_grows_for_a_larger_body() -> None:
    buffers = BodyBuffers(1000, keep_bytes=1 << 20)
    with buffers.body(INDEX[:1]):
        pass
    large: list[Item] = [(b'{"index":{"_id":"big"}}\n', b"x" * 50_000), *INDEX]
    with buffers.body(large) as body:
        assert bytes(body) == ndjson(large)


def test_a_buffer_beyond_keep_bytes_is_not_kept() -> None:
    buffers = BodyBuffers(100, keep_bytes=1000)
    huge: list[Item] = [(b'{"index":{"_id":"big"}}\n', b"x" * 5000)]
    with buffers.body(huge) as body:
        big = body.obj
    with buffers.body(INDEX) as body:
        assert body.obj is not big
        assert bytes(body) == ndjson(INDEX)


def test_concurrent_bodies_get_their_own_buffers() -> None:
    buffers = BodyBuffers(1000, keep_bytes=1 << 20)
    with buffers.body(INDEX) as one, buffers.body(INDEX[2:]) as two:
        assert one.obj is not two.obj
        assert bytes(one) == ndjson(INDEX)
        assert bytes(two) == ndjson(INDEX[2:])


def test_the_view_is_released_after_the_block() -> None:
    with BodyBuffers(1000, keep_bytes=1 << 20).body(INDEX) as body:
        pass
    with pytest.raises(ValueError, match="released"):
        bytes(body)


def test_buffers_are_made_the_largest_chunk_size_so_they_do_not_regrow() -> None:
    buffers = BodyBuffers(1000, keep_bytes=1 << 20)
    with buffers.body(INDEX[1:2]) as body:  # 27 bytes
        first = body.obj
    near_limit: list[Item] = [(b'{"index":{"_id":"x"}}\n', b"y" * 900)]
    with buffers.body(near_limit) as body:
        assert body.obj is first
        assert bytes(body) == ndjson(near_limit)


def test_a_source_in_pieces_is_written_as_its_joined_bytes() -> None:
    """A snapshot document comes as (head, payload, tail), the payload a view of the archive."""
    line = msgspec.json.decode(
        memoryview(b'{"payload": {"a": "\\u00e9", "b": [1, 2.50]}}'), type=_Line
    )
    pieces = (b'{"offset":4,"version":1,"document":', line.payload, b"}")
    items: list[Item] = [INDEX[0], (b'{"index":{"_id":"CVE-4"}}\n', pieces), INDEX[1]]
    expected = (
        b'{"index":{"_id":"CVE-1"}}\n{"offset":1,"document":{"a":"\xc3\xa9"}}\n'
        b'{"index":{"_id":"CVE-4"}}\n'
        b'{"offset":4,"version":1,"document":{"a": "\\u00e9", "b": [1, 2.50]}}\n'
        b'{"delete":{"_id":"CVE-2"}}\n'
    )
    assert sum(item_bytes(a, s) for a, s in items) == len(expected)
    with BodyBuffers(10, keep_bytes=1 << 20).body(items) as body:
        assert bytes(body) == expected == ndjson(items)


class _Line(msgspec.Struct):
    payload: msgspec.Raw
