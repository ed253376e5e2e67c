"""Pytest fixtures for the local feed.

Load with `pytest_plugins = ["content_sync.testing.fixtures"]`.

Function-scoped on purpose: tests mutate the model (append, rebuild) and inject faults. Building
the small model takes well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer

__all__ = ["feed_model", "feed_server"]

FIXTURE_RESOURCES = 300
FIXTURE_HISTORY = 2500
FIXTURE_SEED = 1


@pytest.fixture
def feed_model(tmp_path: Path) -> Iterator[FeedModel]:
    """~300 resources, ~2500 changes of history, seed 1, snapshot published at the head."""
    model = FeedModel(resources=FIXTURE_RESOURCES, history=FIXTURE_HISTORY, seed=FIXTURE_SEED,
                      workdir=tmp_path / "feed")
    yield model
    model.close()


@pytest.fixture
def feed_server(feed_model: FeedModel) -> Iterator[FeedServer]:
    """A FeedServer on 127.0.0.1 (free port) serving `feed_model`, stopped after the test."""
    with FeedServer(feed_model) as server:
        yield server
