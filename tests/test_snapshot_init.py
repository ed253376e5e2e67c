"""Snapshot initialisation against the real node: every failure leaves the live alias, the state
offset and the disk as they were (status failed, readable last_error), or recovers by retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import opensearchpy
import pytest
from opensearchpy import OpenSearch

from content_sync.runtime import Runtime
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, make_settings, state_of


@pytest.fixture
def loaded(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> Iterator[tuple[Runtime, Path]]:
    """A runtime whose feed was initialised once; then a newer snapshot is published."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    rt = Runtime(make_settings(feed_server, opensearch_url, prefix, temp))
    assert rt.feed_sync(FEED).run_cycle().outcome == "ok"
    feed_server.model.append_changes(200)
    feed_server.model.publish_snapshot()
    yield rt, temp
    rt.close()


def assert_untouched(
    rt: Runtime, os_client: OpenSearch, temp: Path, before: dict[str, Any], match: str
) -> None:
    alias = rt.settings.feed(FEED).index
    state = state_of(rt)
    assert state.status == "failed"
    assert state.last_error and match in state.last_error, state.last_error
    assert state.local_offset == before["offset"]
    assert list(os_client.indices.get_alias(name=alias)) == [before["index"]]
    # No half-built index left, no temp file left.
    assert sorted(os_client.indices.get(index=f"{alias}.v*")) == [before["index"]]
    assert list(temp.iterdir()) == []


def snapshot_before(rt: Runtime) -> dict[str, Any]:
    state = state_of(rt)
    return {"offset": state.local_offset, "index": state.index}


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("truncated-zip", "is truncated"),  # read as it downloads: seen before the end
        ("bad-crc", "CRC"),
        ("malformed-line", "not valid JSON"),
    ],
)
def test_corrupt_archive_changes_nothing(
    loaded: tuple[Runtime, Path],
    feed_server: FeedServer,
    os_client: OpenSearch,
    fault: str,
    match: str,
) -> None:
    rt, temp = loaded
    before = snapshot_before(rt)
    feed_server.inject(fault, on="snapshot")
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "failed"
    assert_untouched(rt, os_client, temp, before, match)
    # The old content is still whole and correct.
    assert_matches_truth(
        os_client, rt.settings.feed(FEED).index, feed_server.model, before["offset"]
    )


def test_dropped_download_resumes_with_range(
    loaded: tuple[Runtime, Path], feed_server: FeedServer, os_client: OpenSearch
) -> None:
    rt, temp = loaded
    feed_server.inject("drop", on="snapshot", times=2)
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "ok", result.error
    ranges = [r.headers.get("Range") for r in feed_server.requests_of("snapshot")]
    assert ranges[-3] is None and all(r and r.startswith("bytes=") for r in ranges[-2:])
    model = feed_server.model
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, model.head_offset)
    assert list(temp.iterdir()) == []


def test_dropped_download_restarts_when_server_cannot_resume(
    loaded: tuple[Runtime, Path], feed_server: FeedServer, os_client: OpenSearch
) -> None:
    rt, _ = loaded
    feed_server.range_support = False
    feed_server.inject("drop", on="snapshot")
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "ok", result.error
    model = feed_server.model
    assert_matches_truth(os_client, rt.settings.feed(FEED).index, model, model.head_offset)


def test_snapshot_on_a_host_that_is_not_allowed(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path, os_client: OpenSearch
) -> None:
    # Same server, other host name: the link leaves the API's host, which is all that is allowed.
    feed_server.snapshot_host = "localhost"
    with Runtime(make_settings(feed_server, opensearch_url, prefix, tmp_path)) as rt:
        result = rt.feed_sync(FEED).run_cycle()
        assert result.outcome == "failed"
        assert "not in cti.allowed_hosts" in (state_of(rt).last_error or "")
        assert feed_server.requests_of("snapshot") == []
        assert not os_client.indices.exists_alias(name=rt.settings.feed(FEED).index)
    # The operator allows it: the same link is followed.
    with Runtime(
        make_settings(
            feed_server,
            opensearch_url,
            prefix,
            tmp_path,
            cti={"allowed_hosts": ["127.0.0.1", "localhost"]},
        )
    ) as rt:
        assert rt.feed_sync(FEED).run_cycle().outcome == "ok"


