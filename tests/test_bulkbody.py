"""Bulk bodies packed into reused buffers: the bytes sent are exactly the NDJSON of the items,
within the count and byte bounds, and the snapshot's fast packing gives the same bytes."""

from __future__ import annotations

import json

import msgspec
import pytest

from content_sync.bulkbody import Body, BodyPool, Item, Packer, content_head, source_bytes
from content_sync.snapshot import Line


def ndjson(items: list[Item]) -> bytes:
    return b"".join(a + (source_bytes(s) + b"\n" if s is not None else b"") for a, s in items)


INDEX: list[Item] = [
    (b'{"index":{"_id":"CVE-1"}}\n', b'{"offset":1,"document":{"a":"\xc3\xa9"}}'),
    (b'{"delete":{"_id":"CVE-2"}}\n', None),
    (b'{"index":{"_id":"CVE-3"}}\n', b'{"offset":3,"document":{}}'),
]


def pack(packer: Packer, items: list[Item]) -> list[Body]:
    bodies = [body for a, s in items if (body := packer.add(a, s)) is not None]
    last = packer.finish()
    return [*bodies, last] if last is not None else bodies


def sent(body: Body) -> bytes:
    with body.view() as view:
        return bytes(view)


def test_a_body_is_its_items_ndjson() -> None:
    (body,) = pack(Packer(BodyPool(1000, 1 << 20), "i", max_docs=10, max_bytes=1000), INDEX)
    assert sent(body) == ndjson(INDEX) and body.docs == 3
    assert list(body.items()) == [ndjson([item]) for item in INDEX]


@pytest.mark.parametrize(("max_docs", "max_bytes", "sizes"), [(2, 1000, [2, 1]), (10, 85, [1, 2])])
def test_bodies_are_cut_at_the_count_and_byte_bounds(
    max_docs: int, max_bytes: int, sizes: list[int]
) -> None:
    bodies = pack(
        Packer(BodyPool(1000, 1 << 20), "i", max_docs=max_docs, max_bytes=max_bytes), INDEX
    )
    assert [b.docs for b in bodies] == sizes
    assert all(b.size <= max_bytes for b in bodies)
    assert b"".join(sent(b) for b in bodies) == ndjson(INDEX)


def test_an_item_larger_than_the_bound_gets_a_body_of_its_own() -> None:
    pool = BodyPool(100, keep_bytes=1000)
    huge: Item = (b'{"index":{"_id":"big"}}\n', b"x" * 5000)
    bodies = pack(Packer(pool, "i", max_docs=10, max_bytes=100), [INDEX[1], huge, INDEX[1]])
    assert [b.docs for b in bodies] == [1, 1, 1]
    assert sent(bodies[1]) == ndjson([huge])
    for body in bodies:
        pool.give(body)
    # The 5 KB buffer is over keep_bytes: dropped, not handed out again.
    assert all(len(pool.take().buffer) == 100 for _ in range(3))


def test_a_buffer_is_reused_and_a_shorter_body_does_not_carry_the_longer_tail() -> None:
    pool = BodyPool(1000, keep_bytes=1 << 20)
    (first,) = pack(Packer(pool, "i", max_docs=10, max_bytes=1000), INDEX)
    pool.give(first)
    (second,) = pack(Packer(pool, "i", max_docs=10, max_bytes=1000), INDEX[1:2])
    assert second.buffer is first.buffer  # the same memory, faulted in once
    assert sent(second) == ndjson(INDEX[1:2])


def test_reset_refills_a_body_with_chosen_items() -> None:
    """What a sender does with the items the node rejected with 429."""
    (body,) = pack(Packer(BodyPool(1000, 1 << 20), "i", max_docs=10, max_bytes=1000), INDEX)
    items = list(body.items())
    body.reset([items[2], items[0]])
    assert sent(body) == ndjson([INDEX[2], INDEX[0]]) and body.docs == 2


def test_action_lines_name_the_index_and_version() -> None:
    packer = Packer(BodyPool(1000, 1 << 20), 'we"ird%d', max_docs=10, max_bytes=1000)
    assert json.loads(packer.action("delete", 'C"VE-%s\u00e9', 42)) == {
        "delete": {
            "_index": 'we"ird%d',
            "_id": 'C"VE-%s\u00e9',
            "version": 42,
            "version_type": "external_gte",
        }
    }


def test_documents_are_packed_as_their_items_would_be() -> None:
    """The snapshot's hot loop (add_documents) and the general one (add) give the same bodies,
    cut at the same places, for names that need escaping and payloads spliced as written."""
    lines = [
        Line(msgspec.Raw(b'{"a": "\\u00e9", "b": [1, 2.50]}'), name="CVE-1", offset=7, version=2),
        Line(msgspec.Raw(b'{"x":"' + b"y" * 300 + b'"}'), name='q"uo\\te', offset=9, version=0),
        Line(msgspec.Raw(b"{}"), name="\u00fcml\u00e4ut \u20ac", offset=2**40, version=3),
        Line(msgspec.Raw(b'{"s":"%d %s"}'), name="%d", offset=11, version=1),
    ] * 3
    for max_docs, max_bytes in ((1000, 1 << 20), (2, 1 << 20), (1000, 700)):
        general = Packer(
            BodyPool(max_bytes, 1 << 21), "idx", max_docs=max_docs, max_bytes=max_bytes
        )
        items: list[Item] = []
        for x in lines:
            assert x.name is not None and x.offset is not None
            items.append(
                (
                    general.action("index", x.name, x.offset),
                    (content_head(x.offset, x.version), x.payload, b"}"),
                )
            )
        expected = [sent(b) for b in pack(general, items)]
        fast = Packer(BodyPool(max_bytes, 1 << 21), "idx", max_docs=max_docs, max_bytes=max_bytes)
        got = [sent(b) for b in fast.add_documents(lines)]
        last = fast.finish()
        assert last is not None
        assert [*got, sent(last)] == expected
        assert len(expected) > 1 or (max_docs == 1000 and max_bytes > 700)
    document = json.loads(expected[0].split(b"\n")[1])
    assert document == {"offset": 7, "version": 2, "document": {"a": "\u00e9", "b": [1, 2.5]}}
