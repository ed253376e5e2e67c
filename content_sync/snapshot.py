"""Snapshot archive -> batches of content documents, with integrity checks.

    zip file --(one .json member, inflated as a stream)--> pieces of whole lines
        --(msgspec, one call a piece; ijson for a line of another layout)--> list[Line]

Nothing is extracted and no more than one inflated piece (and one line spanning two) is held.
The member is inflated by content_sync.zipstream, which checks its CRC-32 and sizes against the
(ZIP64-aware) central directory; lines are counted too, so a member whose headers lie about its
size (the >4 GiB 32-bit-size bug of the real feed) fails loudly instead of silently truncating.
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

from content_sync.bulkbody import Source, content_head
from content_sync.errors import SnapshotError
from content_sync.growing import GrowingFile
from content_sync.lazydoc import decoded, fragment, is_raw_object
from content_sync.zipstream import StreamedMember, inflate_member

__all__ = ["Line", "SnapshotReader", "content_source", "offset_from_member_name"]

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


class Line(msgspec.Struct):
    """A snapshot line: metadata decoded, the payload raw JSON text of an object, passed through
    as the feed wrote it. As the reader gives it, `name` is set (newer feeds call it `resource`)
    and `offset` is an int no larger than the snapshot's."""

    payload: msgspec.Raw = msgspec.Raw(b"")
    name: _Name | None = None
    resource: _Name | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] | None = None
    version: int = 0

    def source(self) -> Source:
        """The content document as stored in OpenSearch, in pieces (bulkbody.Source)."""
        assert self.offset is not None
        return (content_head(self.offset, self.version), self.payload, b"}")


_LINE = msgspec.json.Decoder(Line)
_ENCODER = msgspec.json.Encoder()


def content_source(offset: int, version: int, document: dict[str, Any]) -> bytes:
    """Serialise a content document; absurdly deep nesting is refused, not a crash."""
    return b"".join((content_head(offset, version), encode_document(document, offset), b"}"))


