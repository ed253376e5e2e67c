"""Downloaded archives are private (0600, even under umask 000) and removed on every path: after
success, after a corrupt or interrupted download, a refused host, a stop, a SIGTERM to `sync`;
a kept archive (sync.keep_archive) is private too."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from content_sync.runtime import Runtime
from content_sync.testing.server import FeedServer
from tests.helpers import (
    FEED,
    assert_matches_truth,
    clean_env,
    make_settings,
    settings_dict,
    state_of,
    wait_for,
)
from tests.reliability import TALLY
from tests.test_cli import SCRIPT, write_config

pytestmark = pytest.mark.reliability

STATE_ID = "vd_1.0.0_vd_4.8.0"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000 for the test: whatever is private is so on purpose, not by the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def temp(tmp_path: Path) -> Path:
    """A temp_dir of its own: anything left in it was left by content-sync."""
    path = tmp_path / "temp"
    path.mkdir()
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_success_leaves_nothing_behind(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    temp: Path,
    os_client: OpenSearch,
    open_umask: None,
) -> None:
    model = feed_server.model
    head = model.append_changes(100)
    modes: list[int] = []
    settings = make_settings(feed_server, opensearch_url, prefix, tmp_path, sync={"temp_dir": temp})
    with Runtime(settings) as rt:
        sync = rt.feed_sync(FEED)
        seen = sync.events.download_progress

        def spy(feed: str, done: int, total: int | None) -> None:
            modes.extend(mode(p) for p in temp.iterdir())
            seen(feed, done, total)

        sync.events.download_progress = spy  # type: ignore[method-assign]
        result = sync.run_cycle()
    assert result.outcome == "ok" and result.after == head, result.error
    assert modes and set(modes) == {0o600}  # the archive while it was being written
    assert list(temp.iterdir()) == []
    TALLY["documents compared"] += assert_matches_truth(os_client, f"{prefix}-cve", model, head)


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ("truncated-zip", "is truncated"),  # read as it downloads: seen before the end
        ("bad-crc", "CRC"),
        ("malformed-line", "line"),
        ("drop", "interrupted"),
        ("503", "503"),
        ("disallowed-host", "not in cti.allowed_hosts"),
        ("too-large", "max_archive_bytes"),
        ("stopped", None),
    ],
)
def test_failed_download_or_load_leaves_nothing_behind(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    temp: Path,
    os_client: OpenSearch,
    open_umask: None,
    fault: str,
    expect: str | None,
) -> None:
    sync_settings: dict[str, object] = {"temp_dir": temp}
    if fault in ("truncated-zip", "bad-crc", "malformed-line") or fault in ("drop", "503"):
        feed_server.inject(fault, times=100, on="snapshot")
    elif fault == "disallowed-host":
        feed_server.snapshot_host = "localhost"  # the API's host is 127.0.0.1
    elif fault == "too-large":
        sync_settings["max_archive_bytes"] = 4096
    settings = make_settings(feed_server, opensearch_url, prefix, tmp_path, sync=sync_settings)
    with Runtime(settings) as rt:
        sync = rt.feed_sync(FEED)
        received: list[tuple[int, int | None]] = []
        if fault == "stopped":  # stop (SIGTERM to the service) while the archive comes in
            seen = sync.events.download_progress

            def stop_midway(feed: str, done: int, total: int | None) -> None:
                seen(feed, done, total)
                received.append((done, total))
                rt.stop.set()

            sync.events.download_progress = stop_midway  # type: ignore[method-assign]
        result = sync.run_cycle()
        state = state_of(rt)
    assert list(temp.iterdir()) == []
    assert state.local_offset == 0 and state.lease_owner is None
    if expect is None:
        assert result.outcome == "stopped"
        # Abandoned after the first chunk, not after downloading the rest.
        [(done, total)] = received
        assert total is not None and 0 < done < total
    else:
        assert result.outcome == "failed" and expect in (result.error or ""), result.error
    assert os_client.indices.get(index=f"{prefix}-cve*") == {}  # no half-built index either
    TALLY["hostile inputs tried"] += 1


def test_sigterm_during_download_removes_the_partial_archive(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    temp: Path,
    os_client: OpenSearch,
) -> None:
    """`content-sync sync` (umask 000) is half way through the archive when SIGTERM comes."""
    data = settings_dict(
        feed_server, opensearch_url, prefix, tmp_path, sync={"temp_dir": str(temp)}
    )
    config = write_config(tmp_path / "s.yaml", data)
    # The first answer breaks off half way; the resumed one stalls for a while.
    feed_server.inject("drop", on="snapshot")
    feed_server.inject("slow", on="snapshot", delay=2.5)
    proc = subprocess.Popen(
        [SCRIPT, "sync", "--config", str(config)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    try:
        wait_for(lambda: len(feed_server.requests_of("snapshot")) == 2, 30, "the resumed download")
        [partial] = list(temp.iterdir())
        assert partial.name.startswith("content-sync-") and partial.stat().st_size > 0
        assert mode(partial) == 0o600
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "received SIGTERM" in err and f"feed {FEED}: stopped at offset 0" in err
    assert "Traceback" not in err
    assert list(temp.iterdir()) == []
    # A clean stop: the lease is released, nothing half-built is left.
    state = os_client.get(index=f"{prefix}-state", id=STATE_ID)["_source"]
    assert state["lease_owner"] is None and state["local_offset"] == 0
    assert os_client.indices.get(index=f"{prefix}-cve*") == {}
    TALLY["hostile inputs tried"] += 1


def test_kept_archive_is_private_and_its_temp_copy_removed(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    temp: Path,
    os_client: OpenSearch,
    open_umask: None,
) -> None:
    model = feed_server.model
    keep = tmp_path / "keep"
    settings = make_settings(
        feed_server,
        opensearch_url,
        prefix,
        tmp_path,
        sync={"temp_dir": temp, "keep_archive": True, "keep_archive_dir": keep},
    )
    with Runtime(settings) as rt:
        sync = rt.feed_sync(FEED)
        kept_at = model.snapshot_offset
        assert sync.run_cycle().outcome == "ok"
        assert list(temp.iterdir()) == []
        assert mode(keep) == 0o700
        assert {p.name: mode(p) for p in keep.iterdir()} == {
            f"{STATE_ID}.zip": 0o600,
            f"{STATE_ID}.json": 0o600,
        }
        # Drift while the feed cannot serve its snapshot: the kept archive is copied to the temp
        # dir and loaded from there; the copy is private while it exists and removed after.
        alias = f"{prefix}-cve"
        os_client.delete(index=alias, id=next(name for name, _ in model.truth()), refresh=True)
        model.append_changes(20)
        model.append_bad_patch()
        model.publish_snapshot()
        feed_server.inject("503", times=10_000, on="snapshot")
        modes: list[int] = []
        seen = sync.events.index_progress

        def spy(feed: str, docs: int, size: int) -> None:
            modes.extend(mode(p) for p in temp.iterdir())
            seen(feed, docs, size)

        sync.events.index_progress = spy  # type: ignore[method-assign]
        result = sync.run_cycle()
        assert result.snapshots == ["drift"] and "older than the feed's" in (result.error or "")
        assert state_of(rt).content_source == f"kept:{STATE_ID}.zip"
    assert modes and set(modes) == {0o600}
    assert list(temp.iterdir()) == []
    TALLY["documents compared"] += assert_matches_truth(os_client, alias, model, kept_at)
    TALLY["hostile inputs tried"] += 1
