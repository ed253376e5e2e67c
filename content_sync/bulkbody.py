"""Bulk request bodies written into memory reused from request to request.

A body is several MiB. Joined into a new bytes object for every request, it lands in a block
that glibc maps for it and unmaps when it is freed (content_sync.memory keeps large blocks on
mmap so that resident memory stays flat): every 4 KiB of every body then costs a page fault and
a page clear. In a snapshot load that was most of this process's page faults (~150,000 for
50,000 documents). A buffer kept for the next request is faulted in once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import msgspec

__all__ = ["BodyBuffers", "Item", "Source", "item_bytes", "source_bytes"]

# A document's source: its bytes, or the pieces that make it, in order. A snapshot document is
# (head, payload, tail), each written into the body as it is: joined (or %-formatted) first,
# its 12 KB payload was copied once more per document.
Source = bytes | tuple[bytes | msgspec.Raw, ...]
# (action line with its newline, source or None); the source gets its newline here.
Item = tuple[bytes, Source | None]


def source_bytes(source: Source) -> bytes:
    return source if isinstance(source, bytes) else b"".join(source)


def item_bytes(action: bytes, source: Source | None) -> int:
    """What one item adds to a body: the chunker bounds chunks by it, so a body of a chunk never
    exceeds bulk_bytes unless one item does."""
    if source is None:
        return len(action)
    if isinstance(source, bytes):
        return len(action) + len(source) + 1
    return len(action) + sum(map(len, source)) + 1  # per document, twice: no generator


class BodyBuffers:
    """A free list of buffers, one per concurrent sender, each of `size` bytes (the largest
    body the chunker builds) unless one body is larger: such a buffer is kept while it is no
    larger than `keep_bytes`, else dropped after use (one huge document)."""

    def __init__(self, size: int, keep_bytes: int) -> None:
        self._size = size
        self._keep = keep_bytes
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def body(self, items: Sequence[Item]) -> Iterator[memoryview]:
        """The NDJSON body of `items`, valid until the block ends: the buffer then goes back to
        the free list, so no view of it may outlive the block (the HTTP request is over by
        then). If the block raises, the buffer is dropped rather than reused."""
        size = sum(item_bytes(action, source) for action, source in items)
        with self._lock:
            buffer = self._free.pop() if self._free else bytearray()
        if len(buffer) < size:
            buffer = bytearray(max(size, self._size))
        with memoryview(buffer) as view:
            end = 0
            for action, source in items:
                start, end = end, end + len(action)
                view[start:end] = action
                if source is None:
                    continue
                for piece in (source,) if isinstance(source, bytes) else source:
                    start, end = end, end + len(piece)
                    view[start:end] = piece
                view[end] = 0x0A  # "\n"
                end += 1
            with view[:end] as filled:
                yield filled
        if len(buffer) <= self._keep:
            with self._lock:
                self._free.append(buffer)
