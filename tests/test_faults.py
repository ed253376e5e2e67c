"""Every misbehaviour the local feed can produce, met by the real service (`content-sync run`,
a cycle every 0.3 s) until it converges: first each fault alone, then a long catch-up with
faults, drifting patches and a rebuilt feed mixed at random (seeded).

Faults (content_sync/testing/server.py): 429 with Retry-After in seconds, as a date and 0; a rate
limit as 500; 500, 502, 503; 401; dropped and reset connections; slow answers (and slower than
cti.timeout); a truncated archive, a bad CRC, a malformed line; besides, patches that do not
apply (drift: re-initialise from a newer snapshot) and a feed rebuilt with lower offsets.

Converged means: the state records the feed's head (local = remote, `ready`, no pending command),
the Command Manager stand-in received the command for the head, and every document equals the
feed's truth at the head.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.testing.model import FeedModel
from content_sync.testing.server import FAULTS, FeedServer
from tests.helpers import assert_matches_truth, clean_env, settings_dict, wait_for
from tests.reliability import TALLY, rng, scale
from tests.test_cli import SCRIPT, write_config
from tests.test_crash import STATE_ID, commanded_offsets

pytestmark = pytest.mark.reliability

CTI_TIMEOUT = 2.0
# Where each fault can be met: snapshot-only faults by a download, the others anywhere (but 401
# and the rest are not sent to the snapshot store: the feed's store answers them as the API does).
TARGETS: dict[str, tuple[str, ...]] = {
    name: ("snapshot",)
    if name in ("truncated-zip", "bad-crc", "malformed-line")
    else ("consumer", "changes", "snapshot", "command")
    for name in FAULTS
}

# Each fault alone: (fault, target, slow delay, what makes the service meet it).
ALONE: list[tuple[str, str, float, str]] = [
    ("429", "consumer", 0.0, "changes"),
    ("429-date", "changes", 0.0, "changes"),
    ("429-zero", "changes", 0.0, "changes"),
    ("500-ratelimit", "consumer", 0.0, "changes"),
    ("500", "changes", 0.0, "changes"),
    ("502", "changes", 0.0, "changes"),
    ("503", "consumer", 0.0, "changes"),
    ("401", "changes", 0.0, "changes"),  # not transient: the cycle fails; the next one resumes
    ("drop", "changes", 0.0, "changes"),
    ("reset", "consumer", 0.0, "changes"),
    ("slow", "consumer", 0.5, "changes"),
    ("slow", "changes", CTI_TIMEOUT + 0.5, "changes"),  # beyond cti.timeout: a timeout
    ("drop", "snapshot", 0.0, "drift"),  # cut mid-download: resumed with Range
    ("reset", "snapshot", 0.0, "drift"),
    ("truncated-zip", "snapshot", 0.0, "drift"),
    ("bad-crc", "snapshot", 0.0, "drift"),
    ("malformed-line", "snapshot", 0.0, "drift"),
    ("429", "snapshot", 0.0, "rebuild"),
    ("500", "command", 0.0, "changes"),
    ("401", "command", 0.0, "changes"),  # refused: kept as pending, delivered by a later cycle
    ("reset", "command", 0.0, "changes"),
]


class Service:
    """`content-sync run` against the local feed, and what it takes to tell it converged."""

    def __init__(self, server: FeedServer, client: OpenSearch, prefix: str, config: Path) -> None:
        self.server, self.client, self.prefix, self.config = server, client, prefix, config
        self.alias = f"{prefix}-cve"
        self.log = config.parent / "service.log"
        self.proc: subprocess.Popen[str] | None = None
        self.bad_patches = self.rebuilds = 0

    @property
    def model(self) -> FeedModel:
        return self.server.model

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SCRIPT, "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            text=True,
            env=clean_env(),
        )

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def state(self) -> dict[str, Any]:
        try:
            return dict(self.client.get(index=f"{self.prefix}-state", id=STATE_ID)["_source"])
        except Exception:
            return {}

    def converged(self, head: int) -> bool:
        state = self.state()
        return (
            (state.get("local_offset"), state.get("remote_offset"), state.get("status"))
            == (
                head,
                head,
                "ready",
            )
            and state.get("pending_command") is None
            and head in commanded_offsets(self.server, self.alias)
        )

    def wait_converged(self, what: str, timeout: float = 90) -> int:
        head = self.model.head_offset
        try:
            wait_for(lambda: self.converged(head), timeout, f"convergence after {what}")
        except AssertionError:
            raise AssertionError(
                f"not converged after {what}: state {self.state()}, pending faults "
                f"{self.server.pending_faults()}\n{self.log.read_text()[-4000:]}"
            ) from None
        return head

    # -- what makes a cycle meet a fault ---------------------------------------------------------

    def more_changes(self, n: int = 120) -> None:
        self.model.append_changes(n)

    def drift(self) -> None:
        """A patch that does not apply; the feed's newer snapshot carries the truth past it."""
        self.model.append_bad_patch()
        self.model.append_changes(30)
        self.model.publish_snapshot()
        self.model.append_changes(60)
        self.bad_patches += 1

    def rebuild(self, seed: int) -> None:
        """The feed is rebuilt with lower offsets: the local copy must be re-initialised."""
        self.model.rebuild(resources=150, seed=seed, history=40)
        self.model.append_changes(60)
        self.rebuilds += 1


