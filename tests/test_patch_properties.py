"""Properties of the patch engine (patching.apply_window, lazydoc.apply_patch), with hypothesis.

The reference is the feed model's own strict RFC 6902 applier (content_sync.testing.patch),
written independently of the jsonpatch library the product builds on; it is applied operation by
operation on a deep copy. Results are compared as the bytes the product would write (through
snapshot.content_source), canonicalised, so a bool that became an int or a float that became an
int is a difference.

- Valid patches (every operation kind, array indices and '-', keys needing ~0 / ~1, empty keys)
  give the reference's result, on stored documents both decoded and raw (as the store serves
  them).
- Invalid patches (missing member, index out of range, path through a scalar, failing test,
  move into its own child, ...) raise DriftError naming the change, and leave a raw stored
  document as it was. (A decoded one is the window's own copy and may be patched halfway: the
  window is then dropped whole, see patching.py.)
- A window applied in one go equals its changes applied one at a time, and both equal the
  reference; a window replayed onto its own result changes nothing.

Deterministic: seeded from tests/reliability.py, no example database. About 200 examples per
property in the default suite, ten times that under RELIABILITY_FULL.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from content_sync.errors import DriftError
from content_sync.feed import Change
from content_sync.patching import apply_window
from content_sync.snapshot import content_source
from content_sync.testing.patch import PatchError, apply_ops, pointer
from content_sync.testing.patch import _equal as json_equal
from tests.reliability import SEED, TALLY, scale

pytestmark = pytest.mark.reliability

PROPERTY = settings(
    max_examples=scale(200, 2000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Keys that need escaping ('~', '/'), look like indices ('0', '-') or are empty.
KEYS = st.text(alphabet=st.sampled_from("a~/01-é"), max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=5)
NAMES = ("CVE-1", "CVE-2", "TID-3")


def canonical(value: Any) -> bytes:
    """JSON with sorted keys: equal only when equal as JSON, types included."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def written(doc: dict[str, Any]) -> bytes:
    """What the product would write for a content document, canonicalised."""
    return canonical(orjson.loads(content_source(doc["offset"], doc["version"], doc["document"])))


