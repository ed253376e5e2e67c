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
from itertools import accumulate
from pathlib import Path
from typing import Any

import ijson
import orjson

from content_sync.errors import SnapshotError
from content_sync.lazydoc import decoded, fragment
from content_sync.zipstream import inflate_member

__all__ = ["Resource", "SnapshotReader", "content_source", "offset_from_member_name"]

if ijson.backend != "yajl2_c":  # pragma: no cover - depends on the installed wheel
    raise ImportError(
        f"ijson is using its {ijson.backend!r} backend, not the C backend 'yajl2_c': install an "
        "ijson wheel built with yajl (pip install --force-reinstall ijson) for usable speed"
    )

_MEMBER = re.compile(r"^(?P<ctx>.+)_(?P<offset>\d+)_(?P<ts>\d+)\.json$")
# ijson keeps a prefix string per nesting level, so a deeply nested line costs memory quadratic in
# its depth (100,000 levels exhaust any machine), and a document deeper than Python's recursion
# limit (~1000) could be stored but not decoded again (by a later change reaching into it, or any
# Python reader). A line with at most MAX_DEPTH brackets cannot be deeper; only the others (~1 % of
# records) get a depth scan.
MAX_DEPTH = 512
# Blank lines are not JSON Lines; a few are forgiven. A stream of them costs no memory but a
# Python loop turn each: a 1 MB archive of newlines inflates to a billion of them (minutes of CPU).
MAX_BLANK_LINES = 1000
_PAYLOAD_KEY = re.compile(rb'"payload"[ \t\r]*:[ \t\r]*(?=\{)')
_WHITESPACE = b" \t\r\n"
_CLOSE = ord("}")
_ESCAPE = re.compile(rb"\\.")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256)]


@dataclass(frozen=True, slots=True)
class Resource:
    """One snapshot line: the payload either parsed, or as the raw JSON bytes of the line."""

    name: str
    offset: int
    version: int
    payload: dict[str, Any] | None = None
    raw_payload: bytes | None = None

    def source(self) -> bytes:
        """The content document as stored in OpenSearch."""
        if self.raw_payload is not None:
            return b'{"offset":%d,"version":%d,"document":%s}' % (
                self.offset,
                self.version,
                self.raw_payload,
            )
        assert self.payload is not None
        return content_source(self.offset, self.version, self.payload)


