"""Shared pieces of the benchmarks: the node, the product as a subprocess, peak memory, tables."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from opensearchpy import OpenSearch

from content_sync.testing.procmem import run_measured
from content_sync.testing.server import FeedServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCRIPT = str(Path(sys.executable).parent / "content-sync")


def opensearch_url() -> str:
    url = os.environ.get("OPENSEARCH_URL")
    if not url:
        sys.exit("OPENSEARCH_URL is not set: run the benchmarks with `make bench`")
    return url


def client(url: str) -> OpenSearch:
    return OpenSearch(url, timeout=300, pool_maxsize=8)


@dataclass
class Run:
    name: str
    seconds: float
    docs: int
    bytes: int
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None  # of the client process (product or baseline)
    node_cpu_seconds: float | None = None  # of the OpenSearch node during the run
    busy_cores: float | None = None  # the whole machine's CPU seconds per second of the run

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(docs_per_s=round(self.docs_per_s, 1), mb_per_s=round(self.mb_per_s, 2))
        return out


def write_settings(path: Path, server: FeedServer, url: str, prefix: str, **sync: Any) -> Path:
    model = server.model
    data = {
        "cti": {"base_url": server.base_url, "timeout": 120},
        "feeds": [
            {
                "name": "bench",
                "context": model.context,
                "consumer": model.consumer,
                "index": f"{prefix}-cve",
            }
        ],
        "opensearch": {
            "hosts": [url],
            "username": None,
            "verify_certs": False,
            "state_index": f"{prefix}-state",
            "timeout": 300,
        },
        "command_manager": {"enabled": False},
        "sync": {"temp_dir": str(path.parent), **sync},
        "http": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def node_cpu_seconds(url: str) -> float:
    """CPU time the node's process has used so far (user + system), from the OS."""
    stats = client(url).nodes.stats(metric="process")
    node = next(iter(stats["nodes"].values()))
    return float(node["process"]["cpu"]["total_in_millis"]) / 1000


def node_pid(url: str) -> int:
    info = client(url).nodes.info(metric="process")
    return int(next(iter(info["nodes"].values()))["process"]["id"])


def _pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (threads it starts later inherit from their creator)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


PLACEMENTS = ("shared", "split")


@contextlib.contextmanager
def placement(url: str, name: str) -> Iterator[str]:
    """Where the node and the client run while the block runs, as a description.

    shared: anywhere, as an install with the indexer on the same host has it; the client's CPU
        is then taken from the node's cores.
    split:  the node on the first half of the cores, this process (the limit's client, the local
        feed) and the processes it starts (the product) on the other half, as with the indexer
        on its own host: the node's throughput is what its cores give, and whether the product
        keeps it fed is measured without its CPU being the node's loss.
    Threads this process already has are not moved: enter it before starting the feed."""
    cpus = set(range(os.cpu_count() or 1))
    if name == "shared":
        yield f"node and client share {len(cpus)} cores"
        return
    if len(cpus) < 2:
        sys.exit("the split placement needs at least 2 cores")
    ordered = sorted(cpus)
    node_cpus, client_cpus = set(ordered[: len(ordered) // 2]), set(ordered[len(ordered) // 2 :])
    pid = node_pid(url)
    try:
        _pin_process(pid, node_cpus)
    except PermissionError:
        sys.exit(
            "the split placement pins the node's threads, which needs root or CAP_SYS_NICE "
            "(the node runs as another user): run as root or with --placements shared"
        )
    os.sched_setaffinity(0, client_cpus)
    try:
        yield f"node on cores {sorted(node_cpus)}, client on {sorted(client_cpus)}"
    finally:
        _pin_process(pid, cpus)
        os.sched_setaffinity(0, cpus)


def machine_cpu_seconds() -> float:
    """CPU time every core of the machine has spent busy since boot (/proc/stat): over a run,
    its increase divided by the run's wall time says how many of the cores the run kept busy."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait; guest time is already counted in user
    busy = sum(fields[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


class Meter:
    """Started at a run's start; `stop()` gives the run's wall seconds, this process's CPU
    seconds, the node's CPU seconds and the machine's busy cores."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.node0, self.cpu0 = node_cpu_seconds(url), time.process_time()
        self.machine0, self.started = machine_cpu_seconds(), time.perf_counter()

    def stop(self) -> tuple[float, float, float, float]:
        seconds = time.perf_counter() - self.started
        busy = (machine_cpu_seconds() - self.machine0) / seconds
        cpu, node = time.process_time() - self.cpu0, node_cpu_seconds(self.url) - self.node0
        return seconds, cpu, node, busy


def settle(url: str, *, idle: float = 0.1, limit: float = 90.0) -> float:
    """Wait until the node is quiet: less than `idle` of a core busy over a second (merges and
    refreshes a run leaves behind would otherwise slow whichever run comes next). Returns the
    seconds waited; gives up after `limit`."""
    started = time.perf_counter()
    before = node_cpu_seconds(url)
    while time.perf_counter() - started < limit:
        time.sleep(1.0)
        now = node_cpu_seconds(url)
        if now - before < idle:
            break
        before = now
    return time.perf_counter() - started


def compile_product() -> None:
    """Write the package's bytecode, as an installed product has it (pip and the Docker image
    compile at install time). The editable install of a checkout has none, and where
    PYTHONDONTWRITEBYTECODE is set (this machine) every start compiles all of the package's
    modules again: ~50 ms of each timed run that no deployment pays."""
    compileall.compile_dir(ROOT / "content_sync", quiet=1)


def run_product(config: Path, *args: str) -> tuple[float, float, float]:
    """Run the real console script; return (wall seconds, peak RSS MB, CPU seconds) of it. The
    peak is the process's own (procmem): wait4's ru_maxrss would include this benchmark's size
    at the fork, which grows with the feed it builds."""
    compile_product()
    run = run_measured([SCRIPT, *args, "--config", str(config)])
    if run.returncode != 0:
        sys.exit(f"content-sync {' '.join(args)} failed with exit {run.returncode}")
    return run.seconds, run.peak_rss_mb, run.cpu_seconds


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(lines)


def product_sync_on_quiet_node(config: Path, url: str) -> tuple[float, float, float, float, float]:
    """`content-sync sync` started once the node is quiet: run_product's (wall seconds, peak RSS
    MB, CPU seconds), the node's CPU seconds meanwhile, and the machine's busy cores."""
    settle(url)
    meter = Meter(url)
    seconds, rss, cpu = run_product(config, "sync")
    _, _, node, busy = meter.stop()  # the product's own seconds and CPU, not this process's
    return seconds, rss, cpu, node, busy
