"""Patching documents that are still raw JSON text: same results as on decoded documents."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer
import msgspec
import orjson
import pytest

from content_sync.lazydoc import apply_patch, decoded, fragment

DOC: dict[str, Any] = {
    "cveMetadata": {"cveId": "CVE-2024-0001", "state": "PUBLISHED"},
    "containers": {
        "cna": {
            "metrics": [{"cvssV3_1": {"baseScore": 7.5, "vectorString": "AV:N"}}],
            "references": [{"url": "https://a"}, {"url": "https://b"}],
            "a/b": {"~k": [1, 2, {"deep": [None, True, False]}]},
        }
    },
    "dataVersion": "5.1",
}

OPS: list[list[dict[str, Any]]] = [
    [{"op": "replace", "path": "/containers/cna/metrics/0/cvssV3_1/baseScore", "value": 9.8}],
    [{"op": "add", "path": "/containers/cna/references/-", "value": {"url": "https://c"}}],
    [{"op": "add", "path": "/containers/cna/references/0", "value": {"url": "https://z"}}],
    [{"op": "remove", "path": "/containers/cna/references/1"}],
    [
        {
            "op": "test",
            "path": "/containers/cna/a~1b/~0k",
            "value": [1, 2, {"deep": [None, True, False]}],
        }
    ],
    [{"op": "replace", "path": "/containers/cna/a~1b/~0k/2/deep/1", "value": "x"}],
    [{"op": "move", "from": "/containers/cna/metrics", "path": "/metrics"}],
    [{"op": "copy", "from": "/containers/cna/references", "path": "/refs"}],
    [
        {"op": "copy", "from": "/containers/cna/references", "path": "/refs"},
        {"op": "replace", "path": "/refs/0/url", "value": "changed"},
    ],
    [
        {"op": "move", "from": "/containers/cna", "path": "/cna"},
        {"op": "add", "path": "/cna/metrics/0/cvssV3_1/extra", "value": 1},
        {"op": "remove", "path": "/cna/references/0/url"},
    ],
    [{"op": "replace", "path": "", "value": {"whole": "new"}}],
    [{"op": "test", "path": "", "value": DOC}],
    [],
]


def raw(document: Any) -> msgspec.Raw:
    return msgspec.Raw(json.dumps(document, indent=1).encode())


def encode(document: Any) -> Any:
    return orjson.loads(orjson.dumps(document, default=fragment))


@pytest.mark.parametrize("ops", OPS, ids=range(len(OPS)))
def test_same_result_as_jsonpatch_on_the_decoded_document(ops: list[dict[str, Any]]) -> None:
    expected = jsonpatch.apply_patch(copy.deepcopy(DOC), ops)
    assert encode(apply_patch(raw(DOC), ops)) == expected
    # Already decoded (a document created earlier in the same window) works the same way.
    assert encode(apply_patch(copy.deepcopy(DOC), ops)) == expected


def test_what_no_operation_reaches_is_spliced_back_verbatim() -> None:
    # The first three levels are opened at once (one pass); below them, text is kept as it is.
    text = (
        b'{"a": {"b": {"c": {"n": 1.50, "big": 123456789012345678901234567890}}}, "d": [[[1e2]]]}'
    )
    patched = apply_patch(msgspec.Raw(text), [{"op": "add", "path": "/e", "value": 1}])
    out = orjson.dumps(patched, default=fragment)
    assert out == (
        b'{"a":{"b":{"c":{"n": 1.50, "big": 123456789012345678901234567890}}},"d":[[[1e2]]],"e":1}'
    )


def test_a_number_out_of_range_near_the_top_still_patches() -> None:
    # 1e400 is valid JSON that no float holds: the one-pass opening of the first levels refuses
    # it, and the record is opened one level at a time instead, the number left as text.
    text = b'{"a": {"n": 1e400}, "b": [1]}'
    patched = apply_patch(msgspec.Raw(text), [{"op": "replace", "path": "/b/0", "value": 2}])
    assert orjson.dumps(patched, default=fragment) == b'{"a":{"n": 1e400},"b":[2]}'


def test_a_copy_is_independent_of_its_source() -> None:
    ops = [
        {"op": "copy", "from": "/containers/cna/references", "path": "/refs"},
        {"op": "replace", "path": "/refs/0/url", "value": "changed"},
    ]
    patched = encode(apply_patch(raw(DOC), ops))
    assert patched["containers"]["cna"]["references"][0]["url"] == "https://a"
    assert patched["refs"][0]["url"] == "changed"


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ([{"op": "replace", "path": "/nope/x", "value": 1}], jsonpointer.JsonPointerException),
        ([{"op": "remove", "path": "/containers/cna/references/5"}], jsonpatch.JsonPatchException),
        ([{"op": "test", "path": "/dataVersion", "value": "5.0"}], jsonpatch.JsonPatchTestFailed),
        (  # strict types, as jsonpatch compares: true is not 1
            [{"op": "test", "path": "/containers/cna/a~1b/~0k/2/deep", "value": [None, 1, 0]}],
            jsonpatch.JsonPatchTestFailed,
        ),
        ([{"op": "add", "path": "/dataVersion/x", "value": 1}], jsonpointer.JsonPointerException),
        ([{"op": "bogus", "path": "/a"}], jsonpatch.InvalidJsonPatch),
        (["not an object"], jsonpatch.InvalidJsonPatch),
    ],
)
def test_operations_that_do_not_apply_fail_as_on_a_decoded_document(
    ops: list[Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        jsonpatch.apply_patch(copy.deepcopy(DOC), ops)
    with pytest.raises(error):
        apply_patch(raw(DOC), ops)


def test_decoded_leaves_nothing_raw() -> None:
    opened = apply_patch(raw(DOC), [{"op": "add", "path": "/x", "value": 1}])
    assert _has_raw(opened)
    assert decoded(opened) == {**DOC, "x": 1}


def _has_raw(value: Any) -> bool:
    if isinstance(value, msgspec.Raw):
        return True
    if isinstance(value, dict):
        return any(_has_raw(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_raw(v) for v in value)
    return False
