"""A catch-up that dies (SIGKILL, host restart) leaves the content index refreshing every
CATCH_UP_REFRESH: the first cycle of the next process puts the default back, even a cycle with
nothing to do, and later cycles of that process pay no request for the check."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.events import Events
from content_sync.runtime import Runtime
from content_sync.sync import CATCH_UP_REFRESH
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, indexed, state_of


def refresh_interval(client: OpenSearch, alias: str) -> str | None:
    got = client.indices.get_settings(index=alias, name="index.refresh_interval")
    # An index without the setting (the cluster default) is left out of the answer.
    values = [v["settings"]["index"]["refresh_interval"] for v in got.values()]
    return values[0] if values else None


def count_requests(rt: Runtime) -> list[str]:
    calls: list[str] = []
    original = rt.store.client.transport.perform_request

    def counting(method: str, url: str, *args: Any, **kw: Any) -> Any:
        calls.append(f"{method} {url}")
        return original(method, url, *args, **kw)

    rt.store.client.transport.perform_request = counting  # type: ignore[method-assign]
    return calls


def test_next_process_restores_a_refresh_interval_left_by_a_dead_catch_up(
    feed_server: FeedServer,
    os_client: OpenSearch,
    runtime_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = feed_server.model
    first = runtime_factory()
    assert first.feed_sync(FEED).run_cycle().outcome == "ok"
    alias = first.settings.feed(FEED).index
    head = model.head_offset
    # What a catch-up killed between its windows leaves behind.
    os_client.indices.put_settings(
        index=alias, body={"index": {"refresh_interval": CATCH_UP_REFRESH}}
    )
    before = indexed(os_client, alias)

    rt = runtime_factory()  # the next process
    caplog.set_level(logging.WARNING, logger="content_sync.sync")
    result = rt.feed_sync(FEED).run_cycle()

    assert result.outcome == "ok", result.error
    assert not result.moved and result.snapshots == [] and result.windows == 0
    assert refresh_interval(os_client, alias) is None  # back to the default
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("interrupted catch-up" in w and CATCH_UP_REFRESH in w for w in warnings), warnings
    assert indexed(os_client, alias) == before
    assert_matches_truth(os_client, alias, model, head)
    state = state_of(rt)
    assert (state.local_offset, state.status, state.lease_owner) == (head, "ready", None)

    # Once per process: later cycles with nothing to do cost what they did before, whether
    # the same FeedSync runs them or a new one (the service makes one per cycle).
    requests = len(feed_server.requests)
    calls = count_requests(rt)
    for sync in (rt.feed_sync(FEED), rt.feed_sync(FEED)):
        caplog.clear()
        for _ in range(2):
            assert sync.run_cycle().outcome == "ok"
        assert not [r for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(feed_server.requests) - requests == 4
    assert len(calls) <= 2 * 4, calls
    assert not [c for c in calls if "_settings" in c], calls


def test_a_catch_up_running_in_this_process_is_not_mistaken_for_a_dead_one(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"batch_size": 250})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    alias = rt.settings.feed(FEED).index
    other = runtime_factory().feed_sync(FEED)  # has not checked yet
    seen: list[tuple[str | None, str | None]] = []

    class Watch(Events):
        def changes_applied(self, feed: str, kind: str, count: int) -> None:
            seen.append((refresh_interval(os_client, alias), other._stale_refresh()))

    sync.events = Watch()
    head = model.append_changes(700)  # 3 windows: a slowed catch-up
    assert sync.run_cycle().after == head
    assert seen and set(seen) == {(CATCH_UP_REFRESH, None)}
    assert refresh_interval(os_client, alias) is None
