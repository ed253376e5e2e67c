"""The CPU of applying changes in memory: the product's windows against plain jsonpatch.

No node and no feed server: this isolates what the product itself spends per change, which on
a 2-core machine competes with the node for the same cores (bench/changes.py measures the
whole). For C changes over N resources (~12 KB CVE-like records), window by window:

- product:  the feed's answer decoded as FeedClient does, the stored documents as the
  multi-get hands them over (raw JSON), apply_window (lazydoc + jsonpatch), and the bulk
  operations built from the results (content documents encoded);
- baseline: the obvious per-change code: json.loads the answer and, for every change, the
  current document decoded with json.loads, jsonpatch.apply_patch, json.dumps back (what a
  GET + apply + PUT per change costs the client, without the requests).

Both run on the same prepared inputs; the best of --repeat rounds is kept, and every window's
results are checked equal between the two before anything is timed.

Usage: python -m bench.patching [--resources 3000] [--changes 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jsonpatch
import orjson

from bench.common import save, table
from content_sync.bulkbody import source_bytes
from content_sync.feed import Change, _decode_changes, _parse_change, iter_windows
from content_sync.patching import apply_window, needs_stored
from content_sync.store import BulkOp, mget_documents
from content_sync.sync import _bulk_ops
from content_sync.testing.model import FeedModel

# (the changes answer as the feed sends it, the multi-get answer for the documents the window
# needs as the node sends it, name -> stored content document as JSON bytes)
Window = tuple[bytes, bytes, dict[str, bytes]]


def prepare(resources: int, changes: int) -> tuple[list[Window], str, dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        model = FeedModel(resources=resources, seed=3, workdir=Path(tmp) / "feed")
        start = model.head_offset
        head = model.append_changes(changes, seed=11)
        windows: list[Window] = []
        kinds: dict[str, int] = {}
        for low, high in iter_windows(start, head, 1000):
            wire = model.changes(low, high)
            for c in wire:
                kind = c["type"] if c["type"] != "update" or c.get("operations") else "empty"
                kinds[kind] = kinds.get(kind, 0) + 1
            stored = {}
            for name in {c["resource"] for c in wire}:
                doc = model.truth_doc(name, low)
                if doc is not None:
                    stored[name] = orjson.dumps(doc)
            parsed = [_parse_change(item, model.context, "bench") for item in wire]
            answer = b'{"docs":[%s]}' % b",".join(
                b'{"_index":"i","_id":%s,"found":true,"_source":%s}' % (orjson.dumps(n), stored[n])
                if n in stored
                else b'{"_index":"i","_id":%s,"found":false}' % orjson.dumps(n)
                for n in needs_stored(parsed)
            )
            windows.append((orjson.dumps({"data": wire}), answer, stored))
        context = model.context
        model.close()
    return windows, context, kinds


def product(window: Window, context: str) -> tuple[list[Change], list[BulkOp]]:
    body, answer, _ = window
    changes = [_parse_change(item, context, "bench") for item in _decode_changes(body)["data"]]
    return changes, _bulk_ops(apply_window(changes, mget_documents(answer, "i")))


def baseline(window: Window, context: str) -> dict[str, bytes | None]:
    body, _, stored = window
    current: dict[str, bytes | None] = dict(stored)
    for change in json.loads(body)["data"]:
        name = change["resource"]
        if change["type"] == "delete":
            current[name] = None
            continue
        if change["type"] == "create":
            document = change["payload"]
        else:
            before = current.get(name)
            assert before is not None, f"update of missing {name}"
            document = jsonpatch.apply_patch(
                json.loads(before)["document"], change.get("operations") or []
            )
        doc = {"offset": change["offset"], "version": change["version"], "document": document}
        current[name] = json.dumps(doc).encode()
    return current


def check(windows: list[Window], context: str) -> None:
    """Each window's bulk operations carry what the baseline computed, document for document."""
    for window in windows:
        changes, ops = product(window, context)
        expected = baseline(window, context)
        assert {op[1] for op in ops} == {c.resource for c in changes}, "not one op a resource"
        for kind, name, source, _version in ops:
            want = expected[name]
            if kind == "delete":
                assert want is None, f"{name}: deleted by the product only"
            else:
                assert source is not None, f"{name}: no document from the product"
                assert want is not None, f"{name}: deleted by the baseline only"
                assert orjson.loads(source_bytes(source)) == json.loads(want), f"{name} differs"


def cpu_seconds(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"preparing {args.changes} changes over {args.resources} resources ...", flush=True)
    windows, context, kinds = prepare(args.resources, args.changes)
    check(windows, context)

    def run_product() -> None:
        for window in windows:
            product(window, context)

    def run_baseline() -> None:
        for window in windows:
            baseline(window, context)

    # Alternate, so that neither always runs on a warmer (or hotter) machine.
    mine = theirs = float("inf")
    for _ in range(args.repeat):
        mine = min(mine, cpu_seconds(run_product))
        theirs = min(theirs, cpu_seconds(run_baseline))
    per = 1e6 / args.changes
    print(f"\nIn-memory patching, {args.changes} changes by kind: {json.dumps(kinds)}\n")
    print(
        table(
            [
                ["run", "CPU s", "us/change", "vs baseline"],
                ["product", f"{mine:.2f}", f"{mine * per:.1f}", f"{theirs / mine:.1f}x"],
                ["baseline", f"{theirs:.2f}", f"{theirs * per:.1f}", "1.0x"],
            ]
        )
    )
    path = save(
        "patching",
        {
            "resources": args.resources,
            "changes": args.changes,
            "kinds": kinds,
            "us_per_change": {"product": round(mine * per, 1), "baseline": round(theirs * per, 1)},
            "product_vs_baseline": round(theirs / mine, 2),
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
