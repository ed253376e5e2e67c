"""`make bench`: every benchmark, in order, against the node `make bench` started."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["-m", "bench.snapshot"],
    ["-m", "bench.phases"],
    ["-m", "bench.overlap"],
    ["-m", "bench.patching"],
    ["-m", "bench.changes"],
    ["bench/feed_memory.py"],
]


def main() -> None:
    failed = []
    for args in BENCHES:
        print(f"\n=== python {' '.join(args)} ===", flush=True)
        if subprocess.run([sys.executable, *args], check=False).returncode != 0:
            failed.append(" ".join(args))
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
