"""Peak resident memory of the local feed while it builds and serves a big snapshot.

Each size runs in its own child process (so its RSS is its own): the child builds a FeedModel of
N resources, publishes the snapshot and serves it on 127.0.0.1; the parent downloads the whole
archive over HTTP (checking it byte for byte against the file) and then asks the child for its
peak RSS (VmHWM).

    .venv/bin/python bench/feed_memory.py                 # 1000 and 200000
    .venv/bin/python bench/feed_memory.py 1000 50000      # any sizes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

LIMIT_MB = 300


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(resources: int, seed: int, history: int, workdir: str) -> None:
    from content_sync.testing.model import FeedModel
    from content_sync.testing.server import FeedServer

    started = time.monotonic()
    model = FeedModel(resources=resources, seed=seed, history=history, workdir=workdir)
    build_s = time.monotonic() - started
    snap = model.snapshot
    assert snap is not None
    with FeedServer(model) as server:
        print(
            json.dumps(
                {
                    "consumer_url": server.consumer_url,
                    "path": str(snap.path),
                    "build_s": build_s,
                    "zip_bytes": snap.path.stat().st_size,
                    "member_bytes": snap.member_size,
                    "lines": snap.lines,
                    "hwm_build_kb": _status_kb("VmHWM"),
                }
            ),
            flush=True,
        )
        sys.stdin.readline()  # the parent has finished downloading
    print(json.dumps({"hwm_kb": _status_kb("VmHWM"), "rss_kb": _status_kb("VmRSS")}), flush=True)


def run(resources: int, seed: int, history: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="feed-bench-") as workdir:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(resources),
                "--seed",
                str(seed),
                "--history",
                str(history),
                "--workdir",
                workdir,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            info: dict[str, Any] = json.loads(proc.stdout.readline())
            with httpx.Client(timeout=60) as client:
                link = client.get(info["consumer_url"]).json()["data"]["last_snapshot_link"]
                digest = hashlib.sha256()
                received = 0
                started = time.monotonic()
                with client.stream("GET", link) as resp:
                    resp.raise_for_status()
                    for chunk in resp.iter_raw(1 << 20):
                        digest.update(chunk)
                        received += len(chunk)
                info["download_s"] = time.monotonic() - started
            expected = hashlib.sha256()
            with open(info["path"], "rb") as fh:
                while chunk := fh.read(1 << 20):
                    expected.update(chunk)
            info["download_ok"] = received == info["zip_bytes"] and (
                digest.digest() == expected.digest()
            )
            proc.stdin.write("done\n")
            proc.stdin.flush()
            info.update(json.loads(proc.stdout.readline()))
        finally:
            proc.stdin.close()
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(f"feed child for {resources} resources failed")
    info["resources"] = resources
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 200_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="random changes appended before the snapshot (default 0)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.seed, args.history, args.workdir)
        return 0

    rows = [run(n, args.seed, args.history) for n in args.sizes]
    mb = 1024 * 1024
    header = (
        f"{'resources':>10} {'build s':>8} {'zip MB':>8} {'json MB':>8} {'avg line':>8} "
        f"{'download s':>10} {'ok':>3} {'RSS build MB':>12} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['resources']:>10} {r['build_s']:>8.1f} {r['zip_bytes'] / mb:>8.1f} "
            f"{r['member_bytes'] / mb:>8.1f} {r['member_bytes'] // max(1, r['lines']):>8} "
            f"{r['download_s']:>10.1f} {'yes' if r['download_ok'] else 'NO':>3} "
            f"{r['hwm_build_kb'] / 1024:>12.1f} {r['hwm_kb'] / 1024:>11.1f}"
        )
    worst = max(r["hwm_kb"] for r in rows) / 1024
    verdict = "within" if worst < LIMIT_MB else "OVER"
    print(f"\npeak RSS {worst:.1f} MB: {verdict} the {LIMIT_MB} MB budget")
    return 0 if worst < LIMIT_MB and all(r["download_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
