"""Keep the process's memory flat over multi-GiB loads (glibc only; elsewhere a no-op).

Bulk bodies of several MiB are built and freed continuously by the sender threads. glibc raises
its mmap threshold each time such a block is freed, after which these blocks come from the
per-thread heaps instead and fragment them: resident memory then creeps up with the size of the
load. A fixed threshold keeps large blocks on mmap, returned to the system when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

__all__ = ["fix_malloc_thresholds"]

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def fix_malloc_thresholds() -> bool:
    """True when glibc accepted the fixed threshold."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return False
