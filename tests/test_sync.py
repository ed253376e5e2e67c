"""One full cycle against the real OpenSearch node and the local feed: snapshot, changes,
fallback, notification. Every test ends by comparing every document with the feed's truth."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.events import Events
from content_sync.store import Store
from content_sync.sync import CATCH_UP_REFRESH
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, state_of


def expected_command(alias: str, offset: int) -> dict[str, Any]:
    return {
        "commands": [
            {
                "action": {
                    "name": "update",
                    "args": {"index": alias, "offset": str(offset)},
                    "version": "5.0.0",
                },
                "source": "Content Manager",
                "timeout": 100,
                "target": {"id": "vulnerability-detector", "type": "server"},
            }
        ]
    }


def test_first_cycle_loads_snapshot_then_patches_to_head(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any, tmp_path: Path
) -> None:
    model = feed_server.model
    snapshot_at = model.snapshot_offset
    head = model.append_changes(2600)
    rt = runtime_factory(sync={"batch_size": 1000})
    alias = rt.settings.feed(FEED).index

    result = rt.feed_sync(FEED).run_cycle()

    assert result.outcome == "ok", result.error
    assert result.snapshots == ["first-run"]
    assert (result.before, result.after, result.remote) == (0, head, head)
    assert result.windows == 3  # 2600 changes in windows of at most 1000
    assert sum(result.changes.values()) > 0
    assert assert_matches_truth(os_client, alias, model, head) > 250
    state = state_of(rt)
    assert (state.local_offset, state.remote_offset, state.status) == (head, head, "ready")
    assert state.snapshot_offset == snapshot_at
    assert state.snapshot_link and state.snapshot_link.endswith(model.snapshot_name)
    assert state.index == next(iter(os_client.indices.get_alias(name=alias)))
    assert state.last_error is None and state.last_success_at
    assert feed_server.commands == [expected_command(alias, head)]
    windows = [
        (int(r.query["from_offset"]), int(r.query["to_offset"]))
        for r in feed_server.requests_of("changes")
    ]
    # Exactly these windows, each once; two are fetched ahead at a time, so in any order.
    assert sorted(windows) == [
        (snapshot_at, snapshot_at + 1000),
        (snapshot_at + 1000, snapshot_at + 2000),
        (snapshot_at + 2000, head),
    ]
    assert list((tmp_path / "tmp").iterdir()) == []  # the archive was removed


def test_in_sync_cycle_costs_one_feed_request_and_no_command(
    feed_server: FeedServer, runtime_factory: Any
) -> None:
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    assert sync.run_cycle().outcome == "ok"
    before = len(feed_server.requests)
    commands = len(feed_server.commands)

    calls: list[str] = []
    original = rt.store.client.transport.perform_request

    def counting(method: str, url: str, *args: Any, **kw: Any) -> Any:
        calls.append(f"{method} {url}")
        return original(method, url, *args, **kw)

    rt.store.client.transport.perform_request = counting
    result = sync.run_cycle()
    assert result.outcome == "ok" and not result.moved
    assert len(feed_server.requests) - before == 1
    assert len(calls) <= 2, calls
    assert len(feed_server.commands) == commands


def test_catch_up_over_later_cycles_without_snapshot(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"batch_size": 250})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    for n in (10, 700, 1):
        head = model.append_changes(n)
        result = sync.run_cycle()
        assert result.outcome == "ok" and result.snapshots == []
        assert result.after == head
        assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)
    assert [int(c["commands"][0]["action"]["args"]["offset"]) for c in feed_server.commands] == [
        model.snapshot_offset,
        model.head_offset - 701,
        model.head_offset - 1,
        model.head_offset,
    ]


def test_an_indented_feed_answer_is_applied_as_a_compact_one(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    """JSON allows whitespace between any two tokens: a feed that indents its answers sends
    payloads with newlines in them, which a bulk body (a document a line) cannot carry as such."""
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    assert sync.run_cycle().outcome == "ok"
    feed_server.pretty = True
    head = model.append_changes(600)
    result = sync.run_cycle()
    assert result.outcome == "ok", result.error
    assert result.after == head and result.changes["create"] > 0
    assert assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head) > 0


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_windows_read_what_the_windows_in_flight_wrote(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any, batch: int
) -> None:
    """Each window's multi-get runs while the window before is written and the one before
    that is being patched: a resource touched in consecutive windows (a third of the model's
    changes pick a recently touched one) must come from memory, in the right order."""
    model = feed_server.model
    rt = runtime_factory(sync={"batch_size": batch})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    head = model.append_changes(400, seed=batch)
    result = sync.run_cycle()
    assert result.outcome == "ok" and result.snapshots == [] and result.after == head
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)


def test_long_catch_up_refreshes_rarely_then_once_at_the_end(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"batch_size": 250})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    alias = rt.settings.feed(FEED).index
    seen: list[str | None] = []

    def interval() -> str | None:
        got = os_client.indices.get_settings(index=alias, name="index.refresh_interval")
        # An index without the setting is left out of the answer altogether.
        values = [v["settings"]["index"]["refresh_interval"] for v in got.values()]
        return values[0] if values else None

    class Watch(Events):
        def changes_applied(self, feed: str, kind: str, count: int) -> None:
            seen.append(interval())

    sync.events = Watch()
    head = model.append_changes(700)  # 3 windows
    assert sync.run_cycle().after == head
    assert seen and set(seen) == {CATCH_UP_REFRESH}
    assert interval() is None  # back to the default
    # Refreshed once at the end: a search sees every document without anyone refreshing.
    truth = dict(model.truth(head))
    assert os_client.count(index=alias)["count"] == len(truth)
    assert_matches_truth(os_client, alias, model, head)

    seen.clear()
    head = model.append_changes(100)  # one window: not worth two settings requests
    assert sync.run_cycle().after == head
    assert seen and set(seen) == {None}


def test_without_empties_windows_have_holes_and_content_is_right(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"with_empties": False, "batch_size": 300})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    head = model.append_changes(1200, empty_ratio=0.3)
    result = sync.run_cycle()
    assert result.outcome == "ok" and result.after == head
    assert state_of(rt).local_offset == head
    assert all(r.query.get("with_empties") == "false" for r in feed_server.requests_of("changes"))
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head, documents_only=True)


def test_patch_that_does_not_apply_falls_back_to_snapshot_in_the_same_cycle(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    bad = model.append_bad_patch()
    model.append_changes(300)
    model.publish_snapshot()  # the feed's new snapshot already carries the truth past `bad`
    head = model.append_changes(400)

    result = sync.run_cycle()

    assert result.outcome == "ok", result.error
    assert result.snapshots == ["drift"]
    assert result.after == head
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)
    assert state_of(rt).snapshot_offset == model.snapshot_offset > bad


def test_drift_that_the_snapshot_cannot_cure_fails_cleanly(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    model.append_changes(50)
    model.append_bad_patch()  # after the newest snapshot: patching from it hits the same wall
    model.append_changes(50)
    result = sync.run_cycle()
    assert result.outcome == "failed"
    assert result.snapshots == ["drift"]
    state = state_of(rt)
    assert state.status == "failed" and state.last_error and "does not apply" in state.last_error
    # What is recorded is complete: content equals the truth at the recorded offset.
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, state.local_offset)


def test_feed_rebuilt_with_lower_offset_reinitialises(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    old_head = model.head_offset
    model.rebuild(resources=120, seed=9)
    assert model.head_offset < old_head
    result = sync.run_cycle()
    assert result.outcome == "ok" and result.snapshots == ["feed-rebuilt"]
    assert result.after == model.head_offset
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, model.head_offset)


def test_window_interrupted_between_bulk_and_state_write_converges_on_rerun(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any, monkeypatch: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"batch_size": 200})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    start = model.snapshot_offset
    head = model.append_changes(1000)

    real_save = Store.save_state

    class Crash(BaseException):
        """The process dies: nothing after this point runs."""

    def crash_on_third_window(self: Store, state_id: str, state: Any) -> None:
        if state.status == "running" and state.local_offset == start + 600:
            raise Crash()
        real_save(self, state_id, state)

    monkeypatch.setattr(Store, "save_state", crash_on_third_window)
    with pytest.raises(Crash):
        sync.run_cycle()
    monkeypatch.setattr(Store, "save_state", real_save)
    state = state_of(rt)
    assert (state.local_offset, state.status) == (start + 400, "running")
    # The third window's bulk landed but was not recorded.
    assert (
        os_client.get(
            index=rt.settings.feed(FEED).index,
            id=next(
                iter(name for name, doc in model.truth(start + 600) if doc["offset"] > start + 400)
            ),
        )["_source"]["offset"]
        > start + 400
    )

    again = sync.run_cycle()
    assert again.outcome == "ok" and again.snapshots == [] and again.after == head
    # Appends ('-') and moves applied twice would show here as a mismatch.
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)


def test_transient_budget_exhausted_then_next_cycle_resumes(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    head = model.append_changes(1500)
    feed_server.inject("503", times=1000, on="changes")
    result = sync.run_cycle()
    assert result.outcome == "failed" and "503" in (result.error or "")
    state = state_of(rt)
    assert state.status == "failed"
    assert state.local_offset == model.snapshot_offset  # the snapshot stands; never reset to 0
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, state.local_offset)

    feed_server.clear_faults()
    again = sync.run_cycle()
    assert again.outcome == "ok" and again.snapshots == [] and again.after == head
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)
    assert state_of(rt).last_error is None


def test_a_stop_while_the_feed_is_retried_leaves_the_state_as_it_was(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    """Stopping while the consumer request waits to be retried: the cycle did nothing, so a
    failed status (and its error) stays failed; nothing is retried, no lease stays held."""
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    model.append_changes(100)
    feed_server.inject("503", times=1000, on="changes")
    assert sync.run_cycle().outcome == "failed"
    failed = state_of(rt)
    assert failed.status == "failed" and failed.last_error

    feed_server.clear_faults()
    feed_server.inject("503", times=1000, on="consumer")
    asked = len(feed_server.requests)
    rt.stop.set()
    assert sync.run_cycle().outcome == "stopped"
    state = state_of(rt)
    assert (state.status, state.last_error, state.local_offset, state.lease_owner) == (
        "failed",
        failed.last_error,
        failed.local_offset,
        None,
    )
    assert [r.kind for r in feed_server.requests[asked:]] == ["consumer"]  # tried once
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, state.local_offset)


def test_rate_limits_are_retried_within_the_cycle(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    head = model.append_changes(500)
    for fault, on in [
        ("429", "consumer"),
        ("429-zero", "changes"),
        ("500-ratelimit", "changes"),
        ("429-date", "snapshot"),
        ("502", "changes"),
    ]:
        feed_server.inject(fault, on=on)
    result = rt.feed_sync(FEED).run_cycle()
    assert result.outcome == "ok", result.error
    assert feed_server.pending_faults() == []
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)


def test_undelivered_command_is_kept_and_delivered_later(
    feed_server: FeedServer, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    alias = rt.settings.feed(FEED).index
    feed_server.inject("500", times=1000, on="command")
    result = sync.run_cycle()
    assert result.outcome == "ok" and not result.notified  # content is never held back
    assert state_of(rt).pending_command == model.snapshot_offset
    assert feed_server.commands == []

    feed_server.clear_faults()
    again = sync.run_cycle()
    assert not again.moved and again.notified
    assert feed_server.commands == [expected_command(alias, model.snapshot_offset)]
    assert state_of(rt).pending_command is None


def test_command_with_basic_auth(feed_server: FeedServer, runtime_factory: Any) -> None:
    feed_server.command_auth = ("wazuh", "s3cret")
    rt = runtime_factory(command_manager={"username": "wazuh", "password": "s3cret"})
    assert rt.feed_sync(FEED).run_cycle().notified
    assert len(feed_server.commands) == 1


def test_resync_keeps_readers_whole(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory()
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    alias = rt.settings.feed(FEED).index
    first_index = state_of(rt).index
    full = os_client.count(index=alias)["count"]

    counts: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            counts.append(os_client.count(index=alias)["count"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = sync.run_cycle(resync=True)
    finally:
        done.set()
        thread.join()
    assert result.outcome == "ok" and result.snapshots == ["manual"]
    assert len(counts) > 3 and min(counts) == full
    assert state_of(rt).index != first_index
    assert not os_client.indices.exists(index=first_index)  # the old index is gone
    assert_matches_truth(os_client, alias, model, model.head_offset)


def test_far_behind_with_a_newer_snapshot_loads_it_then_patches(
    feed_server: FeedServer, os_client: OpenSearch, runtime_factory: Any
) -> None:
    model = feed_server.model
    rt = runtime_factory(sync={"snapshot_threshold": 400})
    sync = rt.feed_sync(FEED)
    sync.run_cycle()
    model.append_changes(600)
    newer = model.publish_snapshot()
    head = model.append_changes(100)
    result = sync.run_cycle()
    assert result.outcome == "ok" and result.snapshots == ["far-behind"]
    assert result.windows == 1  # only (newer snapshot, head] was replayed
    assert state_of(rt).snapshot_offset == newer
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)

    # Behind by less than the threshold: changes only, even though no newer snapshot is needed.
    head = model.append_changes(300)
    again = sync.run_cycle()
    assert again.snapshots == [] and again.after == head

    # Far behind, but a newer snapshot would skip only 10 changes (a burst came after it): the
    # load would save nothing, so the changes are replayed.
    model.append_changes(10)
    model.publish_snapshot()
    head = model.append_changes(1500)
    index = state_of(rt).index
    burst = sync.run_cycle()
    assert burst.outcome == "ok" and burst.snapshots == [] and burst.after == head
    assert burst.windows == 2
    assert state_of(rt).index == index  # patched in place, not a new index
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, head)
