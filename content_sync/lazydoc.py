"""Stored documents decoded only where a patch reaches.

A window multi-gets ~1000 CVE records of ~12 KB and patches a few paths in each. Decoding every
record into Python objects and encoding it again was most of this process's time, yet almost
all of each record only passes through. So documents arrive as `msgspec.Raw` (the JSON text,
undecoded). A record's first three levels are opened in one pass (patches of CVE records run
through `containers/cna/...`; opening level by level re-read those bytes once per level), and
below them, before each patch operation, the containers on its paths are opened one level at a
time: an object becomes a dict of raw values, an array a list of raw values. What no operation
reaches stays raw, and the encoder splices it back verbatim (numbers below the first three
levels keep their exact text; above, the same value may be written differently, 1.50 as 1.5).
The patch itself is still applied by `jsonpatch`, operation by operation, on the opened tree; a
value compared by `test` is decoded whole. An operation is handed the container that holds its
target, with a pointer of one part, so that jsonpatch does not walk the tree again from its
root; where that container cannot be reached, jsonpatch gets the whole document and says why.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any, TypeGuard

import jsonpatch
import jsonpointer
import msgspec
import orjson

__all__ = ["Raw", "apply_patch", "decoded", "fragment", "is_raw_object"]

Raw = msgspec.Raw
_CONTAINER = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])
_ANY = msgspec.json.Decoder()
# A record's first three levels, in one pass: objects and arrays with raw members below.
_Scalar = str | int | float | bool | None
_Level3 = dict[str, msgspec.Raw] | list[msgspec.Raw] | _Scalar
_Level2 = dict[str, _Level3] | list[_Level3] | _Scalar
_RECORD = msgspec.json.Decoder(dict[str, _Level2])


def _open(raw: msgspec.Raw) -> Any:
    """One level of a raw value: an object or array with raw members, else the scalar."""
    try:
        return _CONTAINER.decode(raw)
    except msgspec.ValidationError:  # a scalar (opened only where a path runs through one)
        return _ANY.decode(raw)


def is_raw_object(value: object) -> TypeGuard[msgspec.Raw]:
    """True for raw JSON text of an object (a record as the feed or the snapshot sent it)."""
    return isinstance(value, msgspec.Raw) and memoryview(value)[:1].tobytes() == b"{"


def decoded(value: Any) -> Any:
    """`value` with nothing raw left in it (for comparisons, and the fallback encoder)."""
    if isinstance(value, msgspec.Raw):
        return _ANY.decode(value)
    if isinstance(value, dict):
        for key, member in value.items():
            value[key] = decoded(member)
    elif isinstance(value, list):
        for i, member in enumerate(value):
            value[i] = decoded(member)
    return value


def fragment(value: Any) -> orjson.Fragment:
    """orjson's `default`: a raw value is written as the JSON text it is."""
    if isinstance(value, msgspec.Raw):
        return orjson.Fragment(bytes(value))
    raise TypeError(f"cannot encode {type(value).__name__}")


def _prepare(root: Any, tokens: list[str], *, whole: bool) -> None:
    """Open every container on the way of the pointer whose parts are `tokens` (and the target
    itself when `whole`). Where the path does not exist, stop: jsonpatch then reports it as it
    would for any document."""
    if not tokens:
        if whole:
            decoded(root)
        return
    parent = _parent(root, tokens[:-1])
    if whole and parent is not None:
        key = _key(parent, tokens[-1])
        if key is not None:
            parent[key] = decoded(parent[key])


def _key(node: Any, token: str) -> Any:
    """`token` as the key of a member of `node` that exists, else None (jsonpointer's rules:
    array indices are plain decimals, '-' and '01' are not)."""
    if isinstance(node, dict):
        return token if token in node else None
    if isinstance(node, list):
        try:
            index = int(token)
        except ValueError:
            return None
        # str() tells '1' from '01', '+1', ' 1', '1_0' and other digits, which int() also reads
        return index if 0 <= index < len(node) and str(index) == token else None
    return None


