"""Bulk request bodies: items packed into memory reused from request to request.

    documents / (action, source) items --Packer (count + bytes bound)--> Body --sender--> node
                                                 ^                          |
                                                 +------ BodyPool <---------+

A body is packed whole by the thread that reads the input, then handed to a sender that only
posts it, and a snapshot document's bytes are copied once, from the inflated archive into the
body. Packed in the senders from per-document tuples, a 50,000-resource load took 3.3-3.4 s of
CPU; packed here, 2.9-3.0 s (3 alternating rounds, bench/README.md).

A body is several MiB. Joined into a new bytes object for every request, it lands in a block
that glibc maps for it and unmaps when it is freed (content_sync.memory keeps large blocks on
mmap so that resident memory stays flat): every 4 KiB of every body then costs a page fault and
a page clear. A buffer kept for the next body is faulted in once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, Protocol

import msgspec
import orjson

__all__ = [
    "Body",
    "BodyPool",
    "Document",
    "Item",
    "Packer",
    "Source",
    "content_head",
    "item_bytes",
    "json_str",
    "source_bytes",
]

# A document's source: its bytes, or the pieces that make it, in order.
Source = bytes | tuple[bytes | msgspec.Raw, ...]
# (action line with its newline, source or None); the source gets its newline in the body.
Item = tuple[bytes, Source | None]

# An action line, with the index filled in and `%s` (the id) and `%d` (the version) left. The
# offset becomes the document's external version: a stale writer (one that lost its lease but has
# not noticed yet) can never overwrite newer content, and a replayed window is accepted.
_ACTION = b'{"%s":{"_index":%s,"_id":%%s,"version":%%d,"version_type":"external_gte"}}\n'
# A content document as stored, up to its payload: {"offset", "version", "document": payload}.
_HEAD = b'{"offset":%d,"version":%d,"document":'
_NEWLINE = 0x0A
_KINDS = ("index", "delete")


class Document(Protocol):
    """A content document whose payload is raw JSON text of an object (snapshot.Line)."""

    @property
    def name(self) -> str | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def version(self) -> int: ...
    @property
    def payload(self) -> msgspec.Raw: ...


def json_str(value: str) -> bytes:
    """`value` as a JSON string literal."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # a lone surrogate (from a \\ud800 escape): escaped as is
        return json.dumps(value).encode()


def content_head(offset: int, version: int) -> bytes:
    """A content document's source up to its payload; the payload and `}` follow."""
    return _HEAD % (offset, version)


def source_bytes(source: Source) -> bytes:
    return source if isinstance(source, bytes) else b"".join(source)


def item_bytes(action: bytes, source: Source | None) -> int:
    """What one item adds to a body: a body never exceeds bulk_bytes unless one item does."""
    if source is None:
        return len(action)
    if isinstance(source, bytes):
        return len(action) + len(source) + 1
    return len(action) + sum(map(len, source)) + 1


class Body:
    """One bulk request's NDJSON in a pooled buffer: `buffer[:size]`, `docs` items."""

    __slots__ = ("buffer", "docs", "size")

    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer
        self.size = 0
        self.docs = 0

    def view(self) -> memoryview:
        """The body's bytes (release the view, or use it in a `with`, before the buffer is
        reused)."""
        return memoryview(self.buffer)[: self.size]

    def items(self) -> Iterator[bytes]:
        """Each item's bytes (its action line, and its source line unless it is a delete), in
        order. Found by their newlines, which JSON text never holds raw: only an answer that
        names a failed item needs them, so no per-item offsets are kept while packing."""
        data, pos = self.buffer, 0
        for _ in range(self.docs):
            end = data.index(b"\n", pos) + 1
            if not data.startswith(b'{"delete"', pos):
                end = data.index(b"\n", end) + 1
            yield bytes(data[pos:end])
            pos = end

    def reset(self, items: Sequence[bytes]) -> None:
        """Refill with `items` (whole items as items() gives them, e.g. those to send again)."""
        size = sum(map(len, items))
        if len(self.buffer) < size:
            self.buffer = bytearray(size)
        pos = 0
        for item in items:
            end = pos + len(item)
            self.buffer[pos:end] = item
            pos = end
        self.size, self.docs = pos, len(items)


