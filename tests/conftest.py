"""Shared fixtures: a client for the real OpenSearch node, and per-test index names.

The node is started by `make test` (scripts/with-opensearch.sh), which exports OPENSEARCH_URL.
Tests never mock OpenSearch: respx is only for the HTTP edges (feed, command endpoint).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.runtime import Runtime
from content_sync.testing.server import FeedServer
from tests.helpers import make_settings

pytest_plugins = ["content_sync.testing.fixtures"]


def _url() -> str:
    url = os.environ.get("OPENSEARCH_URL")
    if not url:
        raise pytest.UsageError(
            "OPENSEARCH_URL is not set: run the suite with `make test` (it starts a local node), "
            "or point OPENSEARCH_URL at a disposable cluster"
        )
    return url


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("OPENSEARCH_URL", "")
    if not url:
        return "OpenSearch: OPENSEARCH_URL not set"
    try:
        info = OpenSearch(url, timeout=10).info()
        return f"OpenSearch {info['version']['number']} at {url}"
    except Exception as exc:  # the header must not crash the run; the fixture will say why
        return f"OpenSearch at {url} unreachable: {exc}"


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    return _url()


@pytest.fixture(scope="session")
def os_client(opensearch_url: str) -> Iterator[OpenSearch]:
    client = OpenSearch(opensearch_url, timeout=60)
    client.cluster.health(wait_for_status="yellow")
    yield client
    client.close()


@pytest.fixture
def prefix(os_client: OpenSearch) -> Iterator[str]:
    """A unique name prefix for this test's indices and aliases; everything under it is removed."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    os_client.indices.delete(index=f"{name}*", ignore_unavailable=True, expand_wildcards="all")


@pytest.fixture
def runtime_factory(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> Iterator[Any]:
    """make(**sections) -> a Runtime on this test's feed and prefix, closed at the end."""
    made: list[Runtime] = []

    def make(**sections: Any) -> Runtime:
        rt = Runtime(
            make_settings(feed_server, opensearch_url, prefix, tmp_path / "tmp", **sections)
        )
        made.append(rt)
        return rt

    (tmp_path / "tmp").mkdir()
    yield make
    for rt in made:
        rt.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.reliability import FULL, SEED, TALLY

    if TALLY:
        mode = "full" if FULL else "CI subset"
        terminalreporter.write_sep("-", f"reliability ({mode}, seed {SEED})")
        for key, value in sorted(TALLY.items()):
            terminalreporter.write_line(f"{key}: {value}")
