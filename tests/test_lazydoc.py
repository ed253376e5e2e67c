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


# Tokens jsonpointer refuses as array indices (or that int() reads but JSON Pointer does not),
# escapes, and a member named like an index: applied to the container that holds the target,
# each must still give jsonpatch's answer, error type and message included.
ODD_TOKENS = ["0", "1", "3", "-", "01", "-1", "+1", " 1", "1_0", "\u0661", "", "~0k", "x"]


def _outcome(apply: Any, document: Any, ops: list[Any]) -> tuple[str, Any]:
    try:
        return "ok", encode(apply(document, ops))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        return type(exc).__name__, str(exc)


def _reference(document: Any, ops: list[Any]) -> Any:
    for op in ops:  # one by one, as apply_patch does (JsonPatch validates the whole list first)
        document = jsonpatch.JsonPatch([op]).apply(document, in_place=True)
    return document


def assert_jsonpatchs_answer(ops: list[Any], *, exact: bool = True) -> None:
    """Same result as jsonpatch on the decoded document, or the same error: its message too on
    a decoded document (on a raw one, a message may show a raw member). A move takes two steps
    (see _move), so unless `exact`, any of jsonpatch's errors will do for one that fails."""
    expected = _outcome(_reference, copy.deepcopy(DOC), copy.deepcopy(ops))
    got_raw = _outcome(apply_patch, raw(DOC), copy.deepcopy(ops))
    got = _outcome(apply_patch, copy.deepcopy(DOC), copy.deepcopy(ops))
    if expected[0] == "ok":
        assert got_raw == got == expected
    elif exact:
        assert got == expected
        assert got_raw[0] == expected[0]
    else:
        assert "ok" not in (got[0], got_raw[0])


@pytest.mark.parametrize("token", ODD_TOKENS)
@pytest.mark.parametrize("verb", ["add", "remove", "replace", "test", "copy", "move"])
@pytest.mark.parametrize("where", ["/containers/cna/references", "/containers/cna/a~1b"])
def test_odd_tokens_give_jsonpatchs_answer(verb: str, where: str, token: str) -> None:
    if verb in ("copy", "move"):
        for source, target in ((token, "0"), ("0", token), ("~0k", token)):
            op = {"op": verb, "from": f"{where}/{source}", "path": f"{where}/{target}"}
            assert_jsonpatchs_answer([op], exact=verb == "copy")
    else:
        assert_jsonpatchs_answer([{"op": verb, "path": f"{where}/{token}", "value": {"n": 1}}])


def test_operations_are_left_as_they_were() -> None:
    # jsonpatch copies the values it adds: a later operation that changes the added value must
    # not reach into the patch, which then applies the same way again.
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/containers/cna/x", "value": {"list": [1]}},
        {"op": "add", "path": "/containers/cna/x/list/-", "value": 2},
        {"op": "copy", "from": "/containers/cna/x", "path": "/containers/cna/y"},
        {"op": "add", "path": "/containers/cna/y/list/-", "value": 3},
        {"op": "move", "from": "/containers/cna/y", "path": "/containers/cna/z"},
        {"op": "replace", "path": "/containers/cna/z/list/0", "value": {"v": []}},
        {"op": "add", "path": "/containers/cna/z/list/0/v/-", "value": 4},
    ]
    before = copy.deepcopy(ops)
    first = encode(apply_patch(raw(DOC), ops))
    assert ops == before
    assert encode(apply_patch(raw(DOC), ops)) == first == jsonpatch.apply_patch(DOC, before)


@pytest.mark.parametrize(
    "ops",
    [
        [  # within one array, the value taken out shifts what follows it
            {
                "op": "move",
                "from": "/containers/cna/references/0",
                "path": "/containers/cna/references/1",
            },
            {
                "op": "move",
                "from": "/containers/cna/references/1",
                "path": "/containers/cna/references/-",
            },
        ],
        [{"op": "move", "from": "/containers/cna/a~1b", "path": "/containers/cna/c~1d"}],
        [{"op": "move", "from": "/containers/cna/references/1", "path": "/refs"}],
        [
            {
                "op": "move",
                "from": "/containers/cna/references/0",
                "path": "/containers/cna/references/2",
            }
        ],
        [{"op": "move", "from": "/containers/cna", "path": "/containers/cna/x"}],  # own child
        [
            {
                "op": "move",
                "from": "/containers/cna/references/0",
                "path": "/containers/cna/references/0",
            }
        ],
    ],
    ids=range(6),
)
def test_moves_give_jsonpatchs_answer(ops: list[dict[str, Any]]) -> None:
    assert_jsonpatchs_answer(ops, exact=False)


@pytest.mark.parametrize("verb", ["move", "copy"])
def test_a_raw_value_moved_to_the_root_is_patched_further(verb: str) -> None:
    # The value taken is still raw text: it is opened before the next operation, as a record is.
    ops: list[dict[str, Any]] = [
        {"op": verb, "from": "/containers/cna/a~1b", "path": ""},
        {"op": "test", "path": "", "value": {"~k": [1, 2, {"deep": [None, True, False]}]}},
        {"op": "add", "path": "/~0k/-", "value": 3},
    ]
    expected = _reference(copy.deepcopy(DOC), copy.deepcopy(ops))
    assert encode(apply_patch(raw(DOC), copy.deepcopy(ops))) == expected
