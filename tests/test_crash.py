"""SIGKILL at the worst moments: the real console script dies at a fail point chosen by the seed,
then a plain `content-sync sync` must converge on the truth with nothing left behind.

Scenarios: a first run (snapshot, then windows), a catch-up over several windows, and a
`sync --resync` of an existing index. The fail points (content_sync/failpoints.py) cover the
download, the bulk load, both sides of the alias swap, the snapshot record, both sides of a
window's state write and both sides of the notification. After every kill:

- the process died by SIGKILL and left its lease in the state; the re-run waits only until that
  lease expires (sync.lease_ttl is 1 s here; test_a_dead_holder_blocks_only_until_its_lease_expires
  shows a run inside the lease is refused at once, and a service takes over once it expires);
- the re-run exits 0; every document equals the feed's truth at the head; the state records the
  head, `ready`, no lease, no pending command, the index behind the alias;
- exactly one physical index of the alias exists (the alias target), the temp dir is empty, and
  the Command Manager stand-in received the command for the head offset;
- the index refreshes at the default interval again (a catch-up killed after its last window
  leaves CATCH_UP_REFRESH, and the re-run has no window to write);
- a reader polling the alias `_count` throughout never saw a partial index: for a first run the
  alias is absent or holds at least the snapshot's documents; otherwise never fewer than before.
  (Changes are appended without deletes, so the true count never falls at a window boundary.)
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import opensearchpy
import pytest
import yaml
from opensearchpy import OpenSearch, helpers

from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer
from tests.helpers import assert_matches_truth, clean_env, exit_code, settings_dict, wait_for
from tests.reliability import TALLY, rng, scale
from tests.test_cli import SCRIPT

pytestmark = pytest.mark.reliability

STATE_ID = "vd_1.0.0_vd_4.8.0"
LEASE_TTL = 1  # seconds: the smallest the settings accept
BULK_DOCS = 20  # many bulk requests per load and per window
BATCH = 50  # many windows
CHUNK = 64 * 1024  # httpx hands over at most this much per read: a floor on download-chunk passes

SNAPSHOT_POINTS = (
    "download-chunk",
    "bulk-done",  # during the snapshot's bulk load
    "before-swap",
    "after-swap",
    "snapshot-recorded",
    "window-written",
    "window-recorded",
    "before-notify",
    "after-notify",
)
CATCH_UP_POINTS = (
    "bulk-done",
    "window-written",
    "window-recorded",
    "before-notify",
    "after-notify",
)


# -- the console script ----------------------------------------------------------------------


def write_settings(
    server: FeedServer, opensearch_url: str, prefix: str, temp: Path, path: Path, **sections: Any
) -> Path:
    sync: dict[str, Any] = {"batch_size": BATCH, "lease_ttl": LEASE_TTL, "temp_dir": str(temp)}
    sync.update(sections.pop("sync", {}))
    opensearch: dict[str, Any] = {"bulk_docs": BULK_DOCS}
    opensearch.update(sections.pop("opensearch", {}))
    data = settings_dict(
        server, opensearch_url, prefix, temp, sync=sync, opensearch=opensearch, **sections
    )
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclass
class Run:
    code: int
    pid: int
    out: str
    err: str


def run_script(
    config: Path, *args: str, log: Path, failpoints: str = "", timeout: float = 120
) -> Run:
    """`content-sync <args> --config <config>` to the end; stderr is kept in `log`."""
    env = clean_env(CONTENT_SYNC_FAILPOINTS=failpoints) if failpoints else clean_env()
    with log.open("w") as err:
        proc = subprocess.Popen(
            [SCRIPT, *args, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return Run(proc.returncode, proc.pid, out, log.read_text())


def state_doc(client: OpenSearch, prefix: str) -> dict[str, Any]:
    return dict(client.get(index=f"{prefix}-state", id=STATE_ID)["_source"])


def physical_indices(client: OpenSearch, alias: str) -> list[str]:
    return sorted(client.indices.get(index=f"{alias}.v*", expand_wildcards="all"))


def alias_target(client: OpenSearch, alias: str) -> str | None:
    try:
        targets = [str(name) for name in client.indices.get_alias(name=alias)]
    except opensearchpy.NotFoundError:
        return None
    assert len(targets) == 1, targets
    return targets[0]


def refresh_interval(client: OpenSearch, alias: str) -> str | None:
    got = client.indices.get_settings(index=alias, name="index.refresh_interval")
    # An index without the setting (the cluster default) is left out of the answer.
    values = [v["settings"]["index"]["refresh_interval"] for v in got.values()]
    return values[0] if values else None


def commanded_offsets(server: FeedServer, alias: str, since: int = 0) -> list[int]:
    """Offsets announced for `alias` by the commands received after the first `since`."""
    return [
        int(command["action"]["args"]["offset"])
        for body in server.commands[since:]
        for command in body["commands"]
        if command["action"]["args"]["index"] == alias
    ]


def assert_recorded_is_written(client: OpenSearch, prefix: str, model: FeedModel) -> None:
    """Nothing is recorded as applied that is not written: every resource live at the recorded
    offset is behind the alias, at that change or a later one (these scenarios delete nothing)."""
    offset = int(state_doc(client, prefix)["local_offset"])
    if offset == 0:
        return
    alias = f"{prefix}-cve"
    client.indices.refresh(index=alias)
    stored = {
        hit["_id"]: hit["_source"]["offset"]
        for hit in helpers.scan(client, index=alias, _source_includes=["offset"], size=1000)
    }
    behind = [name for name, at, _ in model.truth_index(offset) if stored.get(name, -1) < at]
    assert not behind, f"recorded offset {offset} but not written: {behind[:5]}"


def wait_out_lease(client: OpenSearch, prefix: str, pid: int) -> None:
    """The killed process left its lease; wait until it expires (at most lease_ttl)."""
    state = state_doc(client, prefix)
    owner = state.get("lease_owner") or ""
    assert f":{pid}:" in owner, f"the killed process {pid} should still hold the lease: {state}"
    left = float(state["lease_expires_at"]) - time.time()
    assert left <= LEASE_TTL + 0.5, f"lease outlives its ttl by {left - LEASE_TTL:.1f} s"
    time.sleep(max(0.0, left) + 0.05)


# -- a reader of the alias -------------------------------------------------------------------


@dataclass
class Reader:
    """Polls `_count` on the alias it is told to watch and records what a partial index would
    show: fewer documents than the floor, or no alias where one must exist."""

    url: str
    alias: str = ""
    floor: int = 0
    may_be_absent: bool = True
    seen: int = 0
    bad: list[tuple[str, int | None, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    phase: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, alias: str, floor: int, *, may_be_absent: bool) -> None:
        with self._lock:
            self.alias, self.floor, self.may_be_absent, self.seen = alias, floor, may_be_absent, 0

    def _poll(self) -> None:
        client = OpenSearch(self.url, timeout=30)
        try:
            while not self._stop.wait(0.05):
                with self._lock:
                    alias, floor, absent_ok = self.alias, self.floor, self.may_be_absent
                if not alias:
                    continue
                try:
                    count: int | None = int(client.count(index=alias)["count"])
                except opensearchpy.NotFoundError:
                    count = None
                except opensearchpy.ConnectionError:
                    continue  # the node itself is away (test_node_restart): no view at all
                except opensearchpy.TransportError as exc:  # what a reader would get instead
                    with self._lock:
                        self.errors.append(f"{alias} ({self.phase}): {exc}")
                    continue
                with self._lock:
                    if alias != self.alias:
                        continue  # the test moved on while this request ran
                    self.seen += 1
                    if (count is None and not absent_ok) or (count is not None and count < floor):
                        self.bad.append((alias, count, floor))
        finally:
            client.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Reader]:
        thread = threading.Thread(target=self._poll, name="alias-reader", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)


# -- passes: how often each fail point is crossed -------------------------------------------


def window_bulks(model: FeedModel, start: int, head: int) -> int:
    """Bulk requests of the windows (start, head]: one op per resource a window touches."""
    total = 0
    for low in range(start, head, BATCH):
        touched = {c["resource"] for c in model.changes(low, min(low + BATCH, head))}
        total += math.ceil(len(touched) / BULK_DOCS)
    return total


def snapshot_passes(model: FeedModel, start: int, head: int) -> dict[str, int]:
    """The most each point may be armed at, for a cycle that loads the current snapshot and
    then walks the windows (start, head]."""
    windows = math.ceil((head - start) / BATCH)
    return {
        "download-chunk": max(1, model.snapshot_path.stat().st_size // CHUNK),
        "bulk-done": math.ceil(model.snapshot_lines / BULK_DOCS),
        "window-written": windows,
        "window-recorded": windows,
    }


def catch_up_passes(model: FeedModel, start: int, head: int) -> dict[str, int]:
    windows = math.ceil((head - start) / BATCH)
    return {
        "bulk-done": window_bulks(model, start, head),
        "window-written": windows,
        "window-recorded": windows,
    }


def plan(name: str, points: tuple[str, ...], ci: int, full: int) -> list[str]:
    """Every point once, then random ones up to the scale; in a seeded order."""
    r = rng(f"crash-plan:{name}")
    chosen = list(points)
    while len(chosen) < scale(ci=ci, full=full):
        chosen.append(r.choice(points))
    r.shuffle(chosen)
    return chosen


# -- one crash and its recovery --------------------------------------------------------------


@dataclass
class Bench:
    client: OpenSearch
    url: str
    server: FeedServer
    reader: Reader
    tmp: Path
    temp: Path
    runs: int = 0

    def log(self, what: str) -> Path:
        self.runs += 1
        return self.tmp / f"{self.runs:03d}-{what}.log"


def crash_and_recover(
    bench: Bench,
    *,
    prefix: str,
    config: Path,
    args: tuple[str, ...],
    point: str,
    n: int,
    floor: int,
    first_run: bool,
) -> None:
    client, model, server = bench.client, bench.server.model, bench.server
    alias, head = f"{prefix}-cve", model.head_offset
    since = len(server.commands)
    before = alias_target(client, alias)
    bench.reader.watch(alias, floor, may_be_absent=first_run)

    bench.reader.phase = f"killed at {point}={n}"
    killed = run_script(config, *args, log=bench.log(f"{point}-{n}"), failpoints=f"{point}={n}")
    assert killed.code == -9, (
        f"{point}={n} was not reached: exit {killed.code} (a test bug: n beyond the passes)\n"
        + killed.err[-2000:]
    )
    TALLY["crash points tried"] += 1
    assert_recorded_is_written(client, prefix, model)
    if point == "download-chunk":
        assert list(bench.temp.iterdir()), "a killed download leaves its partial archive"
    if point in ("bulk-done", "before-swap") and (first_run or "--resync" in args):
        # The half-built (or built, not swapped in) index is there, the alias is not on it.
        assert len(physical_indices(client, alias)) == (1 if first_run else 2)
        assert alias_target(client, alias) == (None if first_run else before)
    wait_out_lease(client, prefix, killed.pid)

    bench.reader.phase = f"re-run after {point}={n}"
    again = run_script(config, "sync", log=bench.log(f"{point}-{n}-rerun"))
    where = f"after a kill at {point}={n} ({' '.join(args)})"
    assert again.code == 0, f"{where}: re-run exit {again.code}\n{again.err[-3000:]}"
    assert f"in sync at offset {head}" in again.out, again.out

    TALLY["documents compared"] += assert_matches_truth(client, alias, model, head)
    state = state_doc(client, prefix)
    target = alias_target(client, alias)
    assert (state["local_offset"], state["remote_offset"], state["status"]) == (
        head,
        head,
        "ready",
    ), f"{where}: {state}"
    assert state["lease_owner"] is None and state["pending_command"] is None, f"{where}: {state}"
    assert state["index"] == target, f"{where}: state names {state['index']}, alias has {target}"
    assert physical_indices(client, alias) == [target], f"{where}: an index was left behind"
    interval = refresh_interval(client, alias)
    assert interval is None, f"{where}: the index still refreshes every {interval}"
    assert sorted(p.name for p in bench.temp.iterdir()) == [], f"{where}: temp files left"
    assert head in commanded_offsets(server, alias, since), (
        f"{where}: the Command Manager never heard of offset {head}: "
        f"{commanded_offsets(server, alias, since)}"
    )
    assert bench.reader.seen > 0, "the reader never got an answer"


@pytest.fixture
def bench(opensearch_url: str, os_client: OpenSearch, tmp_path: Path) -> Any:
    temp = tmp_path / "tmp"
    temp.mkdir()

    @contextlib.contextmanager
    def make(model: FeedModel) -> Iterator[Bench]:
        with FeedServer(model) as server, Reader(opensearch_url).running() as reader:
            yield Bench(os_client, opensearch_url, server, reader, tmp_path, temp)
        assert reader.bad == [], f"a reader saw a partial index: {reader.bad[:10]}"
        assert reader.errors == [], f"a reader's count failed: {reader.errors[:10]}"

    return make


def small_model(tmp_path: Path, seed: int) -> FeedModel:
    """~200 resources and a snapshot, then 150 changes: 3 windows after the snapshot."""
    model = FeedModel(resources=200, history=100, seed=seed, workdir=tmp_path / "feed")
    model.append_changes(150, delete_ratio=0.0)
    return model


# -- the scenarios ---------------------------------------------------------------------------


def test_crash_during_first_run(
    bench: Any, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    model = small_model(tmp_path, seed=11)
    r = rng("crash:first-run")
    passes = snapshot_passes(model, model.snapshot_offset, model.head_offset)
    alias = f"{prefix}-cve"
    with bench(model) as b:
        config = write_settings(b.server, opensearch_url, prefix, b.temp, tmp_path / "s.yaml")
        for point in plan("first-run", SNAPSHOT_POINTS, 9, 40):
            # Back to nothing: no state, no content; every case is a first run.
            b.reader.watch("", 0, may_be_absent=True)
            b.client.indices.delete(index=f"{alias}.v*", expand_wildcards="all")
            b.client.delete(index=f"{prefix}-state", id=STATE_ID, ignore=[404])
            crash_and_recover(
                b,
                prefix=prefix,
                config=config,
                args=("sync",),
                point=point,
                n=r.randint(1, passes.get(point, 1)),
                floor=model.snapshot_lines,
                first_run=True,
            )


def test_crash_during_catch_up(
    bench: Any, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    model = FeedModel(resources=200, history=100, seed=12, workdir=tmp_path / "feed")
    r = rng("crash:catch-up")
    with bench(model) as b:
        config = write_settings(b.server, opensearch_url, prefix, b.temp, tmp_path / "s.yaml")
        assert run_script(config, "sync", log=b.log("initial")).code == 0
        for point in plan("catch-up", CATCH_UP_POINTS, 5, 25):
            start = model.head_offset
            floor = b.client.count(index=f"{prefix}-cve")["count"]
            head = model.append_changes(250, delete_ratio=0.0)
            passes = catch_up_passes(model, start, head)
            crash_and_recover(
                b,
                prefix=prefix,
                config=config,
                args=("sync",),
                point=point,
                n=r.randint(1, passes.get(point, 1)),
                floor=floor,
                first_run=False,
            )


def test_crash_during_resync(bench: Any, opensearch_url: str, prefix: str, tmp_path: Path) -> None:
    model = FeedModel(resources=200, history=100, seed=13, workdir=tmp_path / "feed")
    r = rng("crash:resync")
    with bench(model) as b:
        config = write_settings(b.server, opensearch_url, prefix, b.temp, tmp_path / "s.yaml")
        assert run_script(config, "sync", log=b.log("initial")).code == 0
        for point in plan("resync", SNAPSHOT_POINTS, 9, 40):
            floor = b.client.count(index=f"{prefix}-cve")["count"]
            # The feed moved on and published a newer snapshot; the operator asks for a resync.
            # Creates updated in a later window: replayed over the newer snapshot (after a kill
            # past the swap), they meet newer versions of their documents.
            model.append_changes(150, create_ratio=0.3, delete_ratio=0.0)
            model.publish_snapshot()
            head = model.append_changes(150, delete_ratio=0.0)
            passes = snapshot_passes(model, model.snapshot_offset, head)
            crash_and_recover(
                b,
                prefix=prefix,
                config=config,
                args=("sync", "--resync"),
                point=point,
                n=r.randint(1, passes.get(point, 1)),
                floor=floor,
                first_run=False,
            )


def test_a_dead_holder_blocks_only_until_its_lease_expires(
    bench: Any, opensearch_url: str, os_client: OpenSearch, prefix: str, tmp_path: Path
) -> None:
    """Inside the dead process's lease a manual sync is refused at once, naming the holder
    (exit 1, no waiting); the service, started at once with an hourly schedule (systemd
    restarting it after a kill), finds the feed held too, and takes it over as soon as the lease
    has expired instead of an hour later."""
    ttl = 4
    model = FeedModel(resources=120, history=50, seed=14, workdir=tmp_path / "feed")
    with bench(model) as b:
        config = write_settings(
            b.server,
            opensearch_url,
            prefix,
            b.temp,
            tmp_path / "s.yaml",
            sync={"lease_ttl": ttl},
            schedule={"interval": "1h", "jitter": 0, "run_on_start": True},
        )
        assert run_script(config, "sync", log=b.log("initial")).code == 0
        head = model.append_changes(300, delete_ratio=0.0)
        b.reader.watch(
            f"{prefix}-cve", b.client.count(index=f"{prefix}-cve")["count"], may_be_absent=False
        )
        killed = run_script(config, "sync", log=b.log("killed"), failpoints="window-recorded=2")
        assert killed.code == -9
        TALLY["crash points tried"] += 1
        owner = state_doc(os_client, prefix)["lease_owner"]
        assert f":{killed.pid}:" in owner

        started = time.monotonic()
        refused = run_script(config, "sync", log=b.log("refused"))
        assert refused.code == 1 and f"being synchronised by {owner}" in refused.err
        assert time.monotonic() - started < ttl, "a held feed must be refused, not waited for"

        log = b.log("service")
        service = subprocess.Popen(
            [SCRIPT, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            env=clean_env(PYTHONFAULTHANDLER="1"),
        )
        try:
            wait_for(
                lambda: state_doc(os_client, prefix)["local_offset"] == head,
                ttl + 20,
                "the service to take the feed over",
            )
        finally:
            service.send_signal(signal.SIGTERM)
            assert exit_code(service, log) == 0
        text = log.read_text()
        assert f"being synchronised by {owner}" in text  # it did find the feed held first
        assert "Traceback" not in text
        state = state_doc(os_client, prefix)
        assert (state["status"], state["lease_owner"], state["pending_command"]) == (
            "ready",
            None,
            None,
        )
        assert head in commanded_offsets(b.server, f"{prefix}-cve")
        TALLY["documents compared"] += assert_matches_truth(os_client, f"{prefix}-cve", model, head)
