"""A naive reference client of the feed, built on `jsonpatch` (not on the model's own applier).

Loads everything in memory: for tests of small feeds only. Used by the feed's own tests to show
that snapshot + changes == truth, and handy for integration tests that need an expected state.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch

__all__ = ["apply_changes", "fetch_changes", "load_snapshot", "read_snapshot"]

State = dict[str, dict[str, Any]]


def read_snapshot(source: str | Path | bytes) -> Iterator[dict[str, Any]]:
    """Every line of the single member of a snapshot archive (path or bytes), parsed."""
    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with fh, zipfile.ZipFile(fh) as zf:
        (info,) = zf.infolist()
        with zf.open(info) as member:
            for line in member:
                yield json.loads(line)


def load_snapshot(source: str | Path | bytes) -> State:
    """name -> {"offset", "version", "document"} from a snapshot archive."""
    return {
        line.get("name") or line["resource"]: {
            "offset": line["offset"],
            "version": line["version"],
            "document": line["payload"],
        }
        for line in read_snapshot(source)
    }


def apply_changes(state: State, changes: Iterable[dict[str, Any]]) -> State:
    """Apply wire-format changes in order to `state` (in place) and return it.

    create = payload, update = RFC 6902 patch (jsonpatch raises when it does not apply),
    delete = removal. Offset and version come from each change.
    """
    for change in changes:
        name = change["resource"]
        kind = change["type"].lower()
        if kind == "create":
            state[name] = {
                "offset": change["offset"],
                "version": change["version"],
                "document": change["payload"],
            }
        elif kind == "update":
            entry = state[name]
            entry["document"] = jsonpatch.apply_patch(entry["document"], change["operations"])
            entry["offset"] = change["offset"]
            entry["version"] = change["version"]
        elif kind == "delete":
            state.pop(name, None)
        else:
            raise ValueError(f"unknown change type {change['type']!r}")
    return state


def fetch_changes(
    client: httpx.Client,
    consumer_url: str,
    from_offset: int,
    to_offset: int,
    *,
    with_empties: bool = True,
    page: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every change in (from_offset, to_offset], fetched in windows of at most `page`."""
    low = from_offset
    while low < to_offset:
        high = min(low + page, to_offset)
        resp = client.get(
            f"{consumer_url}/changes",
            params={
                "from_offset": low,
                "to_offset": high,
                "with_empties": "true" if with_empties else "false",
            },
        )
        resp.raise_for_status()
        yield from resp.json()["data"]
        low = high
