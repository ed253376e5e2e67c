"""Reading a snapshot while it downloads (content_sync/growing.py): the same resources as from
the finished file, read before the download ends, and nothing counted unless the central
directory, once it arrives, agrees with what was read."""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from content_sync.bulkbody import source_bytes
from content_sync.errors import SnapshotError
from content_sync.growing import Abandoned, GrowingFile, Interrupted
from content_sync.snapshot import SnapshotReader
from tests.test_snapshot import MEMBER, line

PIECE = 4096


def lines(n: int) -> bytes:
    # Varied, poorly compressible payloads: the archive spans many pieces.
    return b"".join(line(f"CVE-{i}", i, {"v": os.urandom(300).hex()}) for i in range(1, n + 1))


def archive(path: Path, body: bytes, *, seekable: bool = True) -> Path:
    if seekable:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MEMBER, body)
        return path
    # Written to a stream that cannot seek back: sizes and CRC follow the data (flag bit 3).
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, body)
    path.write_bytes(out.getvalue())
    return path


class _Unseekable(io.BytesIO):
    def seekable(self) -> bool:
        return False

    def seek(self, *args: Any) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


class Downloader(threading.Thread):
    """Writes `data` into a new file piece by piece, as the feed client does."""

    def __init__(self, growing: GrowingFile, target: Path, data: bytes, **fault: Any) -> None:
        super().__init__(daemon=True)
        self.growing, self.target, self.data, self.fault = growing, target, data, fault
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.target.open("wb") as out:
                self.growing.created(self.target)
                for start in range(0, len(self.data), PIECE):
                    if start and start == self.fault.get("restart_at"):
                        out.seek(0)
                        out.truncate()
                        self.growing.restarted()
                        self.fault.clear()
                        self.written = 0
                    if start and start == self.fault.get("fail_at"):
                        raise OSError("connection reset")
                    out.write(self.data[start : start + PIECE])
                    out.flush()
                    self.written = start + len(self.data[start : start + PIECE])
                    self.growing.grew(self.written)
                    time.sleep(0.0005)
        except BaseException as exc:
            self.error = exc
            self.growing.finish(failed=True)
            return
        self.growing.finish(failed=False)


def read(growing: GrowingFile, path: Path) -> SnapshotReader:
    return SnapshotReader(path, max_uncompressed_bytes=10**9, max_line_bytes=10**6, growing=growing)


@pytest.mark.parametrize("seekable", [True, False], ids=["sizes-in-header", "data-descriptor"])
def test_resources_are_read_while_the_archive_arrives(tmp_path: Path, seekable: bool) -> None:
    source = archive(tmp_path / "feed.zip", lines(400), seekable=seekable)
    expected = [(r.name, r.offset, source_bytes(r.source())) for r in read(*_complete(source))]
    growing = GrowingFile()
    download = Downloader(growing, tmp_path / "download.zip", source.read_bytes())
    download.start()
    reader = read(growing, tmp_path / "download.zip")
    got, written_at_first = [], None
    for resource in reader:
        if written_at_first is None:
            written_at_first = download.written
        got.append((resource.name, resource.offset, source_bytes(resource.source())))
    download.join()
    assert got == expected and reader.complete and reader.lines == 400
    assert written_at_first is not None and written_at_first < source.stat().st_size / 2


def _complete(path: Path) -> tuple[GrowingFile, Path]:
    growing = GrowingFile()
    growing.created(path)
    growing.grew(path.stat().st_size)
    growing.finish(failed=False)
    return growing, path


@pytest.mark.parametrize("fault", ["restart_at", "fail_at"])
def test_a_restarted_or_failed_download_interrupts_the_reader(tmp_path: Path, fault: str) -> None:
    data = archive(tmp_path / "feed.zip", lines(400)).read_bytes()
    growing = GrowingFile()
    download = Downloader(growing, tmp_path / "download.zip", data, **{fault: 10 * PIECE})
    download.start()
    with pytest.raises(Interrupted):
        list(read(growing, tmp_path / "download.zip"))
    download.join()


def test_abandoning_stops_the_download(tmp_path: Path) -> None:
    growing = GrowingFile()
    growing.created(tmp_path / "x.zip")
    growing.grew(10)
    growing.abandon()
    with pytest.raises(Abandoned):
        growing.grew(20)


def test_a_central_directory_that_disagrees_is_refused(tmp_path: Path) -> None:
    raw = bytearray(archive(tmp_path / "feed.zip", lines(50)).read_bytes())
    entry = raw.rindex(b"PK\x01\x02")  # the central directory's entry; its CRC-32 at +16
    raw[entry + 16] ^= 0xFF
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(raw))
    reader = read(*_complete(path))
    with pytest.raises(SnapshotError, match="central directory declares CRC-32"):
        list(reader)
    assert not reader.complete


def test_a_second_member_is_refused_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, lines(5))
        zf.writestr("other.json", lines(1))
    reader = read(*_complete(path))
    with pytest.raises(SnapshotError, match="expected exactly one member, found 2"):
        list(reader)
    assert not reader.complete
