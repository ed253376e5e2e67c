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

__all__ = ["BodyBuffers", "Item", "item_bytes"]

# (action line with its newline, source or None); the source gets its newline here.
Item = tuple[bytes, bytes | None]


def item_bytes(action: bytes, source: bytes | None) -> int:
    """What one item adds to a body: the chunker bounds chunks by it, so a body of a chunk never
    exceeds bulk_bytes unless one item does."""
    return len(action) + (len(source) + 1 if source is not None else 0)


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
                if source is not None:
                    start, end = end, end + len(source)
                    view[start:end] = source
                    view[end] = 0x0A  # "\n"
                    end += 1
            with view[:end] as filled:
                yield filled
        if len(buffer) <= self._keep:
            with self._lock:
                self._free.append(buffer)
