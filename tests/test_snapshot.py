"""The snapshot reader on hand-made archives: good ones stream, bad ones fail with a clear error."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from content_sync.bulkbody import source_bytes
from content_sync.errors import SnapshotError
from content_sync.snapshot import SnapshotReader, offset_from_member_name

MEMBER = "vd_1.0.0_vd_4.8.0_120_1743416661.json"


def line(name: str, offset: int, payload: dict[str, Any] | None = None, key: str = "name") -> bytes:
    item = {key: name, "offset": offset, "version": 2, "inserted_at": "2024-01-01T00:00:00Z"}
    item["payload"] = payload if payload is not None else {"cveMetadata": {"cveId": name}}
    return json.dumps(item, ensure_ascii=False).encode() + b"\n"


def make_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def reader(path: Path, **kw: Any) -> SnapshotReader:
    opts: dict[str, Any] = {"max_uncompressed_bytes": 10**9, "max_line_bytes": 10**6}
    opts.update(kw)
    return SnapshotReader(path, **opts)


def test_streams_every_resource(tmp_path: Path) -> None:
    body = (
        line("CVE-2", 100) + line("TID-1", 7, {"x": "ümlaut €"}, key="resource") + line("CVE-1", 3)
    )
    r = reader(make_zip(tmp_path / "s.zip", {MEMBER: body}), max_offset=120)
    got = list(r)
    assert [(x.name, x.offset, x.version) for x in got] == [
        ("CVE-2", 100, 2),
        ("TID-1", 7, 2),
        ("CVE-1", 3, 2),
    ]
    assert json.loads(source_bytes(got[1].source())) == {
        "offset": 7,
        "version": 2,
        "document": {"x": "ümlaut €"},
    }
    assert (r.lines, r.bytes_read, r.complete) == (3, len(body), True)
    assert r.member_name == MEMBER
    assert offset_from_member_name(MEMBER) == 120


def test_bad_crc_detected(tmp_path: Path) -> None:
    body = b"".join(line(f"CVE-{i}", i) for i in range(50))
    path = make_zip(tmp_path / "s.zip", {MEMBER: body}, method=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"CVE-25")
    raw[pos + 4] ^= 0x01  # CVE-25 -> CVE-24 (or similar): still valid JSON, wrong CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="CRC"):
        list(reader(path))


def test_truncated_archive(tmp_path: Path) -> None:
    body = b"".join(line(f"CVE-{i}", i) for i in range(500))
    path = make_zip(tmp_path / "s.zip", {MEMBER: body})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SnapshotError, match="not a readable zip"):
        list(reader(path))


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({MEMBER: b"", "other.json": b""}, "exactly one member"),
        ({"../../etc/x.json": b""}, "refusing member name"),
        ({"dir/x.json": b""}, "refusing member name"),
        ({"snapshot.csv": b"a,b\n"}, "not a .json"),
        ({MEMBER: b"{not json}\n"}, "not valid JSON"),
        ({MEMBER: b"[1, 2]\n"}, "not one JSON object"),
        ({MEMBER: b'{"a": 1} {"b": 2}\n'}, "not one JSON object"),
        ({MEMBER: b'{"offset": 1, "payload": {}}\n'}, "no usable 'name'"),
        ({MEMBER: b'{"name": "", "offset": 1, "payload": {}}\n'}, "no usable 'name'"),
        ({MEMBER: b'{"name": "%s", "offset": 1, "payload": {}}\n' % (b"n" * 513)}, "usable"),
        ({MEMBER: b'{"name": 7, "offset": 1, "payload": {}}\n'}, "no usable 'name'"),
        ({MEMBER: b'{"name": "A", "offset": true, "payload": {}}\n'}, "offset True"),
        ({MEMBER: b'{"name": "A", "payload": {}}\n'}, "offset None"),
        ({MEMBER: b'{"name": "A", "offset": 1, "version": true, "payload": {}}\n'}, "version"),
        ({MEMBER: b'{"name": "A", "offset": 1, "version": 1.5, "payload": {}}\n'}, "version"),
        ({MEMBER: b'{"name": "A", "offset": -4, "payload": {}}\n'}, "offset"),
        ({MEMBER: b'{"name": "A", "offset": 4, "payload": []}\n'}, "no payload object"),
        ({MEMBER: line("A", 999)}, "beyond the snapshot"),
    ],
)
def test_hostile_or_broken_members(tmp_path: Path, members: dict[str, bytes], match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        list(reader(make_zip(tmp_path / "s.zip", members), max_offset=120))


def test_zip_bomb_refused_by_declared_size(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "s.zip", {MEMBER: b" " * 5_000_000})
    assert path.stat().st_size < 50_000
    with pytest.raises(SnapshotError, match="max_uncompressed_bytes"):
        list(reader(path, max_uncompressed_bytes=1_000_000))


def test_overlong_line_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = line("A", 1, {"blob": "x" * 3_000_000})
    with pytest.raises(SnapshotError, match="max_line_bytes"):
        list(reader(make_zip(tmp_path / "s.zip", {MEMBER: big}), max_line_bytes=1_000_000))


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    deep = (
        b'{"name": "A", "offset": 1, "payload": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n"
    )
    r = reader(make_zip(tmp_path / "s.zip", {MEMBER: deep}))
    with pytest.raises(SnapshotError, match="nested too deeply"):
        list(r)


@pytest.mark.parametrize(
    "text",
    [
        b'{"name": "A", "offset": 3, "version": 2, "payload": {"k": [1, {"x": "}"}]}}',
        b'{"name":"A","offset":3,"version":2,"payload":{"k":[1,{"x":"}"}]}}\r',
        b'{"name": "A", "offset": 3, "version": 2, "payload" : {"k": [1, {"x": "}"}]} }  ',
        # The payload is not the last key: the slow path parses the whole line.
        b'{"payload": {"k": [1, {"x": "}"}]}, "name": "A", "offset": 3, "version": 2}',
        b'{"name": "A", "payload": {"k": [1, {"x": "}"}]}, "offset": 3, "version": 2}',
        # "payload" inside a string before the real key does not fool the splice.
        b'{"name": "A", "note": "\\"payload\\": {", "offset": 3, "version": 2, '
        b'"payload": {"k": [1, {"x": "}"}]}}',
        # Nested "payload" keys belong to the payload.
        b'{"name": "A", "offset": 3, "version": 2, "payload": {"k": [1, {"x": "}"}], '
        b'"payload": {"a": 1}}}',
    ],
)
def test_every_layout_gives_the_same_document(tmp_path: Path, text: bytes) -> None:
    (resource,) = list(reader(make_zip(tmp_path / "s.zip", {MEMBER: text + b"\n"})))
    expected = json.loads(text)["payload"]
    assert (resource.name, resource.offset, resource.version) == ("A", 3, 2)
    assert json.loads(source_bytes(resource.source())) == {
        "offset": 3,
        "version": 2,
        "document": expected,
    }


def test_canonical_lines_are_not_parsed_whole(tmp_path: Path) -> None:
    """The fast path: only the metadata is parsed; the payload's bytes pass through unchanged
    (OpenSearch parses and validates them at indexing, see test_snapshot_init)."""
    text = b'{"name": "A", "offset": 3, "version": 2, "payload": {"b": 1.50, "a": "\\u00e9"}}\n'
    (resource,) = list(reader(make_zip(tmp_path / "s.zip", {MEMBER: text})))
    # The slow path would have re-encoded it: {"b":1.5,"a":"é"}.
    assert bytes(resource.payload) == b'{"b": 1.50, "a": "\\u00e9"}'


def test_the_fast_path_keeps_the_limits_of_the_slow_one(tmp_path: Path) -> None:
    """Names up to 512 characters, offsets up to the snapshot's, both through the fast path."""
    name = "n" * 512
    text = b'{"name": "%s", "offset": 120, "payload": {"a": 1}}\n' % name.encode()
    (resource,) = list(reader(make_zip(tmp_path / "s.zip", {MEMBER: text}), max_offset=120))
    assert (resource.name, resource.offset, resource.version) == (name, 120, 0)
    assert bytes(resource.payload) == b'{"a": 1}'  # as written: not re-encoded


