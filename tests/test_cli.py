"""The real console script, as a subprocess, against the real node and the local feed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from opensearchpy import OpenSearch

from content_sync.progress import LoggedProgress, TerminalProgress, progress_events
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, clean_env, settings_dict

SCRIPT = str(Path(sys.executable).parent / "content-sync")
SECRET = "Sup3r-S3cret-Pa55"


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def config(feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path) -> Path:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    return write_config(tmp_path / "settings.yaml", data)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = clean_env(**(env or {}))
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def test_sync_status_and_resync(
    config: Path, feed_server: FeedServer, os_client: OpenSearch, prefix: str
) -> None:
    model = feed_server.model
    head = model.append_changes(300)
    done = cli("sync", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"in sync at offset {head}" in done.stdout
    assert "offset 0 -> " in done.stderr and "outcome=ok" in done.stderr  # the summary line
    assert_matches_truth(os_client, f"{prefix}-cve", model, head)

    status = cli("status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stderr
    feeds = json.loads(status.stdout)["feeds"]
    documented = {
        "name",
        "context",
        "consumer",
        "local_offset",
        "remote_offset",
        "lag",
        "status",
        "index",
        "last_success_at",
    }  # interface.md
    assert len(feeds) == 1 and set(feeds[0]) == documented | {"next_run_at", "offline"}
    row = feeds[0]
    assert (row["name"], row["local_offset"], row["remote_offset"], row["lag"]) == (
        FEED,
        head,
        head,
        0,
    )
    assert row["status"] == "ready" and row["index"].startswith(f"{prefix}-cve.v")
    assert row["last_success_at"].endswith("Z")

    resync = cli("sync", "--resync", "--feed", FEED, "--config", str(config))
    assert resync.returncode == 0, resync.stderr
    assert "snapshot_reason=manual" in resync.stderr
    after = json.loads(cli("status", "--json", "--config", str(config)).stdout)["feeds"][0]
    assert after["index"] != row["index"] and after["local_offset"] == head
    assert_matches_truth(os_client, f"{prefix}-cve", model, head)

    text = cli("status", "--config", str(config))
    assert text.returncode == 0 and f"{FEED}: ready, local {head}" in text.stdout


def test_config_from_environment_variable(config: Path) -> None:
    done = cli("sync", env={"CONTENT_SYNC_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr


def test_check_reachable_and_unreachable(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    good = write_config(
        tmp_path / "good.yaml", settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    )
    done = cli("check", "--config", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok  ") == 5 and "FAIL" not in done.stdout

    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    data["cti"]["base_url"] = "http://127.0.0.1:9/api/v1"  # discard port: nothing listens
    bad = write_config(tmp_path / "bad.yaml", data)
    failed = cli("check", "--config", str(bad))
    assert failed.returncode == 1
    assert "FAIL feed vulnerabilities at http://127.0.0.1:9/api/v1/catalog" in failed.stdout
    assert "ok   OpenSearch" in failed.stdout


def test_check_names_a_temp_dir_that_cannot_be_written(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    good = cli("check", "--config", str(write_config(tmp_path / "good.yaml", data)))
    assert f"ok   temp dir {tmp_path} (sync.temp_dir)\n" in good.stdout, good.stdout
    assert not list(tmp_path.glob("content-sync-*")), "the probe file was left behind"
    (tmp_path / "file").write_text("")
    data["sync"]["temp_dir"] = str(tmp_path / "file")  # a file, not a directory
    bad = cli("check", "--config", str(write_config(tmp_path / "bad.yaml", data)))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"FAIL temp dir {tmp_path / 'file'} (sync.temp_dir): " in bad.stdout, bad.stdout
    assert "ok   OpenSearch" in bad.stdout


@pytest.mark.parametrize(
    ("section", "change", "key"),
    [
        ("sync", {"batch_size": 1001}, "sync.batch_size"),
        ("schedule", {"interval": 0}, "schedule.interval"),
        ("schedule", {"interval": "soon"}, "schedule.interval"),
        ("schedule", {"cron": "61 * * * *"}, "schedule.cron"),
        ("feeds", None, "feeds.0.index"),
        ("opensearch", {"hots": ["x"]}, "opensearch.hots: unknown key"),
        ("opensearch", {"verify_certs": "perhaps"}, "opensearch.verify_certs"),
        ("logging", {"level": "LOUD"}, "logging.level"),
        (
            "command_manager",
            {"password": "x", "password_file": "/run/credentials/cm"},
            "command_manager: password and password_file are both set",
        ),
    ],
)
def test_bad_settings_exit_2_naming_the_key(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    section: str,
    change: dict[str, Any] | None,
    key: str,
) -> None:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    if change is None:
        del data["feeds"][0]["index"]
    else:
        data.setdefault(section, {}).update(change)
    path = write_config(tmp_path / "s.yaml", data)
    for command in (["sync"], ["check"], ["status"], ["run"]):
        done = cli(*command, "--config", str(path))
        assert done.returncode == 2, (command, done.stderr)
        assert key in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_bad_environment_override_names_the_key(config: Path) -> None:
    done = cli("sync", "--config", str(config), env={"CONTENT_SYNC_SYNC__BATCH_SIZE": "5000"})
    assert done.returncode == 2 and "sync.batch_size" in done.stderr


def test_unknown_feed_and_bad_usage(config: Path) -> None:
    done = cli("sync", "--feed", "nope", "--config", str(config))
    assert done.returncode == 2 and "no feed named 'nope'" in done.stderr
    assert cli("frobnicate").returncode == 2
    assert cli("import", "--config", str(config)).returncode == 2


def test_secrets_never_printed(config: Path, feed_server: FeedServer) -> None:
    data = yaml.safe_load(config.read_text())
    data["logging"] = {"level": "DEBUG"}
    data["opensearch"]["username"] = "admin"
    data["command_manager"]["username"] = "wazuh"
    cm_password = tmp = config.parent / "cm-password"
    tmp.write_text(SECRET + "-file\n")
    data["command_manager"]["password_file"] = str(cm_password)
    feed_server.command_auth = ("wazuh", SECRET + "-file")
    path = write_config(config.parent / "debug.yaml", data)
    env = {"CONTENT_SYNC_OPENSEARCH__PASSWORD": SECRET}
    outputs = []
    for command in (["sync"], ["status"], ["status", "--json"], ["check"], ["sync", "--resync"]):
        done = cli(*command, "--config", str(path), env=env)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout + done.stderr)
    assert len(feed_server.commands) >= 1  # the password from the file was used
    for out in outputs:
        assert SECRET not in out
    # And a failure that mentions the settings does not print them either.
    bad = cli(
        "check",
        "--config",
        str(path),
        env={**env, "CONTENT_SYNC_OPENSEARCH__HOSTS": "http://127.0.0.1:9"},
    )
    assert bad.returncode == 1 and SECRET not in bad.stdout + bad.stderr


def test_manual_sync_while_another_writer_holds_the_feed(
    config: Path, os_client: OpenSearch, prefix: str
) -> None:
    assert cli("sync", "--config", str(config)).returncode == 0
    state_id = "vd_1.0.0_vd_4.8.0"
    doc = os_client.get(index=f"{prefix}-state", id=state_id)["_source"]
    doc.update({"lease_owner": "other-host:42:abc", "lease_expires_at": time.time() + 300})
    os_client.index(index=f"{prefix}-state", id=state_id, body=doc)
    done = cli("sync", "--resync", "--config", str(config))
    assert done.returncode == 1
    assert "being synchronised by other-host:42:abc" in done.stderr


def test_import_from_file_then_online_cycle_patches_on(
    config: Path, feed_server: FeedServer, os_client: OpenSearch, prefix: str, tmp_path: Path
) -> None:
    model = feed_server.model
    archive = tmp_path / "offline.zip"
    archive.write_bytes(model.snapshot_path.read_bytes())
    at = model.snapshot_offset
    done = cli("import", "--feed", FEED, str(archive), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"imported at offset {at}" in done.stdout
    assert_matches_truth(os_client, f"{prefix}-cve", model, at)
    state = os_client.get(index=f"{prefix}-state", id="vd_1.0.0_vd_4.8.0")["_source"]
    assert state["content_source"] == "file:offline.zip" and state["local_offset"] == at
    assert feed_server.requests_of("consumer") == []  # import never asks the feed

    head = model.append_changes(150)
    assert cli("sync", "--config", str(config)).returncode == 0
    assert_matches_truth(os_client, f"{prefix}-cve", model, head)


def test_import_of_corrupt_file_changes_nothing(
    config: Path, feed_server: FeedServer, os_client: OpenSearch, prefix: str, tmp_path: Path
) -> None:
    assert cli("sync", "--config", str(config)).returncode == 0
    before = os_client.get(index=f"{prefix}-state", id="vd_1.0.0_vd_4.8.0")["_source"]
    archive = tmp_path / feed_server.model.snapshot_name
    data = feed_server.model.snapshot_path.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    done = cli("import", "--feed", FEED, str(archive), "--offset", "5", "--config", str(config))
    assert done.returncode == 1 and "nothing changed" in done.stderr
    after = os_client.get(index=f"{prefix}-state", id="vd_1.0.0_vd_4.8.0")["_source"]
    assert (after["local_offset"], after["index"]) == (before["local_offset"], before["index"])
    assert_matches_truth(os_client, f"{prefix}-cve", feed_server.model, before["local_offset"])


def test_progress_bars_for_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """What `sync` draws in a terminal (progress_events picks this when stderr is a TTY)."""
    bars = progress_events(interactive=True)
    assert isinstance(bars, TerminalProgress)
    bars.snapshot_started(FEED, "first-run")
    bars.download_progress(FEED, 2_000_000, 8_000_000)
    bars.download_progress(FEED, 8_000_000, 8_000_000)
    bars.index_progress(FEED, 5000, 60_000_000)
    bars.close()
    err = capsys.readouterr().err
    assert f"{FEED} download: 100%" in err and "8.00M/8.00M" in err
    assert f"{FEED} indexing: 5.00k docs" in err
    assert isinstance(progress_events(interactive=False), LoggedProgress)