def raw(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored content document as Store.mget hands it over: the payload still JSON text."""
    return {**doc, "document": msgspec.Raw(orjson.dumps(doc["document"]))}


def nodes(doc: Any, at: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every (path tokens, value) in `doc`, the root included."""
    out = [(at, doc)]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += nodes(value, (*at, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += nodes(value, (*at, i))
    return out


def applies(doc: Any, ops: list[dict[str, Any]]) -> bool:
    try:
        apply_ops(copy.deepcopy(doc), copy.deepcopy(ops))
    except (PatchError, KeyError):
        return False
    return True


def valid_op(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    """One operation that applies to `doc` (checked by the reference; a `test` of an existing
    value when the drawn candidate does not)."""
    every = nodes(doc)
    inner = [n for n in every if n[0]]
    containers = [n for n in every if isinstance(n[1], dict | list)]
    kind = data.draw(st.sampled_from(("add", "remove", "replace", "move", "copy", "test")))
    op: dict[str, Any] | None = None
    if kind in ("add", "move", "copy"):
        at, node = data.draw(st.sampled_from(containers))
        if isinstance(node, dict):
            keys = st.sampled_from(sorted(node)) | KEYS if node else KEYS
            target: str = pointer(*at, data.draw(keys))
        else:
            index = data.draw(st.integers(0, len(node)).map(str) | st.just("-"))
            target = pointer(*at) + "/" + index
        if kind == "add":
            op = {"op": "add", "path": target, "value": data.draw(VALUES)}
        elif inner:
            source = data.draw(st.sampled_from(inner))[0]
            op = {"op": kind, "from": pointer(*source), "path": target}
    elif kind in ("remove", "replace") and inner:
        path = pointer(*data.draw(st.sampled_from(inner))[0])
        op = {"op": "remove", "path": path}
        if kind == "replace":
            op = {"op": "replace", "path": path, "value": data.draw(VALUES)}
    if op is None or not applies(doc, [op]):
        at, value = data.draw(st.sampled_from(every))
        op = {"op": "test", "path": pointer(*at), "value": copy.deepcopy(value)}
    return op


def valid_patch(data: st.DataObject, doc: dict[str, Any], most: int = 6) -> list[dict[str, Any]]:
    """Operations valid in sequence: each is drawn against the document the previous ones made
    (which `doc` becomes: the reference applies them to it in place)."""
    ops = []
    for _ in range(data.draw(st.integers(0, most))):
        op = valid_op(data, doc)
        ops.append(op)
        doc = apply_ops(doc, [copy.deepcopy(op)])
        assert isinstance(doc, dict)  # root replacements are not drawn
    return ops


def update(offset: int, name: str, ops: list[dict[str, Any]]) -> Change:
    return Change(offset, "update", name, offset, operations=ops)


@PROPERTY
@seed(SEED)
@given(data=st.data(), document=DOCUMENTS, stored_raw=st.booleans())
def test_valid_patches_give_the_reference_result(
    data: st.DataObject, document: dict[str, Any], stored_raw: bool
) -> None:
    expected = copy.deepcopy(document)
    ops = valid_patch(data, expected)
    stored = {"offset": 10, "version": 3, "document": copy.deepcopy(document)}
    window = [update(11, "CVE-1", copy.deepcopy(ops))]

    result = apply_window(window, {"CVE-1": raw(stored) if stored_raw else stored})

    got = result.final["CVE-1"]
    assert got is not None
    assert written(got) == canonical({"offset": 11, "version": 11, "document": expected})
    assert result.applied["update"] == 1
    TALLY["documents compared"] += 1


def invalid_op(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    """An operation that cannot apply to `doc` (the reference refuses it too)."""
    every = nodes(doc)
    dicts = [n for n in every if isinstance(n[1], dict)]
    lists = [n for n in every if isinstance(n[1], list)]
    scalars = [n for n in every if n[0] and not isinstance(n[1], dict | list)]
    kinds = ["missing-member", "missing-parent", "unknown-op", "no-path", "failing-test"]
    kinds += ["index-out-of-range", "bad-index"] if lists else []
    kinds += ["through-a-scalar"] if scalars else []
    kinds += ["into-own-child"] if len(every) > 1 else []
    kind = data.draw(st.sampled_from(kinds))
    if kind in ("missing-member", "missing-parent"):
        at, node = data.draw(st.sampled_from(dicts))
        key = data.draw(KEYS.filter(lambda k: k not in node))
        path = pointer(*at, key) + ("/x" if kind == "missing-parent" else "")
        verb = data.draw(st.sampled_from(("remove", "replace", "test", "move", "copy", "add")))
        if verb == "add" and kind == "missing-member":
            verb = "remove"  # adding a new member is valid
        if verb in ("move", "copy"):
            return {"op": verb, "from": path, "path": "/elsewhere"}
        return {"op": verb, "path": path, "value": 1}
    if kind == "index-out-of-range":
        at, node = data.draw(st.sampled_from(lists))
        verb = data.draw(st.sampled_from(("remove", "replace", "add", "test")))
        beyond = len(node) + (1 if verb == "add" else 0) + data.draw(st.integers(0, 3))
        return {"op": verb, "path": pointer(*at, beyond), "value": 0}
    if kind == "bad-index":
        at, node = data.draw(st.sampled_from(lists))
        index = data.draw(st.sampled_from(("-", "01", "-1", "1.0", "x", " 0")))
        verb = "add" if index != "-" else data.draw(st.sampled_from(("remove", "replace")))
        return {"op": verb, "path": pointer(*at) + "/" + index, "value": 0}
    if kind == "through-a-scalar":
        at, _ = data.draw(st.sampled_from(scalars))
        return {"op": "add", "path": pointer(*at, "x"), "value": 0}
    if kind == "into-own-child":
        at, node = data.draw(st.sampled_from([n for n in every if n[0]]))
        return {"op": "move", "from": pointer(*at), "path": pointer(*at, "x")}
    if kind == "unknown-op":
        return {"op": data.draw(st.sampled_from(("upsert", "merge", "", None))), "path": "/a"}
    if kind == "no-path":
        return {"op": "remove"}
    at, value = data.draw(st.sampled_from(every))
    other = data.draw(VALUES.filter(lambda v: not json_equal(v, value)))
    return {"op": "test", "path": pointer(*at), "value": other}


@PROPERTY
@seed(SEED)
@given(data=st.data(), document=DOCUMENTS, stored_raw=st.booleans())
def test_invalid_patches_are_drift_and_leave_a_raw_stored_document_be(
    data: st.DataObject, document: dict[str, Any], stored_raw: bool
) -> None:
    work = copy.deepcopy(document)
    first = valid_patch(data, work, most=3)
    before_bad = valid_patch(data, work, most=2)
    bad = invalid_op(data, work)
    assert not applies(work, [bad]), bad  # the reference refuses it as well
    stored: dict[str, Any] = {"offset": 10, "version": 3, "document": copy.deepcopy(document)}
    given_doc = raw(stored) if stored_raw else stored
    text = bytes(given_doc["document"]) if stored_raw else b""
    window = [
        Change(11, "create", "TID-3", 1, payload={"k": 1}),
        update(12, "CVE-1", copy.deepcopy(first)),
        update(13, "CVE-1", [*copy.deepcopy(before_bad), bad]),
    ]
    TALLY["hostile inputs tried"] += 1

    with pytest.raises(DriftError, match="update at offset 13 of CVE-1 does not apply") as info:
        apply_window(window, {"CVE-1": given_doc})

    assert (info.value.offset, info.value.resource) == (13, "CVE-1")
    if stored_raw:  # as the store serves it: untouched, whatever the patch did before failing
        assert isinstance(given_doc["document"], msgspec.Raw)
        assert bytes(given_doc["document"]) == text
        assert (given_doc["offset"], given_doc["version"]) == (10, 3)


@pytest.mark.parametrize("stored_raw", [True, False])
def test_move_into_a_sibling_that_the_removal_shifts(stored_raw: bool) -> None:
    """Found by the property above (RELIABILITY_FULL): the move's target is evaluated after its
    source is removed, which shifts the array both go through; on a raw document the engine used
    to open the element before the shift, then failed on the raw one after it (a false drift)."""
    document = {"0": [[], {"k": 1}, {}], "1": None}
    ops = [{"op": "move", "from": "/0/0", "path": "/0/1/new"}]
    stored = {"offset": 10, "version": 3, "document": document}
    result = apply_window(
        [update(11, "CVE-1", ops)], {"CVE-1": raw(stored) if stored_raw else stored}
    )
    got = result.final["CVE-1"]
    assert got is not None
    expected = {"0": [{"k": 1}, {"new": []}], "1": None}
    assert written(got) == canonical({"offset": 11, "version": 11, "document": expected})


def test_update_of_a_resource_that_is_not_stored_is_drift() -> None:
    with pytest.raises(DriftError, match="not in the index"):
        apply_window([update(5, "CVE-9", [{"op": "test", "path": "", "value": {}}])], {})


# ------------------------------------------------------------------ windows


def window_of(
    data: st.DataObject, stored: dict[str, dict[str, Any]], start: int
) -> tuple[list[Change], dict[str, dict[str, Any]]]:
    """Changes at offsets start+1, ... valid in sequence against `stored`, and the reference's
    content after them (name -> content document)."""
    truth = copy.deepcopy(stored)
    changes: list[Change] = []
    offset = start
    for _ in range(data.draw(st.integers(1, 12))):
        offset += data.draw(st.integers(1, 3))  # holes, as with_empties=false makes
        name = data.draw(st.sampled_from(NAMES))
        kinds = ["create", "delete"] + (["update", "update", "update"] if name in truth else [])
        kind = data.draw(st.sampled_from(kinds))
        if kind == "create":
            payload = data.draw(DOCUMENTS)
            changes.append(Change(offset, "create", name, offset, payload=copy.deepcopy(payload)))
            truth[name] = {"offset": offset, "version": offset, "document": payload}
        elif kind == "delete":
            changes.append(Change(offset, "delete", name, offset))
            truth.pop(name, None)
        else:
            document = truth[name]["document"]
            ops = valid_patch(data, document, most=4)  # patches the truth's copy in place
            changes.append(update(offset, name, copy.deepcopy(ops)))
            truth[name] = {"offset": offset, "version": offset, "document": document}
    return changes, truth


def stored_documents(data: st.DataObject) -> dict[str, dict[str, Any]]:
    names = data.draw(st.lists(st.sampled_from(NAMES), unique=True))
    return {n: {"offset": 10, "version": 10, "document": data.draw(DOCUMENTS)} for n in names}


def run(changes: list[Change], store: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Apply one window as the product does: the stored documents as the store serves them
    (raw), the final documents written back as the bytes the product writes."""
    result = apply_window(
        copy.deepcopy(changes), {n: raw(d) for n, d in store.items() if d is not None}
    )
    out = dict(store)
    for name, doc in result.final.items():
        if doc is None:
            out.pop(name, None)
        else:
            out[name] = orjson.loads(content_source(doc["offset"], doc["version"], doc["document"]))
    return out


def same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    return canonical(a) == canonical(b)


@PROPERTY
@seed(SEED)
@given(data=st.data())
def test_a_window_in_one_go_equals_its_changes_one_by_one(data: st.DataObject) -> None:
    stored = stored_documents(data)
    changes, truth = window_of(data, stored, start=10)

    at_once = run(changes, stored)
    one_by_one = stored
    for change in changes:
        one_by_one = run([change], one_by_one)

    assert same(at_once, truth)
    assert same(one_by_one, truth)
    TALLY["documents compared"] += 2 * len(truth)


@PROPERTY
@seed(SEED)
@given(data=st.data())
def test_a_replayed_window_changes_nothing(data: st.DataObject) -> None:
    """A window whose write landed but whose offset was not recorded runs again on its own
    result: every change in it is at or below the stored offsets, and nothing moves."""
    stored = stored_documents(data)
    changes, truth = window_of(data, stored, start=10)
    after = run(changes, stored)

    again = run(changes, after)

    assert same(again, after) and same(again, truth)
    only_updated = [n for n in NAMES if {c.type for c in changes if c.resource == n} == {"update"}]
    replay = apply_window(
        [c for c in copy.deepcopy(changes) if c.resource in only_updated],
        {n: raw(after[n]) for n in only_updated},
    )
    assert replay.final == {}  # updates at or below the stored offset: skipped, not re-applied
    assert replay.skipped == sum(1 for c in changes if c.resource in only_updated)
    TALLY["documents compared"] += len(truth)