def _canonical(n: int, start: int = 1) -> list[bytes]:
    return [line(f"CVE-{i}", i, {"n": i, "pad": "x" * 200}) for i in range(start, start + n)]


@pytest.mark.parametrize(
    ("odd", "kept"),
    [
        # A line of another layout (payload first) is read alone, its block's others too.
        (b'{"payload": {"n": 0}, "name": "ODD", "offset": 5, "version": 2}\n', True),
        (b"\n", False),  # a blank line: skipped, not a resource
        (b"   \r\n", False),
        (line("RES", 5, {"n": 0}, key="resource"), True),  # newer feeds say `resource`
    ],
)
def test_a_block_with_an_unusual_line_gives_every_line_in_order(
    tmp_path: Path, odd: bytes, kept: bool
) -> None:
    """Lines are decoded a block (an inflated piece) at a time; a block that is not all canonical
    lines is read line by line, with the same result as if each line were alone."""
    before, after = _canonical(40), _canonical(40, start=41)
    r = reader(make_zip(tmp_path / "s.zip", {MEMBER: b"".join([*before, odd, *after])}))
    got = [(x.name, json.loads(source_bytes(x.source()))) for x in r]
    expected = [(f"CVE-{i}", {"n": i, "pad": "x" * 200}) for i in range(1, 81)]
    if kept:
        name = json.loads(odd).get("name") or json.loads(odd)["resource"]
        expected.insert(40, (name, {"n": 0}))
    assert [(n, d["document"]) for n, d in got] == expected
    assert r.lines == len(expected) and r.blank_lines == (0 if kept else 1)