def test_bulk_item_failure_fails_the_load_and_removes_the_new_index(
    loaded: tuple[Runtime, Path], feed_server: FeedServer, os_client: OpenSearch, monkeypatch: Any
) -> None:
    rt, temp = loaded
    before = snapshot_before(rt)
    real_create = rt.store.create_content_index

    def create_then_block(alias: str, *, loading: bool) -> str:
        # The node rejects every write into the new index (index.blocks.write): real item errors.
        name = real_create(alias, loading=loading)
        os_client.indices.put_settings(index=name, body={"index": {"blocks.write": True}})
        return name

    monkeypatch.setattr(rt.store, "create_content_index", create_then_block)
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "failed"
    assert_untouched(rt, os_client, temp, before, "rejected")


def test_orphan_from_a_crashed_load_is_removed(
    loaded: tuple[Runtime, Path], feed_server: FeedServer, os_client: OpenSearch
) -> None:
    rt, _ = loaded
    alias = rt.settings.feed(FEED).index
    orphan = rt.store.create_content_index(alias, loading=True)
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "ok"
    assert not os_client.indices.exists(index=orphan)
    assert sorted(os_client.indices.get(index=f"{alias}.v*")) == [state_of(rt).index]


def test_content_index_mapping_stores_payload_without_indexing_it(
    loaded: tuple[Runtime, Path], os_client: OpenSearch
) -> None:
    rt, _ = loaded
    index = state_of(rt).index
    assert index is not None
    mapping = os_client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["properties"]["document"] == {"type": "object", "enabled": False}
    settings = os_client.indices.get_settings(index=index)[index]["settings"]["index"]
    assert "refresh_interval" not in settings  # restored to the default after the load
    assert settings.get("auto_expand_replicas") == "0-1"


def test_payload_that_is_not_json_fails_the_load(
    loaded: tuple[Runtime, Path], feed_server: FeedServer, os_client: OpenSearch, tmp_path: Path
) -> None:
    """A canonical line whose payload bytes are broken: the reader validates every line, so
    the load fails as a whole, naming the line, and nothing changes."""
    import zipfile

    rt, temp = loaded
    before = snapshot_before(rt)
    archive = tmp_path / "vd_1.0.0_vd_4.8.0_9_1.json.zip"
    good = b"".join(
        b'{"name": "CVE-%d", "offset": %d, "version": 1, "payload": {"a": %d}}\n' % (i, i, i)
        for i in range(1, 9)
    )
    bad = b'{"name": "CVE-9", "offset": 9, "version": 1, "payload": {"a": [1,}}\n'
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("vd_1.0.0_vd_4.8.0_9_1.json", good + bad)
    result = rt.feed_sync(FEED).import_archive(archive)
    assert result.outcome == "failed"
    assert "line 9 is not valid JSON" in (result.error or ""), result.error
    assert_untouched(rt, os_client, temp, before, "line 9")


@pytest.mark.parametrize("swapped", [True, False])
def test_a_stop_when_the_swap_answer_is_lost_never_deletes_the_live_index(
    loaded: tuple[Runtime, Path],
    feed_server: FeedServer,
    os_client: OpenSearch,
    monkeypatch: Any,
    swapped: bool,
) -> None:
    """The alias call times out as the service is stopping, so it is not retried. If the node
    did move the alias, the new index is the live one: it stays, whole (as after a kill right
    after the swap). If it did not, the new index is removed and the old one stays live."""
    rt, _ = loaded
    before = snapshot_before(rt)
    alias = rt.settings.feed(FEED).index
    indices = rt.store.client.indices
    real_update = indices.update_aliases

    def update_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        if swapped:
            real_update(*args, **kwargs)
        rt.stop.set()
        raise opensearchpy.ConnectionTimeout("TIMEOUT", "read timed out", None)

    monkeypatch.setattr(indices, "update_aliases", update_then_lose_the_answer)
    result = rt.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "stopped"
    live = list(os_client.indices.get_alias(name=alias))
    assert len(live) == 1
    if swapped:
        assert live != [before["index"]]
        assert_matches_truth(os_client, alias, feed_server.model, feed_server.model.snapshot_offset)
    else:
        assert live == [before["index"]]
        assert sorted(os_client.indices.get(index=f"{alias}.v*")) == [before["index"]]
    state = state_of(rt)
    assert (state.local_offset, state.lease_owner) == (before["offset"], None)
