"""Stream one zip member's inflated bytes in large chunks, verifying it completely.

zipfile's own reader inflates in 4 KiB steps with Python around each one, which costs more than
the inflation on a multi-GiB member. Here the compressed bytes are read in 32 KiB chunks straight
from the member's data (located through its local header, ZIP64 sizes from zipfile's central
directory parsing) and inflated with zlib. At the end all of these must hold, or SnapshotError:
the deflate stream ended exactly at the member's end, the inflated size equals the declared one,
and the CRC-32 matches. A member whose 32-bit header sizes are wrong (the >4 GiB bug of the real
feed) therefore fails loudly instead of being silently truncated.

Inflation uses ISA-L (python-isal) when installed: about 3x zlib's speed on this data, and the
largest CPU cost of a snapshot load after that. zlib is the fallback, with the same results.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from content_sync.errors import SnapshotError

inflate_lib: ModuleType
try:
    from isal import isal_zlib as inflate_lib
except ImportError:  # pragma: no cover - isal ships wheels for the usual platforms
    inflate_lib = zlib

__all__ = ["StreamedMember", "inflate_member"]

CHUNK = 1024 * 1024  # most bytes one inflate call returns (a zip bomb's 1000x stays bounded)
# Compressed bytes read at a time. A 1 MiB read inflated 1 MiB at a time left a tail of it to
# be copied again at every call (zlib's unconsumed_tail), in fresh blocks above the mmap
# threshold (content_sync.memory): page faults and copies were ~40% of the process's system
# time in a snapshot load. 32 KiB of CVE records (~6x) inflates in one call, into heap blocks
# below that threshold, which are reused.
READ = 32 * 1024
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_LOCAL_MAGIC = b"PK\x03\x04"
_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8  # sizes and CRC follow the data, not in the local header


def inflate_member(path: Path, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """Yield the inflated bytes of `info` (a member of the archive at `path`)."""
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise SnapshotError(f"{path}: member {info.filename!r} is encrypted")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = inflate_lib.decompressobj(-zlib.MAX_WBITS)
    elif info.compress_type == zipfile.ZIP_STORED:
        inflater = None
    else:
        raise SnapshotError(
            f"{path}: member {info.filename!r} uses compression method {info.compress_type}; "
            "only deflate and stored are supported"
        )
    crc, size = 0, 0
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
            raise SnapshotError(f"{path}: no local header for member {info.filename!r}")
        fields = _LOCAL_HEADER.unpack(header)
        f.seek(fields[10] + fields[11], 1)  # file name and extra field lengths
        left = info.compress_size
        while left > 0:
            data = f.read(min(READ if inflater is not None else CHUNK, left))
            if not data:
                raise SnapshotError(
                    f"{path}: member {info.filename!r} is truncated "
                    f"({info.compress_size - left} of {info.compress_size} compressed bytes)"
                )
            left -= len(data)
            pieces = (
                (data,) if inflater is None else _inflate(inflater, data, path, info.filename, size)
            )
            for piece in pieces:
                crc = inflate_lib.crc32(piece, crc)
                size += len(piece)
                if size > info.file_size:
                    # A bomb whose headers understate its size: stop at once, not at the end.
                    raise SnapshotError(
                        f"{path}: member {info.filename!r} inflates beyond the {info.file_size} "
                        "bytes its headers declare"
                    )
                yield piece
            if inflater is not None and inflater.eof and (left or inflater.unused_data):
                # Stop here: read on, every read would be appended to unused_data and copied
                # with all of it again (quadratic in what the headers overstate).
                raise _early_end(path, info.filename)
        if inflater is not None:
            tail = inflater.flush()
            if tail:
                crc, size = inflate_lib.crc32(tail, crc), size + len(tail)
                yield tail
            if not inflater.eof or inflater.unused_data:
                raise _early_end(path, info.filename)
    if size != info.file_size:
        raise SnapshotError(
            f"{path}: member {info.filename!r} inflates to {size} bytes, "
            f"its headers declare {info.file_size}"
        )
    if crc != info.CRC:
        raise SnapshotError(
            f"{path}: member {info.filename!r} fails its CRC-32 check "
            f"(computed {crc:08x}, declared {info.CRC:08x})"
        )


def _early_end(path: Path, name: str) -> SnapshotError:
    return SnapshotError(
        f"{path}: the deflate stream of {name!r} does not end where the member does "
        "(truncated, or wrong sizes in its headers)"
    )


def _inflate(inflater: Any, data: bytes, path: Path, name: str, done: int) -> Iterator[bytes]:
    """`data` inflated in pieces of at most CHUNK bytes. Deflate expands up to ~1000x, so one
    1 MiB read of a zip bomb would otherwise become a 1 GiB string (and a billion-item split)."""
    while data:
        try:
            piece = inflater.decompress(data, CHUNK)
        except (zlib.error, inflate_lib.error) as exc:
            raise SnapshotError(
                f"{path}: member {name!r} is corrupt after {done} bytes: {exc}"
            ) from None
        if not piece:
            return  # all input taken (or the stream ended: the caller checks)
        done += len(piece)
        yield piece
        data = inflater.unconsumed_tail


class _Source(Protocol):
    path: Path

    def read(self, size: int) -> bytes: ...


class NotStreamable(SnapshotError):
    """A stored (not deflated) member whose size only its central directory tells."""


class StreamedMember:
    """The first member of an archive read from its start (the download still arriving), before
    its central directory exists. What the iteration found is kept for the caller to check
    against the central directory once the download is complete: name, compressed size,
    inflated size, CRC-32."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.name = ""
        self.compressed = 0
        self.size = 0
        self.crc = 0
        self._method = zipfile.ZIP_DEFLATED
        # What the local header declares, when it does (-1: sizes follow the data).
        self._declared = -1
        self.declared_size = -1

    def _read_exactly(self, n: int, what: str) -> bytes:
        parts, left = [], n
        while left:
            data = self.source.read(left)
            if not data:
                raise SnapshotError(f"{self.source.path}: truncated in the {what}")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def open(self) -> None:
        """Read the local header: the member's name, method and (maybe) compressed size."""
        header = self._read_exactly(_LOCAL_HEADER.size, "first local header")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_MAGIC:
            raise SnapshotError(f"{self.source.path}: not a readable zip archive (no local header)")
        flags, method, compressed, size = fields[3], fields[4], fields[8], fields[9]
        name = self._read_exactly(fields[10], "member name")
        extra = self._read_exactly(fields[11], "member extra field")
        self.name = name.decode("utf-8" if flags & 0x800 else "cp437")
        if flags & _FLAG_ENCRYPTED:
            raise SnapshotError(f"{self.source.path}: member {self.name!r} is encrypted")
        if method not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
            raise SnapshotError(
                f"{self.source.path}: member {self.name!r} uses compression method {method}; "
                "only deflate and stored are supported"
            )
        if flags & _FLAG_DESCRIPTOR:
            compressed = size = -1
        elif 0xFFFFFFFF in (compressed, size):
            size, compressed = _zip64_sizes(extra)
        self._method, self._declared, self.declared_size = method, compressed, size

    def chunks(self, max_size: int) -> Iterator[bytes]:
        """The member's inflated bytes (after open()); at most `max_size` of them."""
        if self._method == zipfile.ZIP_STORED:
            if self._declared < 0:
                raise NotStreamable(f"{self.source.path}: stored member of unknown size")
            yield from self._stored(self._declared)
            return
        inflater = inflate_lib.decompressobj(-zlib.MAX_WBITS)
        while not inflater.eof:
            data = self.source.read(READ)
            if not data:
                raise SnapshotError(
                    f"{self.source.path}: member {self.name!r} is truncated "
                    f"(the deflate stream stops after {self.compressed} compressed bytes)"
                )
            self.compressed += len(data)
            for piece in _inflate(inflater, data, self.source.path, self.name, self.size):
                self._count(piece, max_size)
                yield piece
            # Whatever follows the stream (a data descriptor, the central directory) is not ours.
            self.compressed -= len(inflater.unused_data)
        tail = inflater.flush()
        if tail:
            self._count(tail, max_size)
            yield tail

    def _stored(self, left: int) -> Iterator[bytes]:
        while left > 0:
            data = self.source.read(min(CHUNK, left))
            if not data:
                raise SnapshotError(f"{self.source.path}: member {self.name!r} is truncated")
            left -= len(data)
            self.compressed += len(data)
            self._count(data, None)
            yield data

    def _count(self, piece: bytes, max_size: int | None) -> None:
        self.crc = inflate_lib.crc32(piece, self.crc)
        self.size += len(piece)
        if 0 <= self.declared_size < self.size:
            # A bomb whose headers understate its size: stop at once, not at the end.
            raise SnapshotError(
                f"{self.source.path}: member {self.name!r} inflates beyond the "
                f"{self.declared_size} bytes its headers declare"
            )
        if max_size is not None and self.size > max_size:
            raise SnapshotError(
                f"{self.source.path}: member {self.name!r} inflates beyond "
                f"sync.max_uncompressed_bytes ({max_size})"
            )

    def verify(self, info: zipfile.ZipInfo) -> None:
        """The central directory's entry must describe exactly what was streamed."""
        path = self.source.path
        checks = (
            ("name", info.filename, self.name),
            ("offset", info.header_offset, 0),
            ("compressed size", info.compress_size, self.compressed),
            ("size", info.file_size, self.size),
            ("CRC-32", info.CRC, self.crc),
        )
        for what, declared, streamed in checks:
            if declared != streamed:
                raise SnapshotError(
                    f"{path}: member {info.filename!r}: the central directory declares {what} "
                    f"{declared!r}, the member as read has {streamed!r}"
                )


def _zip64_sizes(extra: bytes) -> tuple[int, int]:
    """(size, compressed size) from a local header's ZIP64 extra field; -1 where absent."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        if kind == 0x0001 and length >= 16:
            size, compressed = struct.unpack_from("<QQ", extra, pos + 4)
            return int(size), int(compressed)
        pos += 4 + length
    return -1, -1
