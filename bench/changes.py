"""Incremental updates: the product's windows against a GET+PUT-per-change baseline.

In one run on the same node, starting from the same index of N resources (the snapshot):
- product:  `content-sync sync` (a real process) applies C changes (creates, JSON-patch updates,
  deletes, empties) in windows of 1000: one multi-get, patches in memory, one bulk per window.
- baseline: what the reference Java plugin does: for every change, its own GET, then a PUT (or a
  DELETE). Run on the first B changes only (it is slow); compared as changes per second.
Then the cost of a cycle with nothing to do: feed requests and OpenSearch requests, counted.

Both are warmed up on the node before they are timed (the product on --warmup changes of its
own, the baseline on its first 1000): a node that has just started compiles its hot paths for
the first tens of seconds, and whichever ran first would pay for it (measured: 0.43 ms of node
CPU a change for the product on a fresh node, 0.29 on a warm one).

Usage: python bench/changes.py [--resources 50000] [--changes 100000] [--baseline 10000]
                               [--warmup 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonpatch
from opensearchpy import NotFoundError, OpenSearch

from bench.common import (
    Run,
    client,
    node_cpu_seconds,
    opensearch_url,
    run_product,
    save,
    table,
    write_settings,
)
from content_sync.feed import FeedClient, iter_windows
from content_sync.lazydoc import decoded
from content_sync.retry import RetryPolicy
from content_sync.runtime import Runtime
from content_sync.settings import CTISettings, load_settings
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer

SNAPSHOT_RESOURCES_REAL = 336_000  # the real vulnerability feed (cti-api.md section 3)
BASELINE_WARMUP = 1000  # changes the baseline applies, untimed, before its timed run


def run_baseline(
    os_client: OpenSearch, feed: FeedClient, model: FeedModel, index: str, start: int, count: int
) -> Run:
    """Per change: GET the document, apply, PUT (or DELETE) it. Changes fetched in windows."""
    applied = 0
    started = time.perf_counter()
    for low, high in iter_windows(start, start + count, 1000):
        for change in feed.changes(model.context, model.consumer, low, high):
            if change.type == "delete":
                with contextlib.suppress(NotFoundError):
                    os_client.delete(index=index, id=change.resource)
            else:
                try:
                    current: dict[str, Any] | None = os_client.get(index=index, id=change.resource)[
                        "_source"
                    ]
                except NotFoundError:
                    current = None
                if change.type == "create":
                    document = decoded(change.payload)  # the client leaves it raw JSON
                else:
                    assert current is not None, f"update of missing {change.resource}"
                    document = jsonpatch.apply_patch(current["document"], change.operations or [])
                os_client.index(
                    index=index,
                    id=change.resource,
                    body={"offset": change.offset, "version": change.version, "document": document},
                )
            applied += 1
    return Run("baseline", time.perf_counter() - started, applied, 0)


def count_requests(runtime: Runtime) -> list[str]:
    calls: list[str] = []
    transport = runtime.store.client.transport
    original = transport.perform_request

    def counting(method: str, url: str, *args: Any, **kw: Any) -> Any:
        calls.append(f"{method} {url}")
        return original(method, url, *args, **kw)

    transport.perform_request = counting  # type: ignore[method-assign]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=50_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    args = parser.parse_args()
    url = opensearch_url()
    os_client = client(url)
    version = os_client.info()["version"]["number"]
    prefix = "bench-changes"
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        work = Path(tmp)
        print(f"building a feed of {args.resources} resources ...", flush=True)
        model = FeedModel(resources=args.resources, seed=3, workdir=work / "feed")
        with FeedServer(model) as server:
            config = write_settings(work / "settings.yaml", server, url, prefix)
            init_seconds, _, _ = run_product(config, "sync")  # the snapshot, as the start
            if args.warmup:
                print(f"warming up the product on {args.warmup} changes ...", flush=True)
                warm_from = model.head_offset
                server.prerender(
                    iter_windows(warm_from, model.append_changes(args.warmup, seed=7), 1000)
                )
                run_product(config, "sync")
            start = model.head_offset
            print(
                f"snapshot loaded in {init_seconds:.1f} s; appending {args.changes} changes ...",
                flush=True,
            )
            head = model.append_changes(args.changes, seed=11)
            kinds: dict[str, int] = {}
            for low, high in iter_windows(start, head, 1000):
                for c in model.changes(low, high):
                    kind = c["type"] if c["type"] != "update" or c.get("operations") else "empty"
                    kinds[kind] = kinds.get(kind, 0) + 1

            # A real feed's CPU is not on this machine: render its answers before the timed runs.
            server.prerender(iter_windows(start, head, 1000))
            # The baseline gets its own copy of the starting index.
            base_index = f"{prefix}-baseline"
            alias = f"{prefix}-cve"
            physical = next(iter(os_client.indices.get_alias(name=alias)))
            os_client.indices.put_settings(index=physical, body={"index.blocks.write": True})
            os_client.indices.clone(index=physical, target=base_index)
            os_client.indices.put_settings(index=physical, body={"index.blocks.write": False})
            os_client.indices.put_settings(index=base_index, body={"index.blocks.write": False})

            node_before = node_cpu_seconds(url)
            seconds, rss, cpu = run_product(config, "sync")
            node_cpu = node_cpu_seconds(url) - node_before
            product = Run(
                "product",
                seconds,
                head - start,
                0,
                round(rss, 1),
                round(cpu, 1),
                round(node_cpu, 1),
            )
            print(f"product: {head - start} changes in {seconds:.1f} s", flush=True)

            feed = FeedClient(CTISettings(base_url=server.base_url), RetryPolicy())
            run_baseline(os_client, feed, model, base_index, start, BASELINE_WARMUP)
            node_before = node_cpu_seconds(url)
            baseline = run_baseline(
                os_client, feed, model, base_index, start + BASELINE_WARMUP, args.baseline
            )
            base_node_cpu = node_cpu_seconds(url) - node_before
            print(f"baseline: {baseline.docs} changes in {baseline.seconds:.1f} s", flush=True)

            # Spot-check the product's content against the truth.
            os_client.indices.refresh(index=alias)
            names = random.Random(5).sample(model.names(), 300)
            mismatches = 0
            for name in names:
                expected = model.truth_doc(name, head)
                try:
                    got = os_client.get(index=alias, id=name)["_source"]
                except NotFoundError:
                    got = None
                mismatches += got != expected
            assert mismatches == 0, f"{mismatches} of {len(names)} documents differ from the truth"

            # A cycle with nothing to do.
            settings = load_settings(config)
            with Runtime(settings) as runtime:
                sync = runtime.feed_sync("bench")
                sync.run_cycle()  # warm: the state index check happens once per process
                before = len(server.requests)
                calls = count_requests(runtime)
                result = sync.run_cycle()
                assert not result.moved
                feed_requests = len(server.requests) - before
        model.close()
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")

    ratio = product.docs_per_s / baseline.docs_per_s
    rows = [
        ["run", "changes", "seconds", "changes/s", "vs baseline"],
        [
            "product",
            str(product.docs),
            f"{product.seconds:.1f}",
            f"{product.docs_per_s:.0f}",
            f"{ratio:.1f}x",
        ],
        [
            "baseline",
            str(baseline.docs),
            f"{baseline.seconds:.1f}",
            f"{baseline.docs_per_s:.0f}",
            "1.0x",
        ],
    ]
    print(
        f"\nIncremental updates, OpenSearch {version}, {args.resources} resources, "
        f"changes by kind: {json.dumps(kinds)}\n"
    )
    print(table(rows))
    print(
        f"\nno-change cycle: {feed_requests} feed request(s), {len(calls)} OpenSearch "
        f"request(s): {calls}"
    )
    per = 1000 / product.docs  # ms of CPU per change
    print(
        f"CPU per change: product {cpu * per:.3f} ms, node {node_cpu * per:.3f} ms "
        f"(baseline: node {base_node_cpu * 1000 / baseline.docs:.3f} ms); "
        f"wall per change {product.seconds * per:.3f} ms on {os.cpu_count()} cores"
    )
    print(f"content spot check: {len(names)} documents equal to the truth at offset {head}")
    path = save(
        "changes",
        {
            "opensearch": version,
            "resources": args.resources,
            "kinds": kinds,
            "runs": [product.row(), baseline.row()],
            "product_vs_baseline": round(ratio, 2),
            "cpu_ms_per_change": {
                "product": round(cpu * per, 3),
                "node": round(node_cpu * per, 3),
                "baseline_node": round(base_node_cpu * 1000 / baseline.docs, 3),
            },
            "no_change_cycle": {"feed_requests": feed_requests, "opensearch_requests": calls},
            "snapshot_init_seconds": round(init_seconds, 1),
            "warmup_changes": {"product": args.warmup, "baseline": BASELINE_WARMUP},
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
