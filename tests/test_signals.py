"""SIGTERM/SIGINT reach the stop event without the handler ever taking the event's lock.

Each case runs in a child interpreter: a regression is a deadlock, which must fail the test (by
its timeout), not hang the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import clean_env

PRELUDE = """
import logging, os, signal, sys, threading
from content_sync.signals import stop_on_signals
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
stop = threading.Event()
"""


def run(body: str) -> str:
    child = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert child.returncode == 0, child.stderr
    return child.stdout


def test_a_signal_while_the_main_thread_holds_the_events_lock_still_sets_it() -> None:
    """What `stop.wait()` does for an instant at every call (the service's main loop, a manual
    sync waiting to retry). A handler calling `stop.set()` here would wait for itself forever."""
    out = run(
        """
        with stop_on_signals(stop):
            with stop._cond:  # the event's own lock, held as inside stop.wait()
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100_000):  # the handler runs at one of these bytecodes
                    pass
            assert stop.wait(10), "never set"
        print("set")
        """
    )
    assert out.splitlines() == ["received SIGTERM: stopping after the current window", "set"]


def test_a_second_signal_interrupts_when_asked_and_handlers_are_restored() -> None:
    out = run(
        """
        before = signal.getsignal(signal.SIGTERM)
        try:
            with stop_on_signals(stop, second_interrupts=True):
                os.kill(os.getpid(), signal.SIGINT)
                assert stop.wait(10)
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000_000):
                    pass
                print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.set_wakeup_fd(-1) == -1  # the interpreter's wakeup fd is given back
        print("restored")
        """
    )
    assert "received SIGINT: stopping after the current window" in out
    assert out.splitlines()[-2:] == ["interrupted", "restored"]


def test_without_second_interrupts_more_signals_change_nothing() -> None:
    out = run(
        """
        with stop_on_signals(stop):
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(10)
            for _ in range(1_000_000):
                pass
        print("done")
        """
    )
    assert out.splitlines()[-1] == "done"


def test_off_the_main_thread_it_refuses_and_leaves_nothing_behind() -> None:
    out = run(
        """
        errors = []

        def enter():
            try:
                with stop_on_signals(stop):
                    pass
            except ValueError as exc:
                errors.append(exc)

        worker = threading.Thread(target=enter)
        worker.start()
        worker.join()
        assert errors and threading.active_count() == 1, (errors, threading.enumerate())
        assert signal.set_wakeup_fd(-1) == -1
        print("refused")
        """
    )
    assert out.splitlines() == ["refused"]
