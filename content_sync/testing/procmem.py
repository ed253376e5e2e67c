"""Run a command and measure its own peak memory, for the memory tests and the benchmarks.

Not `ru_maxrss` from wait4: Linux keeps a process's maximum RSS across fork and exec, so a child
of a large test or benchmark process (a feed model in memory, a previous test's leftovers)
reports at least its parent's size at the fork, whatever it used itself. The kernel's VmHWM (the
high-water mark of the process's own address space, reset by exec) is read from /proc while the
command runs; it only grows, so sampling misses at most the last few milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Measured", "run_measured"]


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system, from wait4 (not inherited)


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_measured(argv: list[str], *, every: float = 0.01, **popen: Any) -> Measured:
    """Run `argv` (Popen keyword arguments allowed) to its end; its wall time, own peak RSS
    and CPU time."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, **popen)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            value = _hwm_kib(proc.pid)
            if value is not None:
                peak = max(peak, value)
            done.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # A process that has exited has no address space left to report: sampled until then.
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak / 1024,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )
