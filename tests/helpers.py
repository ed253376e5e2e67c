"""Helpers shared by the integration tests: settings for a test, and comparison with the truth."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch, helpers

from content_sync.runtime import Runtime
from content_sync.settings import Settings
from content_sync.store import FeedState
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer

FEED = "vulnerabilities"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CONTENT_SYNC_* overrides, plus `extra`: what a
    subprocess of the console script gets, so only the test's own settings apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTENT_SYNC_")}
    env.update(extra)
    return env


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def exit_code(proc: subprocess.Popen[Any], log: Path, timeout: float = 60) -> int:
    """A service's exit code once it stops; if it does not stop in time, fail with every
    thread's stack (started with PYTHONFAULTHANDLER=1, SIGABRT makes it write them to `log`)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        pytest.fail(f"the service did not stop within {timeout} s:\n{log.read_text()[-20000:]}")


def settings_dict(
    server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path, **sections: Any
) -> dict[str, Any]:
    model = server.model
    data: dict[str, Any] = {
        "schedule": {"interval": "1h", "run_on_start": True, "jitter": 0},
        "cti": {"base_url": server.base_url, "timeout": 5},
        "feeds": [
            {
                "name": FEED,
                "context": model.context,
                "consumer": model.consumer,
                "index": f"{prefix}-cve",
            }
        ],
        "opensearch": {
            "hosts": [opensearch_url],
            "username": None,
            "verify_certs": False,
            "state_index": f"{prefix}-state",
            "bulk_docs": 100,
        },
        "command_manager": {"url": server.command_url, "verify_certs": False},
        "sync": {"temp_dir": str(tmp_path)},
        "retry": {"attempts": 4, "initial": 0.02, "max_wait": 0.2, "budget": 20},
        "http": {"port": 0},  # a free port: several services may run at once
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def make_settings(
    server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path, **sections: Any
) -> Settings:
    return Settings.model_validate(
        settings_dict(server, opensearch_url, prefix, tmp_path, **sections)
    )


def indexed(client: OpenSearch, alias: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=alias)
    return {
        hit["_id"]: hit["_source"]
        for hit in helpers.scan(client, index=alias, query={"query": {"match_all": {}}}, size=500)
    }


def assert_matches_truth(
    client: OpenSearch, alias: str, model: FeedModel, offset: int, *, documents_only: bool = False
) -> int:
    """Every document behind the alias equals the feed's truth at `offset`; returns the count."""
    got = indexed(client, alias)
    truth = dict(model.truth(offset))
    assert sorted(got) == sorted(truth), "the set of resources differs from the truth"
    for name, expected in truth.items():
        if documents_only:
            assert got[name]["document"] == expected["document"], name
        else:
            assert got[name] == expected, name
    return len(truth)


def state_of(runtime: Runtime) -> FeedState:
    feed = runtime.settings.feed(FEED)
    state = runtime.store.load_state(feed.state_id)
    assert state is not None
    return state
