"""Named crash points for the reliability suite, in the spirit of FreeBSD's fail points and
TiKV's fail-rs: the suite kills the process exactly where a crash hurts most.

    CONTENT_SYNC_FAILPOINTS="window-written=3,after-swap=1"

kills the process with SIGKILL the 3rd time a window's bulk write has completed (before its
state write), or the 1st time an alias swap has happened. Unset (always, in production), `hit`
costs one dictionary lookup. Point names are listed in POINTS; an unknown name is an error so a
typo in a test cannot make it pass vacuously.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["POINTS", "hit"]

POINTS = (
    "download-chunk",  # a chunk of the snapshot archive was written to the temp file
    "bulk-done",  # a bulk request succeeded (snapshot load or window write)
    "before-swap",  # the new index is loaded and verified; the alias still points at the old one
    "after-swap",  # the alias moved; the state does not record the snapshot yet
    "snapshot-recorded",  # the state records the snapshot's offset
    "window-written",  # a window's bulk write succeeded; its state write has not happened
    "window-recorded",  # the window's offset is recorded
    "before-notify",  # content moved; the command is about to be sent
    "after-notify",  # the command was delivered; the state does not know yet
)

ENV = "CONTENT_SYNC_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = item.partition("=")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fail point {name!r} (known: {', '.join(POINTS)})")
        armed[name] = int(count or "1")
    return armed


_armed = _parse(os.environ.get(ENV, ""))
_lock = threading.Lock()


def hit(name: str) -> None:
    """Count a pass through `name`; on the armed count, die as a power cut would."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        if _armed[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
