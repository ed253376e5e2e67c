"""Incremental updates: the product's windows against a GET+PUT-per-change baseline.

In one run on the same node, starting from the same index of N resources (the snapshot):
- product:  `content-sync sync` (a real process) applies C changes (creates, JSON-patch updates,
  deletes, empties) in windows of 1000: one multi-get, patches in memory, one bulk per window.
- baseline: what the reference Java plugin does: for every change, its own GET, then a PUT (or a
  DELETE). Run on the first B changes only (it is slow); compared as changes per second. Its
  client is as lean as such a loop can be in Python, so that the ratio measures the approach,
  not a slow client: JSON both ways through orjson (as the product), each fetched document
  patched in place (jsonpatch's default deep-copies it first: measured ~0.5 ms a change).
Then the cost of a cycle with nothing to do: feed requests and OpenSearch requests, counted.

Both are warmed up on the node before they are timed (the product on --warmup changes of its
own, the baseline on its first 1000): a node that has just started compiles its hot paths for
the first tens of seconds, and whichever ran first would pay for it (measured: 0.43 ms of node
CPU a change for the product on a fresh node, 0.29 on a warm one).

Rounds (--rounds, default 2) alternate which of the two goes first, each run on its own copy of
the same starting index, and each timed run waits for a quiet node first (a catch-up leaves
merges behind that slowed the run after it); the best of each is compared, as
bench/snapshot.py does. Identical runs of the baseline had ranged 197-324 changes/s.

Usage: python bench/changes.py [--resources 50000] [--changes 100000] [--baseline 10000]
                               [--warmup 10000] [--rounds 2]
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
import orjson
from opensearchpy import JSONSerializer, NotFoundError, OpenSearch

from bench.common import (
    Meter,
    Run,
    client,
    opensearch_url,
    product_sync_on_quiet_node,
    run_product,
    save,
    settle,
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


class _Orjson(JSONSerializer):
    """The baseline client's JSON, both ways: orjson, as the product's."""

    def loads(self, s: str) -> Any:
        return orjson.loads(s)

    def dumps(self, data: Any) -> Any:
        return data if isinstance(data, str | bytes) else orjson.dumps(data)


def baseline_client(url: str) -> OpenSearch:
    return OpenSearch(url, timeout=300, serializer=_Orjson())


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
                    document = jsonpatch.apply_patch(
                        current["document"], change.operations or [], in_place=True
                    )
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


def restore(os_client: OpenSearch, pristine: str, target: str, alias: str | None = None) -> None:
    """`target` (and `alias` on it) as a fresh copy of the starting index `pristine`."""
    os_client.indices.delete(index=target, ignore_unavailable=True)
    os_client.indices.clone(
        index=pristine, target=target, body={"settings": {"index.blocks.write": None}}
    )
    if alias is not None:
        os_client.indices.put_alias(index=target, name=alias)
    os_client.cluster.health(index=target, wait_for_status="yellow")


def timed_product(config: Path, url: str, changes: int) -> Run:
    seconds, rss, cpu, node_cpu, _ = product_sync_on_quiet_node(config, url)
    return Run("product", seconds, changes, 0, round(rss, 1), round(cpu, 2), round(node_cpu, 2))


def timed_baseline(
    os_client: OpenSearch,
    url: str,
    feed: FeedClient,
    model: FeedModel,
    index: str,
    start: int,
    count: int,
) -> Run:
    run_baseline(os_client, feed, model, index, start, BASELINE_WARMUP)
    settle(url)
    meter = Meter(url)
    run = run_baseline(os_client, feed, model, index, start + BASELINE_WARMUP, count)
    # The client's CPU includes the in-process feed server's (small: its answers are prerendered).
    _, cpu, node, _ = meter.stop()
    run.cpu_seconds, run.node_cpu_seconds = round(cpu, 2), round(node, 2)
    return run


def spot_check(os_client: OpenSearch, model: FeedModel, alias: str, head: int) -> int:
    """Compare 300 random resources of `alias` (or an index) with the truth at `head`; return
    how many were checked."""
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
    return len(names)


def no_change_cycle(config: Path, server: FeedServer) -> tuple[int, list[str]]:
    """(feed requests, OpenSearch requests) of a cycle with nothing to do."""
    settings = load_settings(config)
    with Runtime(settings) as runtime:
        sync = runtime.feed_sync("bench")
        sync.run_cycle()  # warm: the state index check happens once per process
        before = len(server.requests)
        calls = count_requests(runtime)
        result = sync.run_cycle()
        assert not result.moved
        return len(server.requests) - before, calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=50_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="product and baseline runs (best of each is shown)"
    )
    args = parser.parse_args()
    url = opensearch_url()
    os_client = client(url)
    version = os_client.info()["version"]["number"]
    prefix = "bench-changes"
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    products: list[Run] = []
    baselines: list[Run] = []
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
            # Every run starts from its own copy of the same starting index: the product's as
            # the warm-up left it, kept read-only as `pristine`.
            alias = f"{prefix}-cve"
            physical = next(iter(os_client.indices.get_alias(name=alias)))
            pristine, base_index = f"{prefix}-pristine", f"{prefix}-baseline"
            os_client.indices.put_settings(index=physical, body={"index.blocks.write": True})
            os_client.indices.clone(index=physical, target=pristine)
            os_client.indices.put_settings(index=physical, body={"index.blocks.write": False})
            state = {"index": f"{prefix}-state", "id": f"{model.context}_{model.consumer}"}
            feed = FeedClient(CTISettings(base_url=server.base_url), RetryPolicy())
            lean = baseline_client(url)
            checked = 0
            baseline_end = BASELINE_WARMUP + args.baseline
            # Rounds alternate which of the two goes first (the machine's other load varies,
            # the node warms up); the best of each is compared. Every run is in the JSON.
            for rnd in range(args.rounds):
                order = ("product", "baseline") if rnd % 2 == 0 else ("baseline", "product")
                for which in order:
                    if which == "product":
                        if rnd:
                            restore(os_client, pristine, physical, alias)
                            os_client.update(
                                index=state["index"],
                                id=state["id"],
                                body={"doc": {"local_offset": start}},
                                params={"refresh": "true"},
                            )
                        products.append(timed_product(config, url, head - start))
                        checked = spot_check(os_client, model, alias, head)
                        last = products[-1]
                    else:
                        restore(os_client, pristine, base_index)
                        baselines.append(
                            timed_baseline(lean, url, feed, model, base_index, start, args.baseline)
                        )
                        # The baseline's work is checked too: a wrong one could be fast.
                        spot_check(os_client, model, base_index, start + baseline_end)
                        last = baselines[-1]
                    print(
                        f"round {rnd + 1}: {which} {last.docs} changes in {last.seconds:.1f} s "
                        f"({last.docs_per_s:.0f}/s)",
                        flush=True,
                    )
            feed_requests, calls = no_change_cycle(config, server)
        model.close()
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")

    product = max(products, key=lambda r: r.docs_per_s)
    baseline = max(baselines, key=lambda r: r.docs_per_s)
    ratio = product.docs_per_s / baseline.docs_per_s
    rows = [["run", "changes", "seconds", "changes/s", "vs baseline"]]
    for run in (product, baseline):
        rows.append(
            [
                run.name,
                str(run.docs),
                f"{run.seconds:.1f}",
                f"{run.docs_per_s:.0f}",
                f"{run.docs_per_s / baseline.docs_per_s:.1f}x",
            ]
        )
    print(
        f"\nIncremental updates, OpenSearch {version}, {args.resources} resources, best of "
        f"{args.rounds} alternating rounds, changes by kind: {json.dumps(kinds)}\n"
    )
    print(table(rows))
    pairs = zip(products, baselines, strict=True)
    rates = ", ".join(f"{r.name} {r.docs_per_s:.0f}/s" for pair in pairs for r in pair)
    print(f"every run, in rounds: {rates}")
    print(
        f"\nno-change cycle: {feed_requests} feed request(s), {len(calls)} OpenSearch "
        f"request(s): {calls}"
    )
    cpu = {
        "product": round(1000 * (product.cpu_seconds or 0) / product.docs, 3),
        "node": round(1000 * (product.node_cpu_seconds or 0) / product.docs, 3),
        "baseline_client": round(1000 * (baseline.cpu_seconds or 0) / baseline.docs, 3),
        "baseline_node": round(1000 * (baseline.node_cpu_seconds or 0) / baseline.docs, 3),
    }
    print(
        f"CPU per change, ms: product {cpu['product']}, node {cpu['node']} (baseline: client "
        f"{cpu['baseline_client']}, node {cpu['baseline_node']}); wall per change "
        f"{1000 * product.seconds / product.docs:.3f} ms on {os.cpu_count()} cores"
    )
    print(
        f"content spot check: {checked} documents equal to the truth at offset {head} after "
        f"every product run, and at {start + baseline_end} after every "
        "baseline run"
    )
    path = save(
        "changes",
        {
            "opensearch": version,
            "resources": args.resources,
            "kinds": kinds,
            "rounds": args.rounds,
            "runs": [product.row(), baseline.row()],
            "all_runs": [r.row() for r in products + baselines],
            "product_vs_baseline": round(ratio, 2),
            "cpu_ms_per_change": cpu,
            "no_change_cycle": {"feed_requests": feed_requests, "opensearch_requests": calls},
            "snapshot_init_seconds": round(init_seconds, 1),
            "warmup_changes": {"product": args.warmup, "baseline": BASELINE_WARMUP},
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