class BodyPool:
    """A free list of buffers of `size` bytes (the largest body the packer builds); a larger one,
    made for a single huge item, is kept only while it is no larger than `keep_bytes`."""

    def __init__(self, size: int, keep_bytes: int) -> None:
        self._size = size
        self._keep = keep_bytes
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, at_least: int = 0) -> Body:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None or len(buffer) < at_least:
            if buffer is not None:
                self._keep_buffer(buffer)
            buffer = bytearray(max(at_least, self._size))
        return Body(buffer)

    def give(self, body: Body) -> None:
        """Back to the free list: no view of the body may be alive any more."""
        self._keep_buffer(body.buffer)

    def _keep_buffer(self, buffer: bytearray) -> None:
        if len(buffer) <= self._keep:
            with self._lock:
                self._free.append(buffer)


class Packer:
    """Packs the items of one index into bodies of at most `max_docs` items and `max_bytes` bytes
    (a single larger item gets a body of its own). add() and add_documents() give back the bodies
    they filled; finish() the last one."""

    def __init__(self, pool: BodyPool, index: str, *, max_docs: int, max_bytes: int) -> None:
        self._pool = pool
        self._max_docs = max_docs
        self._max_bytes = max_bytes
        self._body: Body | None = None
        index_json = json_str(index).replace(b"%", b"%%")
        self._actions = {kind: _ACTION % (kind.encode(), index_json) for kind in _KINDS}
        # An index action and its document's head in one formatting: id, version, offset, version.
        self._index_head = self._actions["index"] + _HEAD

    def action(self, kind: Literal["index", "delete"], doc_id: str, version: int) -> bytes:
        return self._actions[kind] % (json_str(doc_id), version)

    def _room(self, size: int) -> tuple[Body, Body | None]:
        """The body `size` more bytes go into, and the body that was full, if any."""
        body, full = self._body, None
        if (
            body is not None
            and body.docs
            and (body.docs >= self._max_docs or body.size + size > self._max_bytes)
        ):
            full, body = body, None
        if body is None:
            body = self._pool.take(size)
        elif len(body.buffer) < size:  # empty, and too small for one huge item
            self._pool.give(body)
            body = self._pool.take(size)
        self._body = body
        return body, full

    def add(self, action: bytes, source: Source | None) -> Body | None:
        body, full = self._room(item_bytes(action, source))
        buffer, pos = body.buffer, body.size
        end = pos + len(action)
        buffer[pos:end] = action
        if source is not None:
            for piece in (source,) if isinstance(source, bytes) else source:
                pos, end = end, end + len(piece)
                buffer[pos:end] = piece
            buffer[end] = _NEWLINE
            end += 1
        body.size = end
        body.docs += 1
        return full

    def add_documents(self, documents: Iterable[Document]) -> Iterator[Body]:
        """Index `documents` (name as `_id`, offset as version): the snapshot's hot loop, run once
        per resource. The bytes are those of add(action("index", ...), (content_head(...),
        payload, b"}")) (tests/test_bulkbody.py), from one formatting and three copies."""
        head = self._index_head
        max_docs, max_bytes = self._max_docs, self._max_bytes
        body = self._body
        for doc in documents:
            start = head % (json_str(doc.name or ""), doc.offset, doc.offset, doc.version)
            payload = doc.payload
            size = len(start) + len(payload) + 2
            if (
                body is None
                or len(body.buffer) < size
                or (body.docs and (body.docs >= max_docs or body.size + size > max_bytes))
            ):
                body, full = self._room(size)
                if full is not None:
                    yield full
            buffer, pos = body.buffer, body.size
            end = pos + len(start)
            buffer[pos:end] = start
            pos, end = end, end + len(payload)
            buffer[pos:end] = payload
            buffer[end : end + 2] = b"}\n"
            body.size = end + 2
            body.docs += 1

    def finish(self) -> Body | None:
        body, self._body = self._body, None
        if body is not None and not body.docs:
            self._pool.give(body)
            return None
        return body
