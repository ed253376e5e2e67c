"""The feed model against its own contract: history, versions, truth, snapshots (no HTTP)."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import pytest

from content_sync.testing.model import FeedModel
from content_sync.testing.replay import apply_changes, load_snapshot, read_snapshot


def _truth(model: FeedModel, offset: int | None = None) -> dict[str, dict[str, Any]]:
    return dict(model.truth(offset))


@pytest.fixture(scope="module")
def history_model(tmp_path_factory: pytest.TempPathFactory) -> FeedModel:
    """Read-only in this module: a history of ~4,000 changes on 300 resources."""
    return FeedModel(
        resources=300, history=4000, seed=7, workdir=tmp_path_factory.mktemp("history")
    )


def test_replay_from_empty_yields_truth(history_model: FeedModel) -> None:
    state = apply_changes({}, history_model.changes(0, history_model.head_offset))
    assert state == _truth(history_model)


def test_snapshot_equals_truth_at_its_offset(history_model: FeedModel) -> None:
    assert history_model.snapshot_offset == history_model.head_offset
    assert load_snapshot(history_model.snapshot_path) == _truth(history_model)


def test_snapshot_plus_later_changes_yields_truth(feed_model: FeedModel) -> None:
    snap_offset = feed_model.snapshot_offset
    snapshot = feed_model.snapshot_path
    head = feed_model.append_changes(1700)
    assert head == snap_offset + 1700
    state = load_snapshot(snapshot)
    apply_changes(state, feed_model.changes(snap_offset, head))
    assert state == _truth(feed_model)
    # ... and the truth at the old offset is still what the old snapshot holds.
    assert load_snapshot(snapshot) == _truth(feed_model, snap_offset)


def test_truth_at_every_intermediate_offset(history_model: FeedModel) -> None:
    state: dict[str, dict[str, Any]] = {}
    previous = 0
    for at in (1, 299, 300, 301, 1234, 2500, history_model.head_offset):
        apply_changes(state, history_model.changes(previous, at))
        assert state == _truth(history_model, at), at
        previous = at


def test_truth_is_a_sorted_stream(history_model: FeedModel) -> None:
    assert inspect.isgenerator(history_model.truth())
    names = [name for name, _ in history_model.truth()]
    assert names == sorted(names)
    assert [n for n, _, _ in history_model.truth_index()] == names


def test_truth_doc(history_model: FeedModel) -> None:
    name, entry = next(iter(history_model.truth()))
    assert history_model.truth_doc(name) == entry
    assert history_model.truth_doc("CVE-1900-0000") is None
    assert history_model.truth_doc(name, 0) is None


def test_changes_window_is_from_exclusive_to_inclusive(history_model: FeedModel) -> None:
    window = history_model.changes(1000, 2000)
    assert [c["offset"] for c in window] == list(range(1001, 2001))
    assert history_model.changes(5, 5) == []
    head = history_model.head_offset
    assert [c["offset"] for c in history_model.changes(head - 3, head + 50)] == [
        head - 2,
        head - 1,
        head,
    ]


def test_change_wire_format(history_model: FeedModel) -> None:
    kinds: Counter[str] = Counter()
    for change in history_model.changes(0, history_model.head_offset):
        kind = change["type"]
        kinds[kind] += 1
        assert list(change)[:5] == ["offset", "type", "version", "context", "resource"]
        assert change["context"] == "vd_1.0.0"
        extra = set(change) - {"offset", "type", "version", "context", "resource"}
        assert extra == {"create": {"payload"}, "update": {"operations"}, "delete": set()}[kind]
    assert kinds["create"] > 300
    assert kinds["update"] > 2000
    assert kinds["delete"] > 50


def test_with_empties_false_drops_only_empty_updates(history_model: FeedModel) -> None:
    full = history_model.changes(0, 3000)
    lean = history_model.changes(0, 3000, with_empties=False)
    empties = [c for c in full if c["type"] == "update" and c["operations"] == []]
    assert empties
    assert lean == [c for c in full if c not in empties]


def test_versions_count_every_change_of_a_resource(history_model: FeedModel) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    recreated = 0
    for change in history_model.changes(0, history_model.head_offset):
        kinds = seen[change["resource"]]
        assert change["version"] == len(kinds) + 1
        if change["type"] == "create" and kinds:
            assert kinds[-1] == "delete"
            recreated += 1
        kinds.append(change["type"])
    assert recreated >= 1  # a re-create continues the count


def test_history_uses_every_patch_feature(history_model: FeedModel) -> None:
    changes = history_model.changes(0, history_model.head_offset)
    ops = [op for c in changes if c["type"] == "update" for op in c["operations"]]
    assert {op["op"] for op in ops} == {"add", "remove", "replace", "move", "copy", "test"}
    paths = [op["path"] for op in ops] + [op["from"] for op in ops if "from" in op]
    assert any("~0" in p for p in paths)
    assert any("~1" in p for p in paths)
    assert any(p.endswith("/-") for p in paths)
    assert any(re.search(r"/\d+(/|$)", p) for p in paths)
    assert any(c["type"] == "update" and c["operations"] == [] for c in changes)
    # Several changes to one resource inside one 1000-window.
    for low in range(0, history_model.head_offset, 1000):
        per_resource = Counter(c["resource"] for c in changes if low < c["offset"] <= low + 1000)
        assert per_resource.most_common(1)[0][1] >= 3
    # Creates of brand-new resources after the initial ones.
    assert any(c["type"] == "create" and c["offset"] > 300 and c["version"] == 1 for c in changes)


def test_bad_patch_leaves_truth_unchanged_but_moves_offset_and_version(
    feed_model: FeedModel,
) -> None:
    name = next(n for n, _, _ in feed_model.truth_index() if n.startswith("CVE-"))
    before = feed_model.truth_doc(name)
    assert before is not None
    for _ in range(2):  # both kinds: failing test, missing path
        offset = feed_model.append_bad_patch(name)
        (change,) = feed_model.changes(offset - 1, offset)
        assert change["type"] == "update"
        assert change["resource"] == name
        with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
            jsonpatch.apply_patch(before["document"], change["operations"])
        after = feed_model.truth_doc(name)
        assert after is not None
        assert after["document"] == before["document"]
        assert after["offset"] == offset
        assert after["version"] == before["version"] + 1 == change["version"]
        before = after


def test_determinism(tmp_path: Path) -> None:
    def fingerprint(model: FeedModel) -> str:
        digest = hashlib.sha256()
        for name, entry in model.truth():
            digest.update(json.dumps([name, entry], sort_keys=True).encode())
        digest.update(json.dumps(model.changes(0, model.head_offset)).encode())
        return digest.hexdigest()

    a = FeedModel(resources=150, history=600, seed=11, workdir=tmp_path / "a")
    b = FeedModel(resources=150, history=600, seed=11, workdir=tmp_path / "b")
    c = FeedModel(resources=150, history=600, seed=12, workdir=tmp_path / "c")
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    lines_a = [line for _, line in _member_lines(a.snapshot_path)]
    assert lines_a == [line for _, line in _member_lines(b.snapshot_path)]
    assert a.append_changes(100, seed=5) == b.append_changes(100, seed=5)
    assert fingerprint(a) == fingerprint(b)


def _member_lines(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        (info,) = zf.infolist()
        with zf.open(info) as fh:
            return [(info.filename, line) for line in fh]


def test_snapshot_layout(history_model: FeedModel) -> None:
    snap = history_model.snapshot
    assert snap is not None
    offset, ts = history_model.snapshot_name.removesuffix(".zip").split("_")
    assert int(offset) == history_model.snapshot_offset
    with zipfile.ZipFile(history_model.snapshot_path) as zf:
        (info,) = zf.infolist()
        assert info.filename == f"vd_1.0.0_vd_4.8.0_{offset}_{ts}.json"
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert zf.testzip() is None  # CRC
    lines = list(read_snapshot(history_model.snapshot_path))
    assert len(lines) == snap.lines == sum(1 for _ in history_model.truth_index())
    assert all(
        list(line) == ["name", "offset", "version", "inserted_at", "payload"] for line in lines
    )
    offsets = [line["offset"] for line in lines]
    assert offsets != sorted(offsets)  # not in offset order, like the real feed
    assert {"FEED-GLOBAL", "OSCPE-GLOBAL", "CNA-MAPPING-GLOBAL", "TID-0001"} <= {
        line["name"] for line in lines
    }


def test_content_is_realistic(tmp_path: Path) -> None:
    model = FeedModel(resources=1500, seed=3, workdir=tmp_path)
    sizes = []
    non_ascii = 0
    rejected = 0
    for name, entry in model.truth():
        doc = entry["document"]
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        sizes.append(len(raw.encode()))
        non_ascii += not raw.isascii()
        if not name.startswith("CVE-"):
            continue
        assert doc["dataType"] == "CVE_RECORD"
        assert doc["dataVersion"] == "5.1"
        meta = doc["cveMetadata"]
        assert meta["cveId"] == name
        assert {"assignerOrgId", "state", "dateReserved", "datePublished", "dateUpdated"} <= set(
            meta
        )
        cna = doc["containers"]["cna"]
        if meta["state"] == "REJECTED":
            rejected += 1
            continue
        assert cna["descriptions"]
        assert cna["references"]
        assert cna["metrics"]
        assert "problemTypes" in cna
        assert all(isinstance(a.get("versions", []), list) for a in cna["affected"])
        assert any(a.get("versions") for a in cna["affected"])
        assert re.fullmatch(r"KB\d+", cna["x_remediations"]["windows"][0]["anyOf"][0])
    mean = sum(sizes) / len(sizes)
    assert 9_000 < mean < 15_000, mean
    assert min(sizes) < 2_000
    assert max(sizes) > 40_000
    assert non_ascii > 10
    assert rejected > 10
    assert model.snapshot_lines == 1500


def test_rebuild_lowers_head(feed_model: FeedModel) -> None:
    old_head = feed_model.head_offset
    feed_model.rebuild(resources=120, seed=99, history=30)
    assert feed_model.head_offset == 150 < old_head
    assert feed_model.snapshot_offset == 150
    assert load_snapshot(feed_model.snapshot_path) == _truth(feed_model)
    assert apply_changes({}, feed_model.changes(0, 150)) == _truth(feed_model)
    with pytest.raises(ValueError, match="lower"):
        feed_model.rebuild(resources=500, seed=1)


def test_publish_snapshot_at_new_head(feed_model: FeedModel) -> None:
    first = feed_model.snapshot_name
    head = feed_model.append_changes(50)
    assert feed_model.publish_snapshot() == head
    assert feed_model.snapshot_offset == head
    assert feed_model.snapshot_name != first
    assert {first, feed_model.snapshot_name} <= set(feed_model.snapshots)
    assert load_snapshot(feed_model.snapshot_path) == _truth(feed_model)


def test_workdir_is_temporary_when_not_given() -> None:
    model = FeedModel(resources=20, seed=1)
    workdir = model.workdir
    assert model.snapshot_path.parent == workdir
    assert workdir.exists()
    model.close()
    assert not workdir.exists()


def test_clone_is_independent_and_identical(tmp_path: Path) -> None:
    original = FeedModel(resources=120, history=400, seed=21, workdir=tmp_path / "o")
    fresh = FeedModel(resources=120, history=400, seed=21, workdir=tmp_path / "f")
    clone = original.clone(tmp_path / "c")
    head = original.head_offset
    assert clone.snapshot_path.read_bytes() == original.snapshot_path.read_bytes()
    assert clone.snapshot_path.parent == tmp_path / "c"
    clone.append_changes(300, seed=1)
    fresh.append_changes(300, seed=1)
    assert original.head_offset == head
    assert dict(clone.truth()) == dict(fresh.truth())
    assert clone.changes(0, clone.head_offset) == fresh.changes(0, fresh.head_offset)
    assert dict(original.truth()) == load_snapshot(original.snapshot_path)
