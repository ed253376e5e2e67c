"""Smoke test of the OpenSearch primitives the product relies on, against the real node:
an index behind an alias, bulk indexing, realtime reads, and an atomic alias swap."""

from __future__ import annotations

from opensearchpy import OpenSearch, helpers


def _load(client: OpenSearch, index: str, docs: dict[str, dict[str, object]]) -> None:
    client.indices.create(index=index, body={"settings": {"number_of_replicas": 0}})
    actions = ({"_index": index, "_id": k, "_source": v} for k, v in docs.items())
    ok, errors = helpers.bulk(client, actions, refresh="wait_for")
    assert ok == len(docs)
    assert errors == []


def test_bulk_alias_and_atomic_swap(os_client: OpenSearch, prefix: str) -> None:
    alias = f"{prefix}-content"
    old, new = f"{prefix}-v1", f"{prefix}-v2"
    _load(os_client, old, {f"CVE-2024-{i:04d}": {"offset": i, "version": 1} for i in range(50)})
    os_client.indices.put_alias(index=old, name=alias)
    _load(os_client, new, {f"CVE-2025-{i:04d}": {"offset": i, "version": 2} for i in range(70)})

    assert os_client.count(index=alias)["count"] == 50
    os_client.indices.update_aliases(
        body={
            "actions": [
                {"remove": {"index": old, "alias": alias}},
                {"add": {"index": new, "alias": alias}},
            ]
        }
    )
    assert list(os_client.indices.get_alias(name=alias)) == [new]
    assert os_client.count(index=alias)["count"] == 70
    got = os_client.mget(index=alias, body={"ids": ["CVE-2025-0003", "CVE-2024-0003"]})["docs"]
    assert got[0]["found"] is True
    assert got[0]["_source"] == {"offset": 3, "version": 2}
    assert got[1]["found"] is False


def test_realtime_get_sees_unrefreshed_write(os_client: OpenSearch, prefix: str) -> None:
    index = f"{prefix}-rt"
    os_client.indices.create(
        index=index, body={"settings": {"refresh_interval": "-1", "number_of_replicas": 0}}
    )
    os_client.index(index=index, id="FEED-GLOBAL", body={"offset": 7})
    assert os_client.get(index=index, id="FEED-GLOBAL")["_source"] == {"offset": 7}
