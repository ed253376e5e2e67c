"""The in-memory patch engine: order, replays, resets, drift."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import orjson
import pytest

from content_sync.errors import BadFeedAnswer, DriftError
from content_sync.feed import Change, _decode_changes, _parse_change
from content_sync.patching import apply_window, needs_stored, touched


def doc(offset: int, version: int, document: dict[str, Any]) -> dict[str, Any]:
    return {"offset": offset, "version": version, "document": document}


def upd(offset: int, name: str, version: int, *ops: dict[str, Any]) -> Change:
    return Change(offset, "update", name, version, operations=list(ops))


BASE = {"cveMetadata": {"cveId": "CVE-1"}, "list": [1, 2, 3], "a/b": {"~k": 1}}


def test_updates_apply_in_offset_order_with_every_operation() -> None:
    stored = {"CVE-1": doc(10, 3, copy.deepcopy(BASE))}
    changes = [
        upd(11, "CVE-1", 4, {"op": "add", "path": "/list/-", "value": 4}),
        upd(12, "CVE-1", 5, {"op": "test", "path": "/list/3", "value": 4}),
        upd(13, "CVE-1", 6, {"op": "replace", "path": "/a~1b/~0k", "value": 2}),
        upd(14, "CVE-1", 7, {"op": "copy", "from": "/list/0", "path": "/list/0"}),
        upd(15, "CVE-1", 8, {"op": "move", "from": "/list/4", "path": "/moved"}),
        upd(16, "CVE-1", 9, {"op": "remove", "path": "/list/0"}),
    ]
    result = apply_window(changes, stored)
    assert result.final == {
        "CVE-1": doc(
            16,
            9,
            {"cveMetadata": {"cveId": "CVE-1"}, "list": [1, 2, 3], "a/b": {"~k": 2}, "moved": 4},
        )
    }
    assert result.applied == {"create": 0, "update": 6, "delete": 0}


def test_create_update_delete_and_recreate_in_one_window() -> None:
    changes = [
        Change(1, "create", "X", 1, payload={"v": 1}),
        upd(2, "X", 2, {"op": "replace", "path": "/v", "value": 2}),
        Change(3, "delete", "X", 3),
        Change(4, "create", "Y", 1, payload={"w": []}),
        Change(5, "create", "X", 4, payload={"v": 10}),
        upd(6, "X", 5, {"op": "add", "path": "/z", "value": True}),
    ]
    result = apply_window(changes, {})
    assert result.final == {"X": doc(6, 5, {"v": 10, "z": True}), "Y": doc(4, 1, {"w": []})}
    assert touched(changes) == ["X", "Y"]
    assert needs_stored(changes) == []  # both are reset in the window: nothing is read


def test_only_resources_the_window_merely_updates_are_read() -> None:
    changes = [
        upd(1, "A", 2, {"op": "add", "path": "/x", "value": 1}),
        upd(2, "B", 2, {"op": "add", "path": "/x", "value": 1}),
        Change(3, "delete", "B", 3),
        Change(4, "create", "C", 1, payload={}),
        upd(5, "A", 3, {"op": "add", "path": "/y", "value": 1}),
    ]
    assert needs_stored(changes) == ["A"]
    # Whatever is stored for B and C does not matter: the result is the same without it.
    stored = {"A": doc(0, 1, {}), "B": doc(0, 1, {"old": 1}), "C": doc(0, 1, {"old": 1})}
    with_all = apply_window(changes, copy.deepcopy(stored))
    only_needed = apply_window(changes, {"A": copy.deepcopy(stored["A"])})
    assert with_all.final == only_needed.final


def test_replayed_window_converges_and_skips_applied_changes() -> None:
    changes = [
        upd(21, "A", 2, {"op": "add", "path": "/n/-", "value": 1}),
        upd(22, "A", 3, {"op": "add", "path": "/n/-", "value": 2}),
        upd(23, "B", 5, {"op": "add", "path": "/k", "value": "x"}),
        Change(24, "delete", "B", 6),
    ]
    first = apply_window(changes, {"A": doc(20, 1, {"n": []}), "B": doc(19, 4, {})})
    assert first.final == {"A": doc(22, 3, {"n": [1, 2]}), "B": None}
    # The bulk landed but the offset was not recorded: the same window runs again on the result.
    after = {k: copy.deepcopy(v) for k, v in first.final.items() if v is not None}
    again = apply_window(changes, after)
    assert again.final == {"B": None}  # A untouched: both its updates were applied before
    assert again.skipped == 2


def test_empty_update_moves_offset_and_version_only() -> None:
    result = apply_window([upd(8, "A", 3)], {"A": doc(5, 2, {"x": 1})})
    assert result.final == {"A": doc(8, 3, {"x": 1})}


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "/missing", "value": 1},
        {"op": "remove", "path": "/list/9"},
        {"op": "add", "path": "/list/7", "value": 0},
        {"op": "test", "path": "/list/0", "value": 99},
        {"op": "move", "from": "/nope", "path": "/x"},
        {"op": "frobnicate", "path": "/x"},
        {"path": "/x"},
    ],
)
def test_patch_that_does_not_apply_is_drift_and_touches_nothing(op: dict[str, Any]) -> None:
    stored = {"CVE-1": doc(10, 3, copy.deepcopy(BASE))}
    changes = [
        upd(11, "CVE-1", 4, {"op": "add", "path": "/ok", "value": 1}),
        upd(12, "CVE-1", 5, op),
    ]
    with pytest.raises(DriftError) as info:
        apply_window(changes, stored)
    assert info.value.offset == 12
    assert info.value.resource == "CVE-1"


def test_update_of_missing_resource_is_drift() -> None:
    with pytest.raises(DriftError, match="not in the index"):
        apply_window([upd(3, "GONE", 2, {"op": "add", "path": "/a", "value": 1})], {})


def test_delete_of_missing_resource_is_harmless() -> None:
    assert apply_window([Change(3, "delete", "GONE", 2)], {}).final == {"GONE": None}


# The feed's changes answers, decoded in one pass (feed._decode_changes) and checked in a few
# steps where valid: the same changes, or the same complaint, as a plainly decoded answer gives.
ITEMS: list[Any] = [
    {"offset": 1, "type": "update", "resource": "CVE-1", "version": 2, "operations": []},
    {"offset": 2, "type": "UPDATE", "resource": "CVE-1", "context": "ctx", "operations": None},
    {"offset": 3, "type": "update", "resource": "CVE-1", "operations": [{"op": "x"}]},
    {"offset": 4, "type": "create", "resource": "CVE-2", "payload": {"a": [1e2, 1.50]}},
    {"offset": 5, "type": "delete", "resource": "CVE-2", "version": 2**70, "payload": None},
    {"offset": 6, "type": "create", "resource": "CVE-3", "payload": {}, "operations": "junk"},
    {"offset": -1, "type": "update", "resource": "CVE-1"},
    {"offset": True, "type": "update", "resource": "CVE-1"},
    {"offset": 7.0, "type": "update", "resource": "CVE-1"},
    {"offset": 8, "type": "update", "resource": ""},
    {"offset": 8, "type": "update", "resource": ["CVE-1"]},
    {"offset": 8, "type": "update", "resource": "CVE-1", "context": "other"},
    {"offset": 8, "type": "update", "resource": "CVE-1", "context": 5},
    {"offset": 8, "type": "update", "resource": "CVE-1", "version": True},
    {"offset": 8, "type": "update", "resource": "CVE-1", "version": None},
    {"offset": 8, "type": "update", "resource": "CVE-1", "operations": {"op": "add"}},
    {"offset": 8, "type": "update", "resource": "CVE-1", "operations": ["add"]},
    {"offset": 8, "type": "create", "resource": "CVE-1"},
    {"offset": 8, "type": "create", "resource": "CVE-1", "payload": [1]},
    {"offset": 8, "type": "upsert", "resource": "CVE-1"},
    {"offset": 8, "type": None, "resource": "CVE-1"},
    {"offset": 8, "resource": "CVE-1"},
]


def _parsed(item: Any, body: bytes, one_pass: bool) -> Any:
    data = _decode_changes(body)["data"] if one_pass else msgspec.json.decode(body)["data"]
    assert len(data) == 1
    try:
        change = _parse_change(data[0], "ctx", "w")
    except BadFeedAnswer as exc:
        return str(exc)
    payload = change.payload
    document = orjson.loads(bytes(payload)) if isinstance(payload, msgspec.Raw) else payload
    return (
        change.offset,
        change.type,
        change.resource,
        change.version,
        change.operations,
        document,
    )


@pytest.mark.parametrize("item", ITEMS, ids=range(len(ITEMS)))
def test_changes_decoded_in_one_pass_are_checked_as_ever(item: Any) -> None:
    body = msgspec.json.encode({"data": [item]})
    assert _parsed(item, body, one_pass=True) == _parsed(item, body, one_pass=False)
