"""Operator controls: disabled and offline feeds, per-feed schedules, waiting for the cluster,
dry runs, and the next run in `status`."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.service import Service
from content_sync.settings import Settings
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer
from tests.helpers import (
    FEED,
    assert_matches_truth,
    clean_env,
    exit_code,
    settings_dict,
    wait_for,
)
from tests.test_cli import SCRIPT, cli, write_config


@pytest.fixture
def second_model(feed_server: FeedServer, tmp_path: Path) -> Iterator[FeedModel]:
    """A second consumer on the same CTI base URL."""
    model = FeedModel(
        resources=80, history=200, seed=2, consumer="vd_4.9.0", workdir=tmp_path / "feed2"
    )
    feed_server.extra_models.append(model)
    yield model
    model.close()


def two_feeds(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    second: dict[str, Any],
    **sections: Any,
) -> dict[str, Any]:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path, **sections)
    data["feeds"].append(
        {
            "name": "second",
            "context": "vd_1.0.0",
            "consumer": "vd_4.9.0",
            "index": f"{prefix}-second",
            **second,
        }
    )
    return data


def state(os_client: OpenSearch, prefix: str, state_id: str) -> dict[str, Any]:
    try:
        return dict(os_client.get(index=f"{prefix}-state", id=state_id)["_source"])
    except Exception:
        return {}


def test_disabled_feed_untouched_while_another_syncs(
    feed_server: FeedServer,
    second_model: FeedModel,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    config = write_config(
        tmp_path / "s.yaml",
        two_feeds(feed_server, opensearch_url, prefix, tmp_path, {"enabled": False}),
    )
    done = cli("sync", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "feed second: skipped (disabled)" in done.stderr
    assert_matches_truth(
        os_client, f"{prefix}-cve", feed_server.model, feed_server.model.head_offset
    )
    assert not os_client.indices.exists_alias(name=f"{prefix}-second")
    assert not any("vd_4.9.0" in r.path for r in feed_server.requests)
    rows = {
        r["name"]: r
        for r in json.loads(cli("status", "--json", "--config", str(config)).stdout)["feeds"]
    }
    assert rows["second"]["status"] == "disabled" and rows[FEED]["status"] == "ready"
    assert cli("sync", "--feed", "second", "--config", str(config)).returncode == 1


def test_two_feeds_on_their_own_schedules(
    feed_server: FeedServer,
    second_model: FeedModel,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    data = two_feeds(
        feed_server,
        opensearch_url,
        prefix,
        tmp_path,
        {"interval": "1s"},
        schedule={"interval": "1h", "jitter": 0, "run_on_start": True},
    )
    svc = Service.build(Settings.model_validate(data))
    svc.start()
    try:
        wait_for(
            lambda: (
                state(os_client, prefix, "vd_1.0.0_vd_4.9.0").get("local_offset")
                == second_model.head_offset
            ),
            60,
            "both first cycles",
        )
        wait_for(
            lambda: state(os_client, prefix, "vd_1.0.0_vd_4.8.0").get("status") == "ready",
            60,
            "the hourly feed's first cycle",
        )
        first_head = feed_server.model.head_offset
        feed_server.model.append_changes(30)
        head = second_model.append_changes(30)
        # The 1 s feed picks its changes up; the hourly one does not run again.
        wait_for(
            lambda: state(os_client, prefix, "vd_1.0.0_vd_4.9.0").get("local_offset") == head,
            30,
            "the 1 s feed's catch-up",
        )
        assert state(os_client, prefix, "vd_1.0.0_vd_4.8.0")["local_offset"] == first_head
        jobs = {j.id: j for j in svc.scheduler.get_jobs()}
        assert jobs["feed-second"].trigger.interval.total_seconds() == 1
        assert jobs[f"feed-{FEED}"].trigger.interval.total_seconds() == 3600
        hourly = state(os_client, prefix, "vd_1.0.0_vd_4.8.0")
        assert hourly["next_run_at"] and hourly["next_run_at"] > time.strftime("%Y-%m-%dT%H")
    finally:
        svc.stop()
    assert_matches_truth(os_client, f"{prefix}-second", second_model, head)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_service_started_before_opensearch_waits_for_it(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    """A TCP relay stands for the cluster: closed at first (connection refused), opened later."""
    port = free_port()
    data = settings_dict(
        feed_server,
        f"http://127.0.0.1:{port}",
        prefix,
        tmp_path,
        schedule={"interval": "1h", "jitter": 0},
    )
    config = write_config(tmp_path / "s.yaml", data)
    # A manual sync fails fast, naming the cluster.
    started = time.monotonic()
    quick = cli("sync", "--config", str(config))
    assert quick.returncode == 1 and f"127.0.0.1:{port} is not reachable" in quick.stderr
    assert time.monotonic() - started < 30

    log = tmp_path / "run.log"
    env = clean_env(PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(
        [SCRIPT, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )
    try:
        wait_for(lambda: "trying again in" in log.read_text(), 60, "a failed first cycle")
        relay = Relay(port, opensearch_url)
        try:
            wait_for(
                lambda: state(os_client, prefix, "vd_1.0.0_vd_4.8.0").get("status") == "ready",
                90,
                "the cycle once the cluster is up",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert exit_code(proc, log) == 0
            relay.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_matches_truth(
        os_client, f"{prefix}-cve", feed_server.model, feed_server.model.head_offset
    )


class Relay:
    """Forward 127.0.0.1:port to the real node (the cluster "comes up")."""

    def __init__(self, port: int, target_url: str) -> None:
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 9200)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def test_dry_run_changes_nothing_and_predicts_the_cycle(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    config = write_config(
        tmp_path / "s.yaml",
        settings_dict(feed_server, opensearch_url, prefix, tmp_path, sync={"batch_size": 200}),
    )
    model = feed_server.model

    def snapshot_of_store() -> Any:
        os_client.indices.refresh(index=f"{prefix}*")
        docs = os_client.search(index=f"{prefix}*", body={"size": 10_000, "sort": ["_doc"]})
        return sorted(
            (h["_index"], h["_id"], json.dumps(h["_source"], sort_keys=True))
            for h in docs["hits"]["hits"]
        )

    first = cli("sync", "--dry-run", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"feed {FEED}: offset 0 -> {model.head_offset}: load the "
        f"snapshot at offset {model.snapshot_offset} (first-run)"
    )
    assert os_client.indices.get(index=f"{prefix}*") == {}  # not even the state index

    assert cli("sync", "--config", str(config)).returncode == 0
    start = model.head_offset
    head = model.append_changes(450)
    before = snapshot_of_store()
    planned = cli("sync", "--dry-run", "--config", str(config))
    assert planned.stdout.strip() == (
        f"feed {FEED}: offset {start} -> {head}: apply 3 window(s) of changes up to {head}"
    )
    assert snapshot_of_store() == before  # byte for byte: state and content
    real = cli("sync", "--config", str(config))
    assert real.returncode == 0 and "windows=3" in real.stderr and "work=changes" in real.stderr
    assert cli("sync", "--dry-run", "--config", str(config)).stdout.strip() == (
        f"feed {FEED}: nothing to do, in sync at offset {head}"
    )
