"""Indexing while downloading: what a far-away feed costs the snapshot initialisation.

The product indexes the snapshot's first member as the archive arrives (content_sync/growing.py)
instead of downloading it first. On loopback the download takes a second and the overlap cannot
show; a real feed's archive comes over the Internet. Here the local feed paces the download to
--mbps, and for N resources of ~12 KB, in one run on the same node:

- download: the archive alone, read at that rate and thrown away (D);
- load:     `content-sync sync` with the feed on loopback at full speed (L: the load alone);
- product:  `content-sync sync` with the paced feed (T).

Downloading first would take about D + L; overlapped, the least possible is max(D, L). The
figure of merit is T against both.

Usage: python -m bench.overlap [--resources 50000] [--mbps 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import client, opensearch_url, run_product, save, table, write_settings
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer


def download_seconds(url: str) -> tuple[float, int]:
    """Read the archive at `url` to its end; (seconds, bytes)."""
    started, size = time.perf_counter(), 0
    with httpx.stream("GET", url, timeout=300) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_raw(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=50_000)
    parser.add_argument("--mbps", type=float, default=20.0, help="feed rate, MB (1e6 B) a second")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best of each is kept")
    args = parser.parse_args()
    url = opensearch_url()
    os_client = client(url)
    version = os_client.info()["version"]["number"]
    prefix = "bench-overlap"

    def fresh() -> None:  # no index and no state: the next sync is a first initialisation
        os_client.indices.delete(
            index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all"
        )

    fresh()
    best: dict[str, float] = {}
    runs: dict[str, list[float]] = {"download": [], "load": [], "product": []}
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        work = Path(tmp)
        print(f"building a feed of {args.resources} resources ...", flush=True)
        model = FeedModel(resources=args.resources, seed=3, workdir=work / "feed")
        with FeedServer(model) as server:
            config = write_settings(work / "settings.yaml", server, url, prefix)
            archive_bytes = model.snapshot_path.stat().st_size
            for round_ in range(args.repeat):
                # Alternate the order of the two product runs from round to round.
                order = ["load", "product"] if round_ % 2 == 0 else ["product", "load"]
                for what in ["download", *order]:
                    server.snapshot_rate = None if what == "load" else args.mbps * 1e6
                    if what == "download":
                        seconds, size = download_seconds(server.snapshot_url())
                        assert size == archive_bytes, f"downloaded {size} of {archive_bytes} bytes"
                    else:
                        fresh()
                        seconds, _, _ = run_product(config, "sync")
                        count = os_client.count(index=f"{prefix}-cve")["count"]
                        assert count == args.resources, f"{count} documents indexed"
                    runs[what].append(seconds)
                    print(f"[round {round_ + 1}] {what} {seconds:.1f} s", flush=True)
        model.close()
    fresh()

    best = {k: min(v) for k, v in runs.items()}
    d, load, t = best["download"], best["load"], best["product"]
    sequential, floor = d + load, max(d, load)
    print(
        f"\nSnapshot initialisation from a feed paced to {args.mbps:g} MB/s, OpenSearch "
        f"{version}, {args.resources} resources, archive {archive_bytes / 1e6:.1f} MB "
        f"(best of {args.repeat})\n"
    )
    print(
        table(
            [
                ["run", "seconds"],
                ["download alone (D)", f"{d:.1f}"],
                ["load from loopback (L)", f"{load:.1f}"],
                ["download first, then load (D + L)", f"{sequential:.1f}"],
                ["least possible (max(D, L))", f"{floor:.1f}"],
                ["product, paced feed (T)", f"{t:.1f}"],
            ]
        )
    )
    print(
        f"\nT / (D + L) = {t / sequential:.2f}; T / max(D, L) = {t / floor:.2f}; "
        f"saved {sequential - t:.1f} s of {sequential:.1f}"
    )
    path = save(
        "overlap",
        {
            "opensearch": version,
            "resources": args.resources,
            "mbps": args.mbps,
            "archive_bytes": archive_bytes,
            "runs": runs,
            "best": best,
            "t_vs_sequential": round(t / sequential, 3),
            "t_vs_floor": round(t / floor, 3),
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
