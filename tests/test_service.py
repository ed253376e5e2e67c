"""`content-sync run` as a real process: schedule, clean stop, one writer per feed."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.testing.server import FeedServer
from tests.helpers import assert_matches_truth, clean_env, exit_code, settings_dict, wait_for
from tests.test_cli import SCRIPT, write_config

STATE_ID = "vd_1.0.0_vd_4.8.0"
SUMMARY = re.compile(
    r"^(?P<time>\S+ \S+) INFO content_sync.sync: cycle feed=\S+ offset (?P<before>\d+) -> "
    r"(?P<after>\d+) .*work=(?P<work>\S+) .*seconds=(?P<seconds>[\d.]+) outcome=(?P<outcome>\w+)"
)


def service_settings(
    server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path, **sections: Any
) -> dict[str, Any]:
    """Every second, small windows, a short lease: a service that a test can watch work."""
    return settings_dict(
        server,
        opensearch_url,
        prefix,
        tmp_path,
        schedule={"interval": "1s", "jitter": 0, "run_on_start": True},
        sync={"batch_size": 50, "lease_ttl": "3s"},
        **sections,
    )


@pytest.fixture
def service_config(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> Path:
    data = service_settings(feed_server, opensearch_url, prefix, tmp_path)
    return write_config(tmp_path / "settings.yaml", data)


@pytest.fixture
def start_service(service_config: Path, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    procs: list[subprocess.Popen[str]] = []

    def start(name: str, config: Path | None = None) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"{name}.log"
        # faulthandler: a service that does not stop can be asked for every thread's stack.
        env = clean_env(PYTHONFAULTHANDLER="1")
        proc = subprocess.Popen(
            [SCRIPT, "run", "--config", str(config or service_config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            text=True,
            env=env,
        )
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def state(os_client: OpenSearch, prefix: str) -> dict[str, Any]:
    try:
        return dict(os_client.get(index=f"{prefix}-state", id=STATE_ID)["_source"])
    except Exception:
        return {}


def at_offset(os_client: OpenSearch, prefix: str, offset: int) -> bool:
    return state(os_client, prefix).get("local_offset") == offset


def test_run_picks_up_new_changes_and_stops_cleanly_on_sigterm(
    start_service: Any, feed_server: FeedServer, os_client: OpenSearch, prefix: str
) -> None:
    model = feed_server.model
    proc, log = start_service("a")
    wait_for(
        lambda: state(os_client, prefix).get("local_offset") == model.head_offset, 60, "first cycle"
    )
    for _ in range(2):
        head = model.append_changes(120)
        wait_for(partial(at_offset, os_client, prefix, head), 60, "catch-up")
    assert_matches_truth(os_client, f"{prefix}-cve", model, model.head_offset)

    # Stop in the middle of a long catch-up: the current window completes or is not recorded.
    start = model.head_offset
    head = model.append_changes(3000)
    wait_for(lambda: state(os_client, prefix).get("status") == "running", 30, "a running cycle")
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, log) == 0
    final = state(os_client, prefix)
    assert final["status"] == "ready" and final["lease_owner"] is None
    assert (final["local_offset"] - start) % 50 == 0  # a window boundary
    assert_matches_truth(os_client, f"{prefix}-cve", model, final["local_offset"])
    text = log.read_text()
    assert "received SIGTERM" in text and "outcome=stopped" in text and "Traceback" not in text
    assert final["local_offset"] < head  # it did stop early, not finish


def test_sigterm_does_not_wait_out_a_retry(
    start_service: Any,
    feed_server: FeedServer,
    os_client: OpenSearch,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """The feed rate-limits the changes for two minutes; the default policy would wait a minute
    before each retry, longer than systemd or Docker give a stopping service. SIGTERM ends the
    wait: the cycle stops with nothing half-recorded and the lease released."""
    model = feed_server.model
    data = service_settings(
        feed_server,
        opensearch_url,
        prefix,
        tmp_path,
        retry={"attempts": 8, "initial": 1, "max_wait": 60, "budget": 900},
    )
    config = write_config(tmp_path / "patient.yaml", data)
    proc, log = start_service("patient", config)
    start = model.head_offset
    wait_for(partial(at_offset, os_client, prefix, start), 60, "first cycle")

    feed_server.inject("429", times=100, on="changes", delay=120)
    head = model.append_changes(120)
    wait_for(lambda: "retry 1 in 60.0 s" in log.read_text(), 30, "a cycle waiting to retry")
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, log) == 0
    assert time.monotonic() - asked < 30  # the wait was a minute
    text = log.read_text()
    assert "outcome=stopped" in text and "Traceback" not in text
    assert "retry 2 in" not in text
    final = state(os_client, prefix)
    assert (final["status"], final["lease_owner"], final["local_offset"]) == ("ready", None, start)
    assert_matches_truth(os_client, f"{prefix}-cve", model, start)
    assert start < head


def cycles(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every cycle that wrote content, from the summary lines."""
    out = []
    for line in log.read_text().splitlines():
        m = SUMMARY.match(line)
        if m and m["work"] != "none":
            end = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((end - float(m["seconds"]), end))
    return out


def test_two_services_one_writer_and_takeover_after_a_kill(
    start_service: Any, feed_server: FeedServer, os_client: OpenSearch, prefix: str
) -> None:
    model = feed_server.model
    a, log_a = start_service("a")
    b, log_b = start_service("b")
    wait_for(lambda: state(os_client, prefix).get("local_offset") == model.head_offset, 90, "init")
    for _ in range(3):
        head = model.append_changes(400)
        wait_for(partial(at_offset, os_client, prefix, head), 90, "catch-up")
    # Never two working cycles of the feed at once, across both processes.
    spans = sorted(cycles(log_a) + cycles(log_b))
    assert len(spans) >= 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05, spans
    # The loser of each race logged that it skipped: it saw the lease, or lost the conditional
    # write that takes it.
    logs = log_a.read_text() + log_b.read_text()
    assert "being synchronised by" in logs or "written by another process" in logs

    # Kill whoever holds the lease mid-cycle; the other takes over once the lease expires.
    head = model.append_changes(4000)
    wait_for(lambda: state(os_client, prefix).get("lease_owner") is not None, 30, "a lease")
    holder_pid = int(state(os_client, prefix)["lease_owner"].split(":")[1])
    holder, survivor = (a, b) if holder_pid == a.pid else (b, a)
    assert holder.pid == holder_pid
    holder.kill()
    holder.wait()
    wait_for(lambda: state(os_client, prefix).get("local_offset") == head, 120, "takeover")
    final = state(os_client, prefix)
    assert final["status"] == "ready" or final["lease_owner"].split(":")[1] == str(survivor.pid)
    assert_matches_truth(os_client, f"{prefix}-cve", model, head)
    survivor.send_signal(signal.SIGTERM)
    assert exit_code(survivor, log_a if survivor is a else log_b) == 0
