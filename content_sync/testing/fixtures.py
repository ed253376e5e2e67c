"""Pytest fixtures for the local feed.

Load with `pytest_plugins = ["content_sync.testing.fixtures"]`.

Function-scoped on purpose: tests mutate the model (append, rebuild) and inject faults. Each test
gets a clone of a model built once per session, which takes milliseconds.
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


@pytest.fixture(scope="session")
def _feed_model_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedModel]:
    # Built once per session; never handed out, only cloned.
    model = FeedModel(
        resources=FIXTURE_RESOURCES,
        history=FIXTURE_HISTORY,
        seed=FIXTURE_SEED,
        workdir=tmp_path_factory.mktemp("feed-template"),
    )
    yield model
    model.close()


@pytest.fixture
def feed_model(_feed_model_template: FeedModel, tmp_path: Path) -> Iterator[FeedModel]:
    """~300 resources, ~2500 changes of history, seed 1, snapshot published at the head.

    A private clone per test (same content as a fresh build), so tests may mutate it freely.
    """
    model = _feed_model_template.clone(tmp_path / "feed")
    yield model
    model.close()


@pytest.fixture
def feed_server(feed_model: FeedModel) -> Iterator[FeedServer]:
    """A FeedServer on 127.0.0.1 (free port) serving `feed_model`, stopped after the test."""
    with FeedServer(feed_model) as server:
        yield server
