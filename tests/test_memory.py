"""content_sync.memory: free heap pages go back to the system (glibc)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

# Run in a process of its own: the heap of a test session that has run hundreds of tests places
# (and frees) these blocks wherever its earlier holes are, which this test cannot predict.
_HOLES = """
import os
from content_sync.memory import release_free_memory

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

kept, freed = [], []
for i in range(400):
    freed.append(os.urandom(1) * (100_000 + i))  # touched: resident
    kept.append(os.urandom(1) * 600)
del freed
before = rss_kib()
release_free_memory()
print(before, rss_kib(), len(kept))
"""


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask")
def test_holes_left_in_the_heap_are_handed_back() -> None:
    """Blocks below the mmap threshold, freed between blocks that stay: the holes are not at the
    heap's top, so glibc keeps them until asked (what inflated pieces leave over a long load)."""
    run = subprocess.run(
        [sys.executable, "-c", _HOLES], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, kept = map(int, run.stdout.split())
    assert before - after > 20_000, (before, after)  # of the ~40 MB freed
    assert kept == 400
