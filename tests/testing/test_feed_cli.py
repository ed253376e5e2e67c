"""`python -m content_sync.testing.feed` serves until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx


def test_feed_command(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "content_sync.testing.feed",
            "--resources",
            "60",
            "--port",
            "0",
            "--history",
            "40",
            "--seed",
            "2",
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        consumer_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/api/v1")
        assert consumer_url == f"{base_url}/catalog/contexts/vd_1.0.0/consumers/vd_4.8.0"
        data = httpx.get(consumer_url, timeout=10).json()["data"]
        assert data["last_offset"] == 100
        assert httpx.get(data["last_snapshot_link"], timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
