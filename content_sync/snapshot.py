"""Snapshot archive -> stream of content documents, with integrity checks.

    zip file --(one .json member, inflated as a stream)--> lines --(ijson C)--> Resource

Nothing is extracted and no line is held beyond the one being parsed. The member is read through
zipfile's own reader, which stops at the size the (ZIP64-aware) central directory declares and
checks the CRC-32 at the end; we additionally count bytes and lines, so a member whose headers
lie about its size (the >4 GiB 32-bit-size bug of the real feed) fails loudly instead of
silently truncating.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import ijson
import msgspec
import orjson

from content_sync.bulkbody import Source
from content_sync.errors import SnapshotError
from content_sync.growing import GrowingFile
from content_sync.lazydoc import decoded, fragment, is_raw_object
from content_sync.zipstream import StreamedMember, inflate_member

__all__ = ["Resource", "SnapshotReader", "content_source", "offset_from_member_name"]

if ijson.backend != "yajl2_c":  # pragma: no cover - depends on the installed wheel
    raise ImportError(
        f"ijson is using its {ijson.backend!r} backend, not the C backend 'yajl2_c': install an "
        "ijson wheel built with yajl (pip install --force-reinstall ijson) for usable speed"
    )

_MEMBER = re.compile(r"^(?P<ctx>.+)_(?P<offset>\d+)_(?P<ts>\d+)\.json$")
# Nesting: msgspec refuses a line nested deeper than Python's recursion limit (~1000 levels; the
# node's own JSON parser refuses 1000 too), before ijson (slow path) could be fed such a line:
# ijson keeps a prefix string per level, so 100,000 levels would exhaust any machine.
# Blank lines are not JSON Lines; a few are forgiven. A stream of them costs no memory but a
# Python loop turn each: a 1 MB archive of newlines inflates to a billion of them (minutes of CPU).
MAX_BLANK_LINES = 1000


# What the fast path accepts; anything else (a missing or empty name, a negative offset, a bool
# for an int) fails its decoding, and the slow path then says what is wrong.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class _Line(msgspec.Struct):
    """A snapshot line as the fast path reads it: metadata decoded, the payload left raw."""

    payload: msgspec.Raw = msgspec.Raw(b"")
    name: _Name | None = None
    resource: _Name | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] | None = None
    version: int = 0


_LINE = msgspec.json.Decoder(_Line)
_ENCODER = msgspec.json.Encoder()


@dataclass(slots=True)
class Resource:
    """One snapshot line: the payload either parsed, or as the raw JSON bytes of the line."""

    name: str
    offset: int
    version: int
    payload: dict[str, Any] | None = None
    raw_payload: bytes | msgspec.Raw | None = None

    def source(self) -> Source:
        """The content document as stored in OpenSearch, in pieces for a raw payload (see
        bulkbody.Source; source_bytes() joins them)."""
        if self.raw_payload is not None:
            head = b'{"offset":%d,"version":%d,"document":' % (self.offset, self.version)
            # Copied out of the inflated piece it is a view of: kept as a view until its bulk
            # request is answered, it held whole pieces alive (+11 MB peak RSS at 50,000).
            return (head, bytes(self.raw_payload), b"}")
        assert self.payload is not None
        return content_source(self.offset, self.version, self.payload)


def content_source(offset: int, version: int, document: dict[str, Any]) -> bytes:
    """Serialise a content document; absurdly deep nesting is refused, not a crash.

    Parts of a patched document may still be raw JSON text (lazydoc), which msgspec splices
    verbatim; it is ~5x the standard encoder on CVE records. What it refuses (a lone surrogate
    from a \\ud800 escape, absurd nesting) goes through orjson, then the standard encoder."""
    content = {"offset": offset, "version": version, "document": document}
    try:
        return _ENCODER.encode(content)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        return orjson.dumps(content, default=fragment)
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(
            {"offset": offset, "version": version, "document": decoded(document)},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
    except RecursionError:
        raise SnapshotError(f"document at offset {offset} is nested too deeply") from None


def offset_from_member_name(name: str) -> int | None:
    """`<context>_<consumer>_<offset>_<ts>.json` -> offset, else None."""
    m = _MEMBER.match(Path(name).name)
    return int(m.group("offset")) if m else None


@dataclass
class SnapshotReader:
    """Iterate an archive's resources; `lines` and `bytes_read` count what was consumed."""

    path: Path
    max_uncompressed_bytes: int
    max_line_bytes: int
    max_offset: int | None = None
    # Set: read the archive while it downloads (`path` is then the download's file).
    growing: GrowingFile | None = None
    member_name: str = ""
    declared_size: int = 0
    lines: int = 0
    blank_lines: int = 0
    bytes_read: int = 0
    complete: bool = False

    def _open_member(self, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
        infos = archive.infolist()
        if len(infos) != 1:
            names = ", ".join(i.filename for i in infos[:5])
            raise SnapshotError(
                f"{self.path}: expected exactly one member, found {len(infos)} ({names})"
            )
        info = infos[0]
        name = info.filename
        self._check_name(name)
        self._check_size(name, info.file_size)
        return info

    def _check_name(self, name: str) -> None:
        if (
            name.endswith("/")
            or "/" in name
            or "\\" in name
            or name.startswith(".")
            or ".." in name
        ):
            raise SnapshotError(f"{self.path}: refusing member name {name!r}")
        if not name.endswith(".json"):
            raise SnapshotError(f"{self.path}: member {name!r} is not a .json file")

    def _check_size(self, name: str, declared: int) -> None:
        if declared > self.max_uncompressed_bytes:
            raise SnapshotError(
                f"{self.path}: member {name!r} declares {declared} bytes, over "
                f"sync.max_uncompressed_bytes ({self.max_uncompressed_bytes})"
            )

    def __iter__(self) -> Iterator[Resource]:
        if self.growing is not None:
            yield from self._iter_growing(self.growing)
            return
        with self._zip() as archive:
            info = self._open_member(archive)
            self.member_name = info.filename
            self.declared_size = info.file_size
            yield from self._parse_member(inflate_member(self.path, info))
        if self.bytes_read != self.declared_size:
            raise SnapshotError(
                f"{self.path}: read {self.bytes_read} bytes of {info.filename!r}, "
                f"its header declares {self.declared_size}"
            )
        self.complete = True

    def _iter_growing(self, growing: GrowingFile) -> Iterator[Resource]:
        """The first member, read from the archive's start as it downloads; then, once the
        download is complete, the central directory must agree with what was read (one member,
        its name, sizes and CRC-32), or nothing read counts."""
        source = growing.reader()
        self.path = source.path
        member = StreamedMember(source)
        try:
            member.open()
            self._check_name(member.name)
            self._check_size(member.name, member.declared_size)
            self.member_name = member.name
            yield from self._parse_member(member.chunks(self.max_uncompressed_bytes))
        finally:
            source.close()
        growing.wait_complete()
        with self._zip() as archive:
            info = self._open_member(archive)
        member.verify(info)
        self.declared_size = info.file_size
        self.complete = True

    def _zip(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SnapshotError(f"{self.path}: not a readable zip archive: {exc}") from None

    def _parse_member(self, chunks: Iterator[bytes]) -> Iterator[Resource]:
        """_parse, with a read error reported as the archive's (member_name is set)."""
        try:
            yield from self._parse(chunks)
        except OSError as exc:
            raise SnapshotError(
                f"{self.path}: cannot read member {self.member_name!r} after line "
                f"{self.lines}: {exc}"
            ) from None

    def _parse(self, chunks: Iterator[bytes]) -> Iterator[Resource]:
        """The per-line loop, kept tight: it runs once per resource (millions of times)."""
        decode = _LINE.decode
        max_line, max_offset = self.max_line_bytes, self.max_offset
        for line in self._lines(chunks):
            if len(line) > max_line:
                self._check_line(len(line), self.lines + 1)
            # The real layout: `{"name": .., "offset": .., "version": .., .., "payload": {..}}`.
            # One msgspec pass over the line checks that the whole line is valid JSON, decodes
            # the few metadata keys and leaves the payload as its raw bytes, passed through
            # unchanged. Building Python objects for 12 KB records would cost more CPU than
            # OpenSearch spends indexing them.
            try:
                item = decode(line)
            except RecursionError:
                raise SnapshotError(
                    f"{self.path}: line {self.lines + 1} is nested too deeply (1000 levels or more)"
                ) from None
            except msgspec.MsgspecError:
                item = None
            if item is not None and is_raw_object(item.payload):
                name = item.name if item.name is not None else item.resource
                offset = item.offset
                if (
                    name is not None
                    and offset is not None
                    and (max_offset is None or offset <= max_offset)
                ):
                    self.lines += 1
                    yield Resource(name, offset, item.version, raw_payload=item.payload)
                    continue
            if _blank(line):
                self.blank_lines += 1
                if self.blank_lines > MAX_BLANK_LINES:
                    raise SnapshotError(
                        f"{self.path}: more than {MAX_BLANK_LINES} blank lines (after line "
                        f"{self.lines}): not a JSON Lines snapshot"
                    )
                continue
            # Not the layout above: ijson reads it, and says what is wrong with it.
            self.lines += 1
            yield self._slow(line, f"{self.path}: line {self.lines}")

    def _lines(self, chunks: Iterator[bytes]) -> Iterator[bytes | memoryview]:
        """Split the inflated stream into lines: views into the chunk (no copy), except a line
        that spans chunks. Memory: one chunk plus one line."""
        head: list[bytes] = []  # the start of the current line, when it spans chunks
        held = 0
        for chunk in chunks:
            self.bytes_read += len(chunk)
            if self.bytes_read > self.max_uncompressed_bytes:
                raise SnapshotError(
                    f"{self.path}: member inflates beyond sync.max_uncompressed_bytes "
                    f"({self.max_uncompressed_bytes})"
                )
            end = chunk.find(b"\n")
            if end < 0:
                # Pieces of a long line are gathered, not re-joined chunk after chunk (which
                # copies the line over and over), and refused as soon as they exceed the limit.
                head.append(chunk)
                held += len(chunk)
                self._check_line(held, self.lines + 1)
                continue
            view = memoryview(chunk)
            if head:
                self._check_line(held + end, self.lines + 1)
                head.append(chunk[:end])
                yield b"".join(head)
            else:
                yield view[:end]
            start = end + 1
            while (end := chunk.find(b"\n", start)) >= 0:
                yield view[start:end]
                start = end + 1
            rest = chunk[start:]
            head, held = ([rest], len(rest)) if rest else ([], 0)
            self._check_line(held, self.lines + 1)
        if head:
            yield b"".join(head)

    def _check_line(self, size: int, number: int) -> None:
        if size > self.max_line_bytes:
            raise SnapshotError(
                f"{self.path}: line {number} is longer than sync.max_line_bytes "
                f"({self.max_line_bytes})"
            )

    def _slow(self, line: bytes | memoryview, where: str) -> Resource:
        try:
            values = list(ijson.items(bytes(line), "", use_float=True, multiple_values=True))
        except ijson.JSONError as exc:
            raise SnapshotError(f"{where} is not valid JSON: {exc}") from None
        if len(values) != 1 or not isinstance(values[0], dict):
            raise SnapshotError(f"{where} is not one JSON object")
        item: dict[str, Any] = values[0]
        name, offset, version = self._meta(item, where)
        payload = item.get("payload")
        if not isinstance(payload, dict):
            raise SnapshotError(f"{where} ({name}) has no payload object")
        return Resource(name, offset, version, payload=payload)

    def _meta(self, item: dict[str, Any], where: str) -> tuple[str, int, int]:
        name = item.get("name", item.get("resource"))
        if not isinstance(name, str) or not name or len(name) > 512:
            raise SnapshotError(f"{where} has no usable 'name'")
        offset, version = item.get("offset"), item.get("version", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise SnapshotError(f"{where} ({name}) has offset {offset!r}")
        if self.max_offset is not None and offset > self.max_offset:
            raise SnapshotError(
                f"{where} ({name}) has offset {offset}, beyond the snapshot's {self.max_offset}"
            )
        if isinstance(version, bool) or not isinstance(version, int):
            raise SnapshotError(f"{where} ({name}) has version {version!r}")
        return name, offset, version


def _blank(line: bytes | memoryview) -> bool:
    """Whitespace only (JSON Lines readers skip such lines). A record shows within its first
    bytes that it is not, so the whole line is looked at only when those are blank."""
    if not bytes(line[:16]).strip():
        return not bytes(line).strip()
    return False