@pytest.mark.parametrize(
    ("odd", "match"),
    [
        (b"{not json}\n", "line 31 is not valid JSON"),
        # msgspec decodes a stream of lines as a stream of values: two on one line must not pass.
        (line("A", 5)[:-1] + b" " + line("B", 6), "line 31 is not one JSON object"),
        (line("A", 5)[:-1] + line("B", 6), "line 31 is not one JSON object"),
        (line("A", 999), r"line 31 \(A\) has offset 999, beyond the snapshot's 120"),
        (b'{"name": "A", "offset": 4, "payload": "text"}\n', r"line 31 \(A\) has no payload"),
        (b'{"name": "A", "payload": {}}\n', r"line 31 \(A\) has offset None"),
    ],
)
def test_a_bad_line_among_good_ones_is_named(tmp_path: Path, odd: bytes, match: str) -> None:
    body = b"".join([*_canonical(30), odd, *_canonical(30, start=31)])
    with pytest.raises(SnapshotError, match=match):
        list(reader(make_zip(tmp_path / "s.zip", {MEMBER: body}), max_offset=120))


def test_a_long_line_inside_a_block_is_refused(tmp_path: Path) -> None:
    """max_line_bytes below the size of an inflated piece: the block holds the long line whole,
    and it is still refused, by its number."""
    body = b"".join([*_canonical(20), line("LONG", 21, {"pad": "y" * 5000}), *_canonical(5, 22)])
    with pytest.raises(SnapshotError, match=r"line 21 is longer than sync\.max_line_bytes"):
        list(reader(make_zip(tmp_path / "s.zip", {MEMBER: body}), max_line_bytes=4096))


def test_lines_spanning_inflated_pieces_are_read_whole(tmp_path: Path) -> None:
    """An inflated piece is at most 1 MiB: a 2.5 MB line spans three, and its neighbours are
    read from the same pieces."""
    big = {"blob": "z" * 2_500_000}
    body = b"".join([*_canonical(3), line("BIG", 4, big), *_canonical(3, start=5)])
    r = reader(make_zip(tmp_path / "s.zip", {MEMBER: body}), max_line_bytes=3_000_000)
    got = {str(x.name): json.loads(source_bytes(x.source()))["document"] for x in r}
    assert got["BIG"] == big
    assert sorted(got) == sorted(["BIG"] + [f"CVE-{i}" for i in (1, 2, 3, 5, 6, 7)])
    assert r.lines == 7 and r.bytes_read == len(body)


def test_batches_are_the_lines_in_order(tmp_path: Path) -> None:
    # Poorly compressible: the 32 KiB reads of the archive inflate to many pieces.
    body = b"".join(line(f"CVE-{i}", i, {"r": os.urandom(150).hex()}) for i in range(1, 3001))
    r = reader(make_zip(tmp_path / "s.zip", {MEMBER: body}))
    batches = list(r.batches())
    assert len(batches) > 10
    names = [x.name for batch in batches for x in batch]
    assert names == [f"CVE-{i}" for i in range(1, 3001)]
    assert r.lines == 3000 and r.complete
