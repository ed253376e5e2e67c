"""Keep the process's memory flat over multi-GiB loads (glibc only; elsewhere a no-op).

Bulk bodies of several MiB are built and freed continuously. glibc raises its mmap threshold
each time such a block is freed, after which these blocks come from the per-thread heaps instead
and fragment them: resident memory then creeps up with the size of the load. A fixed threshold
keeps large blocks on mmap, returned to the system when freed.

Smaller blocks still fragment the heap: ISA-L's inflated pieces (~100 KB each, grown by
reallocation) leave free holes that glibc keeps, +30 MB over a 200,000-resource archive inflated
alone (zlib's pieces do not). release_free_memory() hands such holes back; called every few
thousand documents it keeps the heap at ~15 MB for the same archive, at no measurable cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

__all__ = ["fix_malloc_thresholds", "release_free_memory"]

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


def fix_malloc_thresholds() -> bool:
    """True when glibc accepted the fixed threshold."""
    with contextlib.suppress(AttributeError, TypeError):
        libc = _libc()
        return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return False


def release_free_memory() -> None:
    """Return the free pages inside the heap to the system (glibc's malloc_trim)."""
    with contextlib.suppress(AttributeError, TypeError):
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
