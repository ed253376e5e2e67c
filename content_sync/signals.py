"""SIGTERM/SIGINT set the stop event, from a thread of their own, never from the handler.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is:
possibly inside `stop.wait()` (the service's main loop; a manual sync waiting to retry), between
taking the event's lock and releasing it. `stop.set()` in the handler would then wait for that
lock forever. So the handler only counts (for a manual sync a second signal interrupts at once,
which takes no lock), and the interpreter's wakeup fd, written by its C-level handler whatever the
main thread is doing, wakes a thread that sets the event and says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["stop_on_signals"]

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, *, second_interrupts: bool = False) -> Iterator[None]:
    """While in the block, SIGTERM or SIGINT sets `stop`; with `second_interrupts`, another one
    after that raises KeyboardInterrupt in the main thread. Call from the main thread."""
    read_fd, write_fd = os.pipe()
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if second_interrupts and received > 1:
            raise KeyboardInterrupt

    def watch() -> None:
        while data := os.read(read_fd, 64):  # b"": the write end is closed, the block ended
            for signum in data:
                if signum in SIGNALS:
                    name = signal.Signals(signum).name
                    log.info("received %s: stopping after the current window", name)
                    stop.set()

    # Undone in reverse order, also when a step fails (set_wakeup_fd off the main thread).
    with contextlib.ExitStack() as undo:
        undo.callback(os.close, read_fd)
        watcher = threading.Thread(target=watch, name="signals", daemon=True)
        watcher.start()
        undo.callback(watcher.join)
        undo.callback(os.close, write_fd)
        os.set_blocking(write_fd, False)
        undo.callback(signal.set_wakeup_fd, signal.set_wakeup_fd(write_fd))
        for sig in SIGNALS:
            undo.callback(signal.signal, sig, signal.signal(sig, on_signal))
        yield