def encode_document(document: dict[str, Any], offset: int) -> bytes:
    """A payload as JSON text on one line (`offset` names it in an error).

    Parts of a patched document may still be raw JSON text (lazydoc), which msgspec splices
    verbatim; it is ~5x the standard encoder on CVE records. What it refuses (a lone surrogate
    from a \\ud800 escape, absurd nesting) goes through orjson, then the standard encoder."""
    try:
        return _one_line(_ENCODER.encode(document))
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        return _one_line(orjson.dumps(document, default=fragment))
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(decoded(document), ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:
        raise SnapshotError(f"document at offset {offset} is nested too deeply") from None


def _one_line(text: bytes) -> bytes:
    """`text` with no raw newline: a bulk body ends a document at one. Raw parts spliced in
    verbatim hold newlines when they came indented (a feed's answer, a document stored by
    another writer: JSON allows whitespace between any two tokens). In compact JSON a newline
    can only be such whitespace (in a string it is written \\n), so only then is it reformatted,
    the values' text unchanged."""
    return msgspec.json.format(text, indent=0) if b"\n" in text else text


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

    def __iter__(self) -> Iterator[Line]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Line]]:
        """The archive's resources, in lists of tens (the lines of one inflated piece)."""
        if self.growing is not None:
            yield from self._growing_batches(self.growing)
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

    def _growing_batches(self, growing: GrowingFile) -> Iterator[list[Line]]:
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

    def _parse_member(self, chunks: Iterator[bytes]) -> Iterator[list[Line]]:
        """_parse, with a read error reported as the archive's (member_name is set)."""
        try:
            yield from self._parse(chunks)
        except OSError as exc:
            raise SnapshotError(
                f"{self.path}: cannot read member {self.member_name!r} after line "
                f"{self.lines}: {exc}"
            ) from None

    def _parse(self, chunks: Iterator[bytes]) -> Iterator[list[Line]]:
        """Each block of whole lines decoded in one msgspec call (the real layout:
        `{"name": .., "offset": .., "version": .., .., "payload": {..}}`), which checks that every
        line is valid JSON, decodes the few metadata keys and leaves the payload as its raw bytes,
        passed through unchanged. Building Python objects for 12 KB records would cost more CPU
        than OpenSearch spends indexing them. A block with anything else in it (a line of another
        layout, a blank or bad line) is read line by line, which says what is wrong."""
        for data, start, end in self._blocks(chunks):
            batch = self._fast(data, start, end)
            if batch is None:
                batch = []
                for text in _split(data, start, end):
                    line = self._line(text, self.lines + len(batch) + 1)
                    if line is not None:
                        batch.append(line)
            self.lines += len(batch)
            yield batch

    def _fast(self, data: bytes, start: int, end: int) -> list[Line] | None:
        """The lines of `data[start:end]`, or None if any is not exactly one canonical line."""
        try:
            # The payloads are views of `data` (no copy), alive until the batch is packed.
            batch = _LINE.decode_lines(memoryview(data)[start:end])
        except (msgspec.MsgspecError, RecursionError):
            return None
        # decode_lines skips blank lines and would take two objects on one line: one line each.
        count, pos, max_line = 0, start, self.max_line_bytes
        while pos < end and count <= len(batch):
            stop = data.find(b"\n", pos, end)
            if stop < 0:
                stop = end
            if not pos < stop <= pos + max_line:
                return None
            count, pos = count + 1, stop + 1
        if count != len(batch):
            return None
        usable = self._usable
        return batch if all(map(usable, batch)) else None

    def _usable(self, line: Line) -> bool:
        """A decoded line is as the reader gives it (see Line): its name taken from `resource`
        where it has none, an offset within the snapshot's, a payload that is an object."""
        if line.name is None:
            line.name = line.resource
        offset = line.offset
        return (
            line.name is not None
            and offset is not None
            and (self.max_offset is None or offset <= self.max_offset)
            and is_raw_object(line.payload)
        )

    def _blocks(self, chunks: Iterator[bytes]) -> Iterator[tuple[bytes, int, int]]:
        """Split the inflated stream into blocks of whole lines, `data[start:end]`: a chunk's
        (no copy), except a line that spans chunks, joined. Memory: one chunk plus one line."""
        head: list[bytes] = []  # the start of the current line, when it spans chunks
        held = 0
        for chunk in chunks:
            self.bytes_read += len(chunk)
            if self.bytes_read > self.max_uncompressed_bytes:
                raise SnapshotError(
                    f"{self.path}: member inflates beyond sync.max_uncompressed_bytes "
                    f"({self.max_uncompressed_bytes})"
                )
            last = chunk.rfind(b"\n")
            if last < 0:
                # Pieces of a long line are gathered, not re-joined chunk after chunk (which
                # copies the line over and over), and refused as soon as they exceed the limit.
                head.append(chunk)
                held += len(chunk)
                self._check_line(held, self.lines + 1)
                continue
            start = 0
            if head:
                start = chunk.find(b"\n") + 1
                self._check_line(held + start - 1, self.lines + 1)
                head.append(chunk[:start])
                joined = b"".join(head)
                yield joined, 0, len(joined)
            if start <= last:
                yield chunk, start, last + 1
            rest = chunk[last + 1 :]
            head, held = ([rest], len(rest)) if rest else ([], 0)
            self._check_line(held, self.lines + 1)
        if head:
            joined = b"".join(head)
            yield joined, 0, len(joined)

    def _check_line(self, size: int, number: int) -> None:
        if size > self.max_line_bytes:
            raise SnapshotError(
                f"{self.path}: line {number} is longer than sync.max_line_bytes "
                f"({self.max_line_bytes})"
            )

    def _line(self, text: bytes, number: int) -> Line | None:
        """Line `number` (counting resources) read alone; None for a blank one."""
        self._check_line(len(text), number)
        try:
            line = _LINE.decode(text)
        except RecursionError:
            raise SnapshotError(
                f"{self.path}: line {number} is nested too deeply (1000 levels or more)"
            ) from None
        except msgspec.MsgspecError:
            line = None
        if line is not None and self._usable(line):
            return line
        if _blank(text):
            self.blank_lines += 1
            if self.blank_lines > MAX_BLANK_LINES:
                raise SnapshotError(
                    f"{self.path}: more than {MAX_BLANK_LINES} blank lines (after line "
                    f"{number - 1}): not a JSON Lines snapshot"
                )
            return None
        # Not the layout above: ijson reads it, and says what is wrong with it.
        return self._slow(text, f"{self.path}: line {number}")

    def _slow(self, line: bytes, where: str) -> Line:
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
        text = msgspec.Raw(encode_document(payload, offset))
        return Line(text, name=name, offset=offset, version=version)

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


def _split(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """The lines of `data[start:end]`, without their newlines."""
    while start < end:
        stop = data.find(b"\n", start, end)
        if stop < 0:
            stop = end
        yield data[start:stop]
        start = stop + 1


def _blank(line: bytes) -> bool:
    """Whitespace only (JSON Lines readers skip such lines). A record shows within its first
    bytes that it is not, so the whole line is looked at only when those are blank."""
    if not line[:16].strip():
        return not line.strip()
    return False
