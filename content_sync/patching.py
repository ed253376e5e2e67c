"""Apply one window of changes to the stored documents, in memory.

Pure: stored documents in, final documents out; no I/O. Per resource, the changes are taken in
offset order:

- A change whose offset is not above the stored document's `offset` was applied before (a
  window replayed after a crash) and is skipped, so replays converge.
- The last `create` or `delete` of a resource in the window resets it (to the payload, or to
  absent); only the updates after it need the stored document. This also makes a replayed window
  converge when an earlier run already deleted a document that the window updates first.
- An update that does not apply, or that targets a missing resource, raises DriftError naming
  the change: the local copy no longer matches the feed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer
import msgspec

from content_sync import lazydoc
from content_sync.errors import DriftError
from content_sync.feed import Change

__all__ = ["WindowResult", "apply_window", "needs_stored", "touched"]

_PATCH_ERRORS = (
    jsonpatch.JsonPatchException,
    jsonpointer.JsonPointerException,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    msgspec.MsgspecError,  # a stored document that is not JSON
)


@dataclass
class WindowResult:
    # name -> content document {"offset", "version", "document"}, or None = delete
    final: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=lambda: {"create": 0, "update": 0, "delete": 0})
    skipped: int = 0
    # name -> offset of the change that leaves it deleted (its external version in the index)
    deleted_at: dict[str, int] = field(default_factory=dict)


def touched(changes: Iterable[Change]) -> list[str]:
    """The resources a window touches, each once, in first-seen order."""
    return list(dict.fromkeys(c.resource for c in changes))


def needs_stored(changes: Iterable[Change]) -> list[str]:
    """The resources whose stored document the window needs: those it only updates. A create or
    delete resets a resource, so what was stored before it never matters (see apply_window)."""
    resets = {c.resource for c in changes if c.type != "update"}
    return [name for name in touched(changes) if name not in resets]


def apply_window(changes: list[Change], stored: dict[str, dict[str, Any]]) -> WindowResult:
    """Compute the final content of every resource the window touches.

    `stored` maps resource name -> stored content document (absent = not in the index).
    """
    by_resource: dict[str, list[Change]] = {}
    for change in changes:
        by_resource.setdefault(change.resource, []).append(change)
    result = WindowResult()
    for name, own in by_resource.items():
        doc = stored.get(name)
        start = 0
        current: dict[str, Any] | None = doc
        for i in range(len(own) - 1, -1, -1):
            if own[i].type != "update":
                start = i  # the last reset; everything before it is superseded
                break
        if own[start].type != "update":
            current = None
        else:
            # Only updates remain: they apply to the stored document, unless already applied.
            done = doc["offset"] if doc is not None else -1
            fresh = [c for c in own if c.offset > done]
            result.skipped += len(own) - len(fresh)
            if not fresh:
                continue
            # The stored documents are this window's own decoded copies: patch them in place.
            own, start = fresh, 0
        for change in own[start:]:
            current = _apply(change, current)
            result.applied[change.type] += 1
        result.final[name] = current
        if current is None:
            result.deleted_at[name] = own[-1].offset
    return result


def _apply(change: Change, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if change.type == "create":
        assert change.payload is not None
        return {"offset": change.offset, "version": change.version, "document": change.payload}
    if change.type == "delete":
        return None
    if current is None:
        raise DriftError(
            f"update at offset {change.offset} targets {change.resource}, "
            "which is not in the index",
            offset=change.offset,
            resource=change.resource,
        )
    try:
        document = lazydoc.apply_patch(current["document"], change.operations or [])
    except _PATCH_ERRORS as exc:
        raise DriftError(
            f"update at offset {change.offset} of {change.resource} does not apply: "
            f"{type(exc).__name__}: {exc}",
            offset=change.offset,
            resource=change.resource,
        ) from None
    return {"offset": change.offset, "version": change.version, "document": document}