def content_source(offset: int, version: int, document: dict[str, Any]) -> bytes:
    """Serialise a content document; absurdly deep nesting is refused, not a crash.

    orjson is ~5x the standard encoder on CVE records, and encoding is a fifth of a window's
    time; it refuses what it cannot represent exactly (integers beyond 64 bits, nesting deeper
    than 255), which then goes through the standard encoder."""
    try:
        # Parts of a patched document may still be raw JSON text (lazydoc): spliced verbatim.
        return orjson.dumps(
            {"offset": offset, "version": version, "document": document}, default=fragment
        )
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
    member_name: str = ""
    declared_size: int = 0
    lines: int = 0
    blank_lines: int = 0
    bytes_read: int = 0
    complete: bool = False
    _prefix_parser: Any = None
    _prefix_sink: Any = None

    def _open_member(self, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
        infos = archive.infolist()
        if len(infos) != 1:
            names = ", ".join(i.filename for i in infos[:5])
            raise SnapshotError(
                f"{self.path}: expected exactly one member, found {len(infos)} ({names})"
            )
        info = infos[0]
        name = info.filename
        if info.is_dir() or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
            raise SnapshotError(f"{self.path}: refusing member name {name!r}")
        if not name.endswith(".json"):
            raise SnapshotError(f"{self.path}: member {name!r} is not a .json file")
        if info.file_size > self.max_uncompressed_bytes:
            raise SnapshotError(
                f"{self.path}: member {name!r} declares {info.file_size} bytes, over "
                f"sync.max_uncompressed_bytes ({self.max_uncompressed_bytes})"
            )
        return info

    def __iter__(self) -> Iterator[Resource]:
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SnapshotError(f"{self.path}: not a readable zip archive: {exc}") from None
        with archive:
            info = self._open_member(archive)
            self.member_name = info.filename
            self.declared_size = info.file_size
            try:
                yield from self._parse(inflate_member(self.path, info))
            except OSError as exc:
                raise SnapshotError(
                    f"{self.path}: cannot read member {info.filename!r} after line "
                    f"{self.lines}: {exc}"
                ) from None
        if self.bytes_read != self.declared_size:
            raise SnapshotError(
                f"{self.path}: read {self.bytes_read} bytes of {info.filename!r}, "
                f"its header declares {self.declared_size}"
            )
        self.complete = True

    def _parse(self, chunks: Iterator[bytes]) -> Iterator[Resource]:
        for line in self._lines(chunks):
            self._check_line(len(line), self.lines + 1)
            if line and not line.isspace():
                self.lines += 1
                yield self._resource(line)
            else:
                self.blank_lines += 1
                if self.blank_lines > MAX_BLANK_LINES:
                    raise SnapshotError(
                        f"{self.path}: more than {MAX_BLANK_LINES} blank lines (after line "
                        f"{self.lines}): not a JSON Lines snapshot"
                    )

    def _lines(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Split the inflated stream into lines. Memory: one chunk plus one line."""
        head: list[bytes] = []  # the start of the current line, when it spans chunks
        held = 0
        for chunk in chunks:
            self.bytes_read += len(chunk)
            if self.bytes_read > self.max_uncompressed_bytes:
                raise SnapshotError(
                    f"{self.path}: member inflates beyond sync.max_uncompressed_bytes "
                    f"({self.max_uncompressed_bytes})"
                )
            if b"\n" not in chunk:
                # Pieces of a long line are gathered, not re-joined chunk after chunk (which
                # copies the line over and over), and refused as soon as they exceed the limit.
                head.append(chunk)
                held += len(chunk)
                self._check_line(held, self.lines + 1)
                continue
            if head:
                head.append(chunk)
                chunk = b"".join(head)
            lines = chunk.split(b"\n")
            pending = lines.pop()
            head, held = ([pending], len(pending)) if pending else ([], 0)
            self._check_line(held, self.lines + len(lines) + 1)
            yield from lines
        if head:
            yield b"".join(head)

    def _check_line(self, size: int, number: int) -> None:
        if size > self.max_line_bytes:
            raise SnapshotError(
                f"{self.path}: line {number} is longer than sync.max_line_bytes "
                f"({self.max_line_bytes})"
            )

    def _resource(self, line: bytes) -> Resource:
        where = f"{self.path}: line {self.lines}"
        if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _depth(line) > MAX_DEPTH:
            raise SnapshotError(f"{where} is nested deeper than {MAX_DEPTH} levels")
        return self._fast(line, where) or self._slow(line, where)

    def _fast(self, line: bytes, where: str) -> Resource | None:
        """The real layout: `{"name": .., "offset": .., "version": .., .., "payload": {..}}`.

        Only the short metadata before the payload is parsed (ijson); the payload's bytes are
        passed through as they are. Building Python objects for 12 KB records would cost more
        CPU than OpenSearch spends indexing them. The payload is still checked, by OpenSearch:
        it parses every source, and the strict content mapping refuses a document with any
        extra or duplicate top-level key, so a line the splice misreads fails the load instead
        of landing wrong. Anything else takes the slow path.
        """
        key = line.find(b'"payload"')
        found = _PAYLOAD_KEY.match(line, key) if key >= 0 else None
        if found is None:
            return None
        start = found.end()
        # The line must close the payload object and then the line's object: `} }`.
        end = len(line)
        for _ in range(2):
            while end and line[end - 1] in _WHITESPACE:
                end -= 1
            if not end or line[end - 1] != _CLOSE:
                return None
            end -= 1
        end += 1  # keep the payload's own closing brace
        if end <= start:
            return None
        item = self._parse_prefix(line[:key] + b'"payload":0}')
        if item is None:
            return None
        name, offset, version = self._meta(item, where)
        return Resource(name, offset, version, raw_payload=line[start:end])

    def _parse_prefix(self, prefix: bytes) -> dict[str, Any] | None:
        """Parse the metadata prefix with one long-lived ijson parser (a fresh one per line costs
        more than the parse). '"payload":0}' closes the object only if the key really is a
        top-level one; otherwise the parser errs or waits for more input, and is replaced."""
        if self._prefix_parser is None:
            self._prefix_sink = ijson.sendable_list()
            self._prefix_parser = ijson.items_coro(
                self._prefix_sink, "", use_float=True, multiple_values=True
            )
        try:
            self._prefix_parser.send(prefix)
        except ijson.JSONError:
            self._prefix_parser = None
            return None
        if len(self._prefix_sink) != 1 or not isinstance(self._prefix_sink[0], dict):
            self._prefix_parser = None  # mid-value or confused: start afresh next time
            return None
        item: dict[str, Any] = self._prefix_sink.pop()
        return item

    def _slow(self, line: bytes, where: str) -> Resource:
        try:
            values = list(ijson.items(line, "", use_float=True, multiple_values=True))
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


def _depth(line: bytes) -> int:
    """Deepest nesting of a JSON text, brackets inside strings ignored. Only C-speed steps: once
    escapes are dropped, every other piece between quotes is outside the strings."""
    if b"\\" in line:
        line = _ESCAPE.sub(b"", line)
    outside = b"".join(line.split(b'"')[::2]).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, outside)), default=0)
