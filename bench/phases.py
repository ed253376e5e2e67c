"""Where a snapshot initialisation's time goes, beside the limit's (bench/snapshot.py).

The product runs as `content-sync sync` with DEBUG logging; its phases come from the time
stamps of its own log lines: start-up (process start to its first line), index ready (process
start to the new index created), then its bulk requests answered (10%, 50%, all, counted from
the index being ready), then the end (the last answer to the exit: settings restored, refresh,
count, swap, state). So the product's seconds = index ready + all + end. The limit's bulk
answers are timed in this process, from its first request. Both load the same documents in the
same round.

Per bulk request (medians): the node's own time (`took` in its answer) and the time until the
answer came back, as the product logs them and as the limit measures them. The node doing the
same requests more slowly beside the product says the two share the machine's cores.

Usage: python -m bench.phases [--size 50000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    SCRIPT,
    client,
    compile_product,
    opensearch_url,
    save,
    settle,
    table,
    write_settings,
)
from bench.snapshot import run_limit
from content_sync.settings import OpenSearchSettings
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer


@dataclass
class Phases:
    name: str
    seconds: float  # end to end
    start: float | None  # process start -> first log line (product only)
    ready: float | None  # process start -> the new index ready (product only)
    first: float  # index ready (product) or first request (limit) -> first bulk answer
    tenth: float  # ... -> 10% of the bulk answers
    half: float
    last: float  # ... -> the last bulk answer
    end: float  # last bulk answer -> the end of the run
    took_ms: float  # median over the bulk requests: the node's own time
    answer_ms: float  # median: request sent -> answer back


def _at(answers: list[float], share: float) -> float:
    return answers[max(0, round(len(answers) * share) - 1)]


# The product's DEBUG line for each bulk request (content_sync.store).
_BULK_LINE = re.compile(r"answered in (\d+) ms; node took (\d+) ms")


def _stamp(line: str) -> float | None:
    try:
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def product_phases(config: Path, index_prefix: str) -> Phases:
    started = time.time()
    run = subprocess.run(
        [SCRIPT, "sync", "--config", str(config)], capture_output=True, text=True, check=True
    )
    ended = time.time()
    lines = [(t, line) for line in run.stderr.splitlines() if (t := _stamp(line)) is not None]
    answers = sorted(t for t, line in lines if "urllib3" in line and "POST /_bulk" in line)
    ready = next(
        t for t, line in lines if f'"PUT /{index_prefix}.v' in line and "_settings" not in line
    )
    rel = [t - ready for t in answers]
    timings = [(int(m[1]), int(m[2])) for _, line in lines if (m := _BULK_LINE.search(line))]
    if len(timings) != len(answers):
        raise SystemExit(f"{len(answers)} bulk answers but {len(timings)} bulk lines logged")
    return Phases(
        "product",
        ended - started,
        lines[0][0] - started,
        ready - started,
        rel[0],
        _at(rel, 0.1),
        _at(rel, 0.5),
        rel[-1],
        ended - answers[-1],
        statistics.median(took for _, took in timings),
        statistics.median(answer for answer, _ in timings),
    )


def limit_phases(url: str, model: FeedModel, work: Path, index: str) -> Phases:
    os_client = client(url)
    calls: list[float] = []
    answers: list[float] = []
    took: list[int] = []
    answer_ms: list[float] = []
    bulk = os_client.bulk

    def timed(*args: Any, **kwargs: Any) -> Any:
        kwargs["params"] = {**kwargs.get("params", {}), "filter_path": "took,errors"}
        sent = time.time()
        calls.append(sent)
        result = bulk(*args, **kwargs)
        answers.append(time.time())
        took.append(result["took"])
        answer_ms.append((answers[-1] - sent) * 1000)
        return result

    os_client.bulk = timed
    settings = OpenSearchSettings(hosts=[url], bulk_concurrency=2)
    run = run_limit(os_client, model.snapshot_path, index, work, settings)
    os_client.indices.delete(index=index)
    first = min(calls)
    rel = sorted(t - first for t in answers)
    return Phases(
        "limit",
        run.seconds,
        None,
        None,
        rel[0],
        _at(rel, 0.1),
        _at(rel, 0.5),
        rel[-1],
        run.seconds - rel[-1],
        statistics.median(took),
        statistics.median(answer_ms),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    url = opensearch_url()
    os_client = client(url)
    prefix = "bench-phases"
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    compile_product()
    runs: list[Phases] = []
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        work = Path(tmp)
        model = FeedModel(resources=args.size, seed=args.size, workdir=work / "feed")
        with FeedServer(model) as server:
            config = write_settings(work / "settings.yaml", server, url, prefix)
            config.write_text(config.read_text().replace("WARNING", "DEBUG"))
            for rnd in range(args.repeat):
                order = ("limit", "product") if rnd % 2 == 0 else ("product", "limit")
                for which in order:
                    os_client.indices.delete(
                        index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all"
                    )
                    settle(url)
                    if which == "product":
                        runs.append(product_phases(config, f"{prefix}-cve"))
                    else:
                        runs.append(limit_phases(url, model, work, f"{prefix}-limit"))
        model.close()
    os_client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    head = ["run", "seconds", "start-up", "index ready", "1st answer", "10%", "50%", "all"]
    rows = [[*head, "end", "node ms/bulk", "answer ms/bulk"]]
    for p in runs:
        rows.append(
            [p.name, f"{p.seconds:.2f}"]
            + ["-" if x is None else f"{x:.2f}" for x in (p.start, p.ready)]
            + [f"{x:.2f}" for x in (p.first, p.tenth, p.half, p.last, p.end)]
            + [f"{p.took_ms:.0f}", f"{p.answer_ms:.0f}"]
        )
    print(f"\nSnapshot initialisation of {args.size} resources, phase by phase (seconds)")
    print("product: from the new index being ready; limit: from its first request\n")
    print(table(rows))
    path = save("phases", {"resources": args.size, "runs": [vars(p) for p in runs]})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