def fault_hits(server: FeedServer) -> int:
    return sum(1 for r in list(server.requests) if r.fault is not None)


@pytest.fixture
def service(
    opensearch_url: str, os_client: OpenSearch, prefix: str, tmp_path: Path
) -> Iterator[Callable[[FeedModel], Service]]:
    made: list[tuple[Service, FeedServer]] = []

    def make(model: FeedModel) -> Service:
        server = FeedServer(model).start()
        data = settings_dict(
            server,
            opensearch_url,
            prefix,
            tmp_path,
            schedule={"interval": "300ms", "jitter": 0, "run_on_start": True},
            cti={"timeout": CTI_TIMEOUT},
            sync={"batch_size": 50, "lease_ttl": 3, "temp_dir": str(tmp_path / "tmp")},
            opensearch={"bulk_docs": 50},
        )
        (tmp_path / "tmp").mkdir()
        svc = Service(server, os_client, prefix, write_config(tmp_path / "settings.yaml", data))
        made.append((svc, server))
        svc.start()
        return svc

    yield make
    for svc, server in made:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()
        server.stop()


def finish(svc: Service, tmp_path: Path) -> None:
    """Stop the service (SIGTERM: exit 0) and compare everything with the truth."""
    head = svc.model.head_offset
    assert svc.stop() == 0
    text = svc.log.read_text()
    assert "Traceback" not in text, text[-4000:]
    TALLY["documents compared"] += assert_matches_truth(svc.client, svc.alias, svc.model, head)
    state = svc.state()
    assert (state["local_offset"], state["remote_offset"], state["status"]) == (head, head, "ready")
    assert state["lease_owner"] is None and state["pending_command"] is None
    assert list(svc.client.indices.get_alias(name=svc.alias)) == [state["index"]]
    assert sorted(svc.client.indices.get(index=f"{svc.alias}.v*")) == [state["index"]]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_each_fault_alone(service: Callable[[FeedModel], Service], tmp_path: Path) -> None:
    model = FeedModel(resources=200, history=100, seed=31, workdir=tmp_path / "feed")
    svc = service(model)
    svc.wait_converged("the first cycle")
    index_before = svc.state()["index"]
    met = set()
    for step, (fault, target, delay, trigger) in enumerate(ALONE):
        svc.server.inject(fault, on=target, delay=delay)
        if trigger == "drift":
            svc.drift()
        elif trigger == "rebuild":
            svc.rebuild(seed=100 + step)
        else:
            svc.more_changes()
        what = f"{fault} on {target} ({trigger})"
        svc.wait_converged(what)
        assert svc.server.pending_faults() == [], f"{what}: the fault was never met"
        met.add(fault)
    assert met == set(FAULTS)  # every misbehaviour of the local feed, at least once
    assert svc.state()["index"] != index_before  # drift and rebuild re-initialised
    TALLY["faults injected"] += fault_hits(svc.server) + svc.bad_patches + svc.rebuilds
    finish(svc, tmp_path)


def test_faults_mixed_at_random_over_a_long_catch_up(
    service: Callable[[FeedModel], Service], tmp_path: Path
) -> None:
    r = rng("faults:mixed")
    model = FeedModel(resources=200, history=100, seed=32, workdir=tmp_path / "feed")
    svc = service(model)
    svc.wait_converged("the first cycle")
    model.append_changes(5000)  # 100 windows behind, and more keep coming
    kinds = [(fault, target) for fault, targets in TARGETS.items() for target in targets]
    faults = scale(ci=40, full=200)
    events = ["fault"] * faults + ["changes"] * (faults // 3) + ["drift"] * 2 + ["rebuild"]
    r.shuffle(events)
    for event in events:
        time.sleep(r.uniform(0.05, 0.25))
        if event == "rebuild":
            svc.rebuild(seed=r.randint(1000, 9999))
        elif event == "drift":
            svc.drift()
        elif event == "changes":
            svc.more_changes(r.randint(50, 300))
        else:
            fault, target = r.choice(kinds)
            delay = r.choice((0.3, CTI_TIMEOUT + 0.3)) if fault == "slow" else 0.0
            svc.server.inject(fault, on=target, times=r.randint(1, 3), delay=delay)
    # Faults no request met (a snapshot fault while no download was due) are withdrawn; from
    # here on the service must get to the head by itself.
    svc.server.clear_faults()
    svc.wait_converged(f"{faults} random faults", timeout=120)
    hits = fault_hits(svc.server)
    assert hits >= faults // 2, f"only {hits} of {faults} injected faults were met"
    windows = sum(int(m) for m in re.findall(r" windows=(\d+) ", svc.log.read_text()))
    assert windows >= 100, f"a long catch-up was meant: {windows} windows"
    TALLY["faults injected"] += hits + svc.bad_patches + svc.rebuilds
    finish(svc, tmp_path)
