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
value compared by `test` is decoded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def is_raw_object(value: object) -> bool:
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
    node = root
    for i, token in enumerate(tokens):
        key: Any
        if isinstance(node, dict):
            if token not in node:
                return
            key = token
        elif isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                return
            key = int(token)
        else:
            return
        child = node[key]
        last = i == len(tokens) - 1
        if last and not whole:
            return  # replaced, removed or moved as a whole: its content does not matter
        if last:
            node[key] = decoded(child)
            return
        if isinstance(child, msgspec.Raw):
            child = node[key] = _open(child)
        node = child
    if whole and not tokens:
        decoded(root)


_OPERATIONS = jsonpatch.JsonPatch.operations


def _operation(operation: object) -> jsonpatch.PatchOperation:
    """jsonpatch's object for one operation, its path parsed once. (JsonPatch builds each of its
    operations twice, to validate then to apply, and the path parse is most of that.)"""
    if not isinstance(operation, dict):
        raise jsonpatch.InvalidJsonPatch(f"operation {operation!r} is not an object")
    op = operation.get("op")
    kind = _OPERATIONS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise jsonpatch.InvalidJsonPatch(f"operation {operation!r}: unknown or missing 'op'")
    built: jsonpatch.PatchOperation = kind(operation)
    return built


def _parts(pointer: str) -> list[str]:
    parts: list[str] = jsonpointer.JsonPointer(pointer).parts
    return parts


def apply_patch(document: Any, operations: Sequence[dict[str, Any]]) -> Any:
    """Apply RFC 6902 operations to a document that may be (partly) raw; returns the result,
    patched in place where possible. Errors are jsonpatch's, as for a decoded document."""
    if isinstance(document, msgspec.Raw):
        try:
            document = _RECORD.decode(document)
        except msgspec.ValidationError:  # not an object, or a number no float holds (1e400)
            document = _open(document)
    for operation in operations:
        built = _operation(operation)
        op, source = operation["op"], operation.get("from")
        if _splits(op, source, operation["path"]):
            document = _move(document, _parts(str(source)), built.pointer.parts)
            continue
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


def _move(document: Any, source: list[str], path: list[str]) -> Any:
    """RFC 6902's move: a remove, then an add at `path` in the document the remove left. Done as
    two steps so that `path` is opened after the remove: when it runs through the array the value
    leaves, its indices shift, and opening it beforehand opens the wrong element."""
    _prepare(document, source, whole=False)
    taken = jsonpointer.JsonPointer.from_parts(source)
    value = taken.resolve(document)
    document = jsonpatch.RemoveOperation({"op": "remove", "path": taken}).apply(document)
    _prepare(document, path, whole=False)
    placed = jsonpointer.JsonPointer.from_parts(path)
    return jsonpatch.AddOperation({"op": "add", "path": placed, "value": value}).apply(document)
