"""A small, strict RFC 6902 (JSON Patch) applier used by the feed model to compute its truth.

The model deliberately does not use the `jsonpatch` library: the feed's own tests apply the served
changes with `jsonpatch`, so an independent implementation here makes those tests a real cross-check
instead of a tautology.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PatchError", "apply_ops", "escape", "pointer", "resolve", "unescape"]


class PatchError(ValueError):
    """An operation cannot be applied (missing path, bad index, failed `test`)."""


def escape(token: str) -> str:
    """RFC 6901 escaping of one reference token ('~' first, so '/' -> '~1' is not re-escaped)."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    # '~1' first would turn '~01' into '~/' wrongly; RFC 6901 says decode '~1' then '~0'.
    return token.replace("~1", "/").replace("~0", "~")


def pointer(*tokens: str | int) -> str:
    """Build a JSON pointer from raw tokens."""
    return "".join("/" + escape(str(t)) for t in tokens)


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid pointer {path!r}")
    return [unescape(t) for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if i > limit:
        raise PatchError(f"array index {i} out of range")
    return i


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"member {token!r} not found")
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, allow_end=False)]
    raise PatchError(f"cannot descend into a scalar with {token!r}")


def resolve(doc: Any, path: str) -> Any:
    """The value at `path`; PatchError if it does not exist."""
    node = doc
    for token in _tokens(path):
        node = _child(node, token)
    return node


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    tokens = _tokens(path)
    if not tokens:
        raise PatchError("the root has no parent")
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token)
    return node, tokens[-1]


def _add(doc: Any, path: str, value: Any) -> Any:
    if path == "":
        return value
    parent, last = _parent(doc, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add into a scalar at {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parent, last = _parent(doc, path)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"member {last!r} not found")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"cannot remove from a scalar at {path!r}")


def apply_ops(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply `ops` to `doc` IN PLACE and return the (possibly new) root.

    Not atomic: on PatchError `doc` may be half-patched, so callers patch a copy when they need
    the original back.
    """
    for op in ops:
        kind = op.get("op")
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"operation without a path: {op!r}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            resolve(doc, path)  # replace requires the target to exist
            if path == "":
                doc = copy.deepcopy(op["value"])
            else:
                doc, _ = _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "move":
            src = op["from"]
            if path != src and path.startswith(src + "/"):
                raise PatchError("cannot move a value into one of its children")
            if path != src:
                doc, value = _remove(doc, src)
                doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(resolve(doc, op["from"])))
        elif kind == "test":
            if not _equal(resolve(doc, path), op["value"]):
                raise PatchError(f"test failed at {path!r}")
        else:
            raise PatchError(f"unknown op {kind!r}")
    return doc


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: booleans are not numbers (Python says True == 1).
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
