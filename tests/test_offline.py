"""Air-gapped and proxied sites: offline feeds, a forwarding proxy, the kept-archive fallback.
(Import from a file is covered in test_cli.)"""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
)
from tests.test_cli import SCRIPT, cli, write_config

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding"}


class ForwardProxy:
    """A minimal HTTP forward proxy on loopback (absolute-form requests), recording paths."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                target = urlsplit(self.path)
                outer.seen.append(target.path)
                conn = http.client.HTTPConnection(
                    target.hostname or "", target.port or 80, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                path = target.path + (f"?{target.query}" if target.query else "")
                conn.request("GET", path, headers=headers)
                upstream = conn.getresponse()
                body = upstream.read()
                self.send_response(upstream.status)
                for key, value in upstream.getheaders():
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    p = ForwardProxy()
    yield p
    p.close()


def test_everything_through_a_proxy_from_the_settings(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
    proxy: ForwardProxy,
) -> None:
    model = feed_server.model
    head = model.append_changes(100)
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path, cti={"proxy": proxy.url})
    done = cli("sync", "--config", str(write_config(tmp_path / "s.yaml", data)))
    assert done.returncode == 0, done.stderr
    kinds = {p.split("/")[-1] if "/changes" not in p else "changes" for p in proxy.seen}
    assert "changes" in kinds and model.snapshot_name in kinds and "vd_4.8.0" in kinds
    # Nothing went around the proxy (the Command Manager is not the feed: it is reached directly).
    assert len(proxy.seen) == len([r for r in feed_server.requests if r.kind != "command"])
    assert_matches_truth(os_client, f"{prefix}-cve", model, head)


def test_proxy_from_the_standard_environment(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    proxy: ForwardProxy,
) -> None:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    config = write_config(tmp_path / "s.yaml", data)
    done = cli("sync", "--config", str(config), env={"HTTP_PROXY": proxy.url, "NO_PROXY": ""})
    assert done.returncode == 0, done.stderr
    assert any(p.endswith(feed_server.model.snapshot_name) for p in proxy.seen)


def test_offline_feed_never_opens_a_connection(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    data = settings_dict(
        feed_server, opensearch_url, prefix, tmp_path, schedule={"interval": "1s", "jitter": 0}
    )
    data["feeds"][0]["offline"] = True
    config = write_config(tmp_path / "s.yaml", data)
    assert cli("sync", "--config", str(config)).returncode == 0
    assert cli("sync", "--feed", FEED, "--config", str(config)).returncode == 1
    checked = cli("check", "--config", str(config))
    assert checked.returncode == 0 and f"skip feed {FEED} (offline)" in checked.stdout
    env = clean_env()
    service = subprocess.Popen(
        [SCRIPT, "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)  # four intervals of the (unscheduled) feed
    service.send_signal(signal.SIGTERM)
    _, err = service.communicate(timeout=60)
    assert service.returncode == 0 and "offline (content comes by import)" in err
    archive = tmp_path / "air-gap.zip"
    archive.write_bytes(feed_server.model.snapshot_path.read_bytes())
    assert cli("import", "--feed", FEED, str(archive), "--config", str(config)).returncode == 0
    status = cli("status", "--config", str(config))
    assert status.returncode == 0 and "(offline)" in status.stdout
    # Not one request to the feed from any command (`check` did reach the Command Manager).
    assert [r for r in feed_server.requests if r.kind != "command"] == []
    assert_matches_truth(
        os_client, f"{prefix}-cve", feed_server.model, feed_server.model.snapshot_offset
    )


def test_kept_archive_restores_content_when_the_feed_cannot_serve_a_snapshot(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    model = feed_server.model
    keep = tmp_path / "keep"
    keeping = {"keep_archive": True, "keep_archive_dir": str(keep)}
    settings = make_settings(feed_server, opensearch_url, prefix, tmp_path, sync=keeping)
    with Runtime(settings) as rt:
        sync = rt.feed_sync(FEED)
        kept_at = model.snapshot_offset
        assert sync.run_cycle().outcome == "ok"
        assert sorted(p.name for p in keep.iterdir()) == [
            "vd_1.0.0_vd_4.8.0.json",
            "vd_1.0.0_vd_4.8.0.zip",
        ]
        assert oct((keep / "vd_1.0.0_vd_4.8.0.zip").stat().st_mode)[-3:] == "600"

        # Drift, while the feed's snapshot cannot be downloaded.
        alias = f"{prefix}-cve"
        os_client.delete(index=alias, id=next(name for name, _ in model.truth()), refresh=True)
        model.append_changes(50)
        model.append_bad_patch()
        model.publish_snapshot()
        head = model.append_changes(50)
        feed_server.inject("503", times=10_000, on="snapshot")
        result = sync.run_cycle()
        assert result.outcome == "failed" and result.snapshots == ["drift"]
        state = state_of(rt)
        assert (
            state.local_offset == kept_at and state.content_source == "kept:vd_1.0.0_vd_4.8.0.zip"
        )
        assert "older than the feed's" in (state.last_error or "")
        assert_matches_truth(os_client, alias, model, kept_at)  # the deleted document is back

        # The feed recovers: the next cycle falls back to its newer snapshot and ends at the head.
        feed_server.clear_faults()
        again = sync.run_cycle()
        assert again.outcome == "ok", again.error
        assert_matches_truth(os_client, alias, model, head)
        assert state_of(rt).content_source == "feed"


def test_an_archive_that_cannot_be_kept_costs_the_copy_not_the_cycle(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk or an unusable keep_archive_dir once the content is live: a warning, and the
    initialisation is recorded as the success it is."""
    model = feed_server.model
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the keep directory should be")
    keeping = {"keep_archive": True, "keep_archive_dir": str(blocker / "keep")}
    settings = make_settings(feed_server, opensearch_url, prefix, tmp_path, sync=keeping)
    with Runtime(settings) as rt:
        result = rt.feed_sync(FEED).run_cycle()
        assert result.outcome == "ok", result.error
        state = state_of(rt)
        assert (state.local_offset, state.status) == (model.snapshot_offset, "ready")
        assert state.last_error is None
        assert_matches_truth(os_client, f"{prefix}-cve", model, model.snapshot_offset)
    assert any("could not keep the snapshot archive" in r.getMessage() for r in caplog.records)
    # The downloaded archive was removed all the same (the feed's own snapshots live in feed/).
    assert not [p for p in tmp_path.rglob("*.zip") if "feed" not in p.relative_to(tmp_path).parts]
