"""Streaming snapshot archives and their deliberately broken variants.

Every function here streams: a snapshot of any size is written and rewritten with a flat memory
profile (the only buffer is about 1 MiB of pending lines).
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["VARIANTS", "build_variant", "iter_member_lines", "write_snapshot"]

VARIANTS = ("truncated-zip", "bad-crc", "malformed-line")

_FLUSH_BYTES = 1 << 20


def write_snapshot(
    path: Path, member: str, lines: Iterable[bytes], *, level: int = 1
) -> tuple[int, int]:
    """Write `lines` (each ending in b"\\n") as the single deflated member of a new zip at `path`.

    `force_zip64` because the member size is unknown up front and may exceed 4 GiB (the real feed
    does); without it zipfile refuses to grow a streamed member past 2 GiB.
    Returns (line count, uncompressed member size).
    """
    count = size = 0
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf,
        zf.open(member, "w", force_zip64=True) as out,
    ):
        buf: list[bytes] = []
        pending = 0
        for line in lines:
            buf.append(line)
            pending += len(line)
            count += 1
            if pending >= _FLUSH_BYTES:
                out.write(b"".join(buf))
                size += pending
                buf.clear()
                pending = 0
        out.write(b"".join(buf))
        size += pending
    return count, size


def iter_member_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, line) of every line of the single member of the zip at `path`."""
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
        with zf.open(info) as src:
            for line in src:
                yield info.filename, line


def _rewrite(src: Path, dst: Path, *, corrupt: str, level: int) -> int:
    """Copy the archive at `src` to `dst` line by line, corrupting its middle line.

    corrupt="cut": the line is cut in half (not JSON any more), the zip stays valid.
    corrupt="digit": one digit of the line's `offset` value is changed (still valid JSON, same
    length); returns the member's true CRC so the caller can stamp a wrong one.
    """
    with zipfile.ZipFile(src) as zf:
        info = zf.infolist()[0]
        total = _count_lines(zf, info)
        middle = total // 2

        def lines() -> Iterator[bytes]:
            with zf.open(info) as fh:
                for i, line in enumerate(fh):
                    if i == middle:
                        line = _cut(line) if corrupt == "cut" else _bump_digit(line)
                    yield line

        write_snapshot(dst, info.filename, lines(), level=level)
    return total


def _count_lines(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    with zf.open(info) as fh:
        return sum(1 for _ in fh)


def _cut(line: bytes) -> bytes:
    # A prefix of a JSON object is never a JSON value: the closing brace is missing.
    return line[: max(1, len(line) // 2)].rstrip(b"\n") + b"\n"


def _bump_digit(line: bytes) -> bytes:
    key = b'"offset":'
    at = line.find(key)
    if at < 0:
        return line[:-2] + bytes([line[-2] ^ 0x01]) + line[-1:]
    pos = at + len(key)
    old = line[pos : pos + 1]
    # Never produce a leading zero, which would make the number invalid JSON.
    new = b"2" if old == b"1" else b"1"
    return line[:pos] + new + line[pos + 1 :]


def _stamp_crc(path: Path, crc: int) -> None:
    """Overwrite the CRC-32 of the single member in the local header and the central directory."""
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04" or struct.unpack("<H", local[6:8])[0] & 0x08:
            raise RuntimeError("unexpected local header layout")  # we wrote it: not reachable
        fh.seek(info.header_offset + 14)
        fh.write(struct.pack("<I", crc))
        end = fh.seek(0, os.SEEK_END)
        tail_start = max(0, end - (1 << 16))
        fh.seek(tail_start)
        tail = fh.read()
        central = tail.rfind(b"PK\x01\x02")
        if central < 0:
            raise RuntimeError("central directory not found")
        fh.seek(tail_start + central + 16)
        fh.write(struct.pack("<I", crc))


def build_variant(kind: str, src: Path, dst: Path, *, level: int = 1) -> None:
    """Build the broken copy `kind` of the snapshot `src` at `dst` (atomically).

    - truncated-zip: the first 60 % of the archive's bytes (no central directory: not a zip).
    - bad-crc: the member recompressed with ONE byte of its uncompressed data changed (a digit of
      the middle line's `offset`, so the line is still valid JSON of the same length) while both
      headers keep the ORIGINAL CRC-32. It decompresses cleanly; only the CRC check catches it.
      (Flipping a byte of deflated data usually breaks decompression instead, so we do not.)
    - malformed-line: a valid archive (CRC correct) whose middle line is cut in half.
    """
    part = dst.with_name(dst.name + ".part")
    if kind == "truncated-zip":
        cut = max(1, src.stat().st_size * 6 // 10)
        with open(src, "rb") as fin, open(part, "wb") as fout:
            remaining = cut
            while remaining:
                chunk = fin.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
    elif kind == "malformed-line":
        _rewrite(src, part, corrupt="cut", level=level)
    elif kind == "bad-crc":
        with zipfile.ZipFile(src) as zf:
            original_crc = zf.infolist()[0].CRC
        _rewrite(src, part, corrupt="digit", level=level)
        _stamp_crc(part, original_crc)
    else:
        raise ValueError(f"unknown snapshot variant {kind!r}; expected one of {VARIANTS}")
    os.replace(part, dst)