def _parent(root: Any, way: Sequence[str]) -> dict[str, Any] | list[Any] | None:
    """The container at the end of `way` (pointer parts), the containers on it opened; None
    where jsonpointer would not get there (the caller then leaves the operation to jsonpatch
    on the whole document, which reports it)."""
    node = root
    for token in way:
        if isinstance(node, dict):
            if token not in node:
                return None
            child = node[token]
            if isinstance(child, msgspec.Raw):
                child = node[token] = _open(child)
        else:
            key = _key(node, token)
            if key is None:
                return None
            child = node[key]
            if isinstance(child, msgspec.Raw):
                child = node[key] = _open(child)
        node = child
    return node if isinstance(node, (dict, list)) else None


_OPERATIONS = jsonpatch.JsonPatch.operations
_FAILED = (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)


def _kind(operation: object) -> type[jsonpatch.PatchOperation]:
    if not isinstance(operation, dict):
        raise jsonpatch.InvalidJsonPatch(f"operation {operation!r} is not an object")
    op = operation.get("op")
    kind: type[jsonpatch.PatchOperation] | None = (
        _OPERATIONS.get(op) if isinstance(op, str) else None
    )
    if kind is None:
        raise jsonpatch.InvalidJsonPatch(f"operation {operation!r}: unknown or missing 'op'")
    return kind


@functools.lru_cache(maxsize=4096)
def _pointer(path: str) -> jsonpointer.JsonPointer:
    """A parsed pointer (parsing is much of an operation's cost, and feeds repeat paths). Shared:
    neither this module nor jsonpatch's apply() changes a pointer."""
    return jsonpointer.JsonPointer(path)


def _parts(pointer: str) -> list[str]:
    parts: list[str] = _pointer(pointer).parts
    return parts


class _Tail(jsonpointer.JsonPointer):
    """A pointer of one part that keeps its text: jsonpatch asks for it to build every operation,
    and the base class writes it anew each time."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._text = text

    @property
    def path(self) -> str:
        return self._text


@functools.lru_cache(maxsize=4096)
def _route(path: str) -> tuple[tuple[str, ...], str, _Tail] | None:
    """A pointer to a member, as the parts that lead to its container, its own part, and the
    pointer of that one part; None for the root."""
    parts = _parts(path)
    if not parts:
        return None
    return tuple(parts[:-1]), parts[-1], _Tail(path[path.rindex("/") :])


def _way(path: str) -> tuple[str, ...] | None:
    """The parts that lead to the container of the target of `path`."""
    route = _route(path)
    return None if route is None else route[0]


def _at(document: Any, path: object) -> tuple[Any, str, _Tail] | None:
    """Where `path` leads: the container holding its target (opened, as those on the way),
    the target's part, and a pointer to it from that container. None where jsonpointer would
    not get there, or for the root."""
    route = _route(path) if isinstance(path, str) else None
    if route is None:
        return None
    parent = _parent(document, route[0])
    return None if parent is None else (parent, route[1], route[2])


def _local(document: Any, kind: type[jsonpatch.PatchOperation], operation: dict[str, Any]) -> bool:
    """Apply an add, remove, replace, test or copy to the containers that hold the locations it
    names, with pointers of one part: jsonpatch then does not walk the document again from its
    root (the walk, with abstract-class checks at every step, was most of an operation's cost).
    False when it cannot: the operation is then left to jsonpatch on the whole document, which
    reports the error as its own. None of these operations changes anything before it fails."""
    try:
        if kind is jsonpatch.CopyOperation:
            return _copy(document, operation)
        at = _at(document, operation.get("path"))
        if at is None:
            return False
        parent, last, tail = at
        if kind is jsonpatch.TestOperation:
            key = _key(parent, last)
            if key is not None:
                parent[key] = decoded(parent[key])  # compared whole
        kind({**operation, "path": tail}).apply(parent)
    except _FAILED:
        return False
    return True


def _copy(document: Any, operation: dict[str, Any]) -> bool:
    """A copy, as jsonpatch's: the value at 'from' added at 'path', deep-copied by the add (a raw
    value stays raw)."""
    taken = _at(document, operation.get("from"))
    key = None if taken is None else _key(taken[0], taken[1])
    if taken is None or key is None:
        return False
    value = taken[0][key]
    placed = _at(document, operation.get("path"))
    if placed is None:
        return False
    jsonpatch.AddOperation({"op": "add", "path": placed[2], "value": value}).apply(placed[0])
    return True


_LOCAL = frozenset(
    (
        jsonpatch.AddOperation,
        jsonpatch.RemoveOperation,
        jsonpatch.ReplaceOperation,
        jsonpatch.TestOperation,
        jsonpatch.CopyOperation,
    )
)


def apply_patch(document: Any, operations: Sequence[dict[str, Any]]) -> Any:
    """Apply RFC 6902 operations to a document that may be (partly) raw; returns the result,
    patched in place where possible. Errors are jsonpatch's, as for a decoded document."""
    if isinstance(document, msgspec.Raw):
        try:
            document = _RECORD.decode(document)
        except msgspec.ValidationError:  # not an object, or a number no float holds (1e400)
            document = _open(document)
    for operation in operations:
        kind = _kind(operation)
        if isinstance(document, msgspec.Raw):  # a raw value moved or copied to the root
            with contextlib.suppress(msgspec.ValidationError):  # 1e400 stays as it is
                document = _open(document)
        if kind in _LOCAL and _local(document, kind, operation):
            continue
        op, source, path = operation["op"], operation.get("from"), operation.get("path")
        if _splits(op, source, path):
            document = _move(document, str(source), str(path))
            continue
        built = kind(operation)
        _prepare(document, built.pointer.parts, whole=op == "test")
        if op in ("move", "copy") and isinstance(source, str):
            _prepare(document, _parts(source), whole=False)  # a copied raw value stays raw
        document = built.apply(document)
    return document


