"""The last snapshot archive that initialised a feed, kept (optionally) for when the feed is down.

Off by default (sync.keep_archive). One archive per feed, replaced by the next successful
initialisation, and only if it fits under sync.keep_archive_max_bytes. Its offset and origin sit in
a small JSON file beside it, written after the archive so a half-written pair is never used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArchiveKeeper", "KeptArchive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptArchive:
    path: Path
    offset: int
    link: str | None


class ArchiveKeeper:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def _paths(self, state_id: str) -> tuple[Path, Path]:
        return self.directory / f"{state_id}.zip", self.directory / f"{state_id}.json"

    def keep(self, state_id: str, archive: Path, *, offset: int, link: str | None) -> bool:
        """Move `archive` into the keep (it is consumed either way). False when too large."""
        size = archive.stat().st_size
        if size > self.max_bytes:
            log.info("not keeping the snapshot archive: %d bytes is over the cap", size)
            return False
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        zip_path, meta_path = self._paths(state_id)
        meta_path.unlink(missing_ok=True)  # the pair is invalid until the new meta is written
        shutil.move(str(archive), zip_path)
        os.chmod(zip_path, 0o600)
        tmp = meta_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # Private like the archive, whatever the umask.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(json.dumps({"offset": offset, "link": link}))
        tmp.replace(meta_path)
        return True

    def discard(self, state_id: str) -> None:
        """After a failed keep: remove an archive left without its meta file (a partial copy),
        best effort. A complete pair (the failure came before it was touched) stays usable."""
        zip_path, meta_path = self._paths(state_id)
        if meta_path.exists():
            return
        for path in (zip_path, meta_path.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def latest(self, state_id: str) -> KeptArchive | None:
        zip_path, meta_path = self._paths(state_id)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            meta = json.loads(meta_path.read_text())
            if zip_path.is_file():
                return KeptArchive(zip_path, int(meta["offset"]), meta.get("link"))
        return None