def _splits(op: object, source: object, path: object) -> bool:
    """A move that takes two steps (a no-op, or a move into its own child, is jsonpatch's to
    answer as it is)."""
    if op != "move" or not isinstance(source, str) or not isinstance(path, str):
        return False
    return source != path and not path.startswith(source + "/")


def _move(document: Any, source: str, path: str) -> Any:
    """RFC 6902's move: a remove, then an add at `path` in the document the remove left. Within
    one container, that is jsonpatch's move there. Otherwise done as two steps so that `path` is
    opened after the remove: when it runs through the array the value leaves, its indices shift,
    and opening it beforehand opens the wrong element."""
    route = _route(path)  # a malformed 'path' is reported before 'from', as jsonpatch does
    taken = _at(document, source)
    key = None if taken is None else _key(taken[0], taken[1])
    if taken is not None and key is not None and route is not None and route[0] == _way(source):
        # jsonpatch's move, there: unlike the add below, it does not deep-copy what it moves
        jsonpatch.MoveOperation({"op": "move", "from": taken[2], "path": route[2]}).apply(taken[0])
        return document
    if taken is None or key is None:  # jsonpatch, on the whole document, says why
        _prepare(document, _parts(source), whole=False)
        value = _pointer(source).resolve(document)
        document = jsonpatch.RemoveOperation({"op": "remove", "path": _pointer(source)}).apply(
            document
        )
    else:
        value = taken[0][key]
        jsonpatch.RemoveOperation({"op": "remove", "path": taken[2]}).apply(taken[0])
    placed = _at(document, path)
    if placed is None:
        _prepare(document, _parts(path), whole=False)
        return jsonpatch.AddOperation({"op": "add", "path": _pointer(path), "value": value}).apply(
            document
        )
    jsonpatch.AddOperation({"op": "add", "path": placed[2], "value": value}).apply(placed[0])
    return document
