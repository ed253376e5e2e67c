"""The OpenSearch node restarts in the middle of a cycle: once while a snapshot is being loaded,
once during a catch-up over many windows. The cycle either fails cleanly (exit 1, the error names
OpenSearch, nothing recorded that was not written) or rides through the restart; either way the
next plain `sync` ends with every document equal to the truth. (And a state write that the node
applied while going down, without answering, is not mistaken for another writer's.)

This restarts the suite's own node (`scripts/opensearch.sh restart`: same data, config and
ports), so it runs only when OPENSEARCH_URL is the node that script started (`make test`,
`scripts/with-opensearch.sh`), never against a cluster the suite does not own; and it waits for
the node to be healthy again before it ends, whatever happened.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import opensearchpy
import pytest
from opensearchpy import OpenSearch

from content_sync.errors import LeaseLostError
from content_sync.runtime import Runtime
from content_sync.store import FeedState
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer
from tests.helpers import assert_matches_truth, clean_env, make_settings, wait_for
from tests.reliability import TALLY
from tests.test_cli import SCRIPT
from tests.test_crash import (
    Reader,
    alias_target,
    commanded_offsets,
    physical_indices,
    run_script,
    state_doc,
    write_settings,
)

pytestmark = pytest.mark.reliability

OPENSEARCH_SH = Path(__file__).resolve().parents[1] / "scripts" / "opensearch.sh"
LEASE_TTL = 2
# Slow enough to be caught in the act: ~300 bulk requests for the load, 20 windows to catch up.
RESOURCES, BULK_DOCS, CATCH_UP = 1500, 5, 1000


def not_our_node(url: str) -> str | None:
    """None when `url` is the node scripts/opensearch.sh started (and may restart); else why the
    test must not touch it."""
    got = subprocess.run(
        [str(OPENSEARCH_SH), "url"], capture_output=True, text=True, timeout=30, check=False
    )
    ours = got.stdout.strip().rstrip("/")
    if got.returncode != 0 or not ours:
        return (
            f"OPENSEARCH_URL ({url}) is an external cluster: scripts/opensearch.sh has no node "
            "in its run dir (OPENSEARCH_RUN_DIR), so there is nothing this suite may restart"
        )
    if ours != url.rstrip("/"):
        return (
            f"OPENSEARCH_URL ({url}) is not the node scripts/opensearch.sh started ({ours}); "
            "not restarting a cluster this suite does not own"
        )
    return None


def start_restart() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(OPENSEARCH_SH), "restart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_restart(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"scripts/opensearch.sh restart failed:\n{out}\n{err}"


@pytest.fixture
def restartable(opensearch_url: str, os_client: OpenSearch) -> Iterator[OpenSearch]:
    why = not_our_node(opensearch_url)
    if why is not None:
        pytest.skip(why)
    try:
        yield os_client
    finally:
        # Whatever happened, the shared node is back and healthy before the next test.
        client = OpenSearch(opensearch_url, timeout=30)
        try:
            for _ in range(2):
                try:
                    client.cluster.health(
                        wait_for_status="yellow", timeout="120s", request_timeout=130
                    )
                    break
                except Exception:  # down: an earlier restart did not bring it back; once more
                    finish_restart(start_restart())
        finally:
            client.close()


def sync_process(config: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SCRIPT, "sync", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
        env=clean_env(),
    )


def indexed_so_far(client: OpenSearch, alias: str) -> int:
    """Documents written into the alias's indices (refreshed or not)."""
    try:
        stats = client.indices.stats(index=f"{alias}.v*", metric="indexing")
    except Exception:  # not created yet
        return 0
    return int(stats["_all"]["primaries"].get("indexing", {}).get("index_total", 0))


def assert_converged(
    client: OpenSearch, server: FeedServer, prefix: str, temp: Path, head: int
) -> None:
    alias = f"{prefix}-cve"
    TALLY["documents compared"] += assert_matches_truth(client, alias, server.model, head)
    state = state_doc(client, prefix)
    assert (state["local_offset"], state["status"], state["lease_owner"]) == (head, "ready", None)
    assert physical_indices(client, alias) == [alias_target(client, alias)] == [state["index"]]
    assert list(temp.iterdir()) == []
    assert head in commanded_offsets(server, alias)


def test_node_restart_mid_load_and_mid_catch_up(
    restartable: OpenSearch, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    client = restartable
    temp = tmp_path / "tmp"
    temp.mkdir()
    alias = f"{prefix}-cve"
    model = FeedModel(resources=RESOURCES, avg_size=3000, seed=21, workdir=tmp_path / "feed")
    head = model.append_changes(200, delete_ratio=0.0)
    with FeedServer(model) as server, Reader(opensearch_url).running() as reader:
        tight = write_settings(
            server,
            opensearch_url,
            prefix,
            temp,
            tmp_path / "tight.yaml",
            sync={"lease_ttl": LEASE_TTL},
            opensearch={"bulk_docs": BULK_DOCS, "bulk_concurrency": 1},
        )
        fast = write_settings(
            server,
            opensearch_url,
            prefix,
            temp,
            tmp_path / "fast.yaml",
            sync={"lease_ttl": LEASE_TTL},
            opensearch={"bulk_docs": 200},
        )
        # Retries outlast a restart: the cycle can ride through it.
        patient = write_settings(
            server,
            opensearch_url,
            prefix,
            temp,
            tmp_path / "patient.yaml",
            sync={"lease_ttl": LEASE_TTL},
            opensearch={"bulk_docs": BULK_DOCS, "bulk_concurrency": 1},
            retry={"attempts": 100, "initial": 0.2, "max_wait": 1, "budget": 180},
        )

        # 1. Mid-load, with the tests' short retry budget: the cycle fails, cleanly.
        reader.watch(alias, model.snapshot_lines, may_be_absent=True)
        loading = sync_process(tight, tmp_path / "load.log")
        try:
            wait_for(lambda: indexed_so_far(client, alias) >= 50, 60, "the snapshot load")
            restart = start_restart()
            code = loading.wait(timeout=120)
        finally:
            if loading.poll() is None:
                loading.kill()
                loading.wait()
        finish_restart(restart)
        TALLY["faults injected"] += 1
        client.cluster.health(wait_for_status="yellow", timeout="120s", request_timeout=130)
        err = (tmp_path / "load.log").read_text()
        assert code == 1, f"exit {code}; a restart mid-load must fail the cycle\n{err[-3000:]}"
        failure = [line for line in err.splitlines() if "content-sync: feed" in line]
        assert failure and "OpenSearch" in failure[-1], err[-3000:]
        assert "Traceback" not in err
        assert alias_target(client, alias) is None, "the restart came after the load: too late"
        state = state_doc(client, prefix)
        assert state["local_offset"] == 0  # nothing recorded that was not written
        # The end-of-cycle write could not reach the node: `running` under a lease that expires;
        # or it could, and says why the cycle failed.
        assert state["status"] == "running" or (
            state["status"] == "failed" and "OpenSearch" in (state["last_error"] or "")
        ), state
        time.sleep(max(0.0, float(state["lease_expires_at"] or 0) - time.time()) + 0.1)
        after = run_script(fast, "sync", log=tmp_path / "load-rerun.log")
        assert after.code == 0, after.err[-3000:]
        assert_converged(client, server, prefix, temp, head)

        # 2. Mid-catch-up, with retries that outlast the restart: the cycle rides through it.
        start = head
        reader.watch(alias, client.count(index=alias)["count"], may_be_absent=False)
        head = model.append_changes(CATCH_UP, delete_ratio=0.0)
        server.inject("slow", times=10_000, on="changes", delay=0.2)
        catching_up = sync_process(patient, tmp_path / "catch-up.log")
        try:
            wait_for(
                lambda: state_doc(client, prefix)["local_offset"] > start, 60, "a window recorded"
            )
            restart = start_restart()
            code = catching_up.wait(timeout=240)
        finally:
            if catching_up.poll() is None:
                catching_up.kill()
                catching_up.wait()
        finish_restart(restart)
        TALLY["faults injected"] += 1
        server.clear_faults()
        client.cluster.health(wait_for_status="yellow", timeout="120s", request_timeout=130)
        err = (tmp_path / "catch-up.log").read_text()
        assert "Traceback" not in err
        # The restart did hit the cycle: its requests to the node failed and were retried.
        assert any("WARNING" in line and "OpenSearch" in line for line in err.splitlines()), err
        if code == 0:
            assert state_doc(client, prefix)["local_offset"] == head
        else:  # failed cleanly: the error names the node; the next cycle resumes
            state = state_doc(client, prefix)
            assert code == 1 and state["status"] == "failed", (code, state, err[-3000:])
            assert "OpenSearch" in (state["last_error"] or ""), state
            assert start <= state["local_offset"] < head
            TALLY["documents compared"] += assert_matches_truth(
                client, alias, model, state["local_offset"]
            )
            time.sleep(max(0.0, float(state["lease_expires_at"] or 0) - time.time()) + 0.1)
            assert run_script(patient, "sync", log=tmp_path / "catch-up-rerun.log").code == 0
        assert_converged(client, server, prefix, temp, head)
    assert reader.bad == [], f"a reader saw a partial index: {reader.bad[:10]}"
    # While the node starts, before its shards are back, a count is refused (503): no view at
    # all, not a partial one.
    assert all("TransportError(503" in e for e in reader.errors), reader.errors[:10]


def test_a_state_write_whose_answer_was_lost_is_not_a_takeover(
    feed_server: FeedServer, opensearch_url: str, os_client: OpenSearch, prefix: str, tmp_path: Path
) -> None:
    """A node going down may apply a state write and drop the connection before answering (seen
    in the restart above: 'Remote end closed connection without response'). The retry then meets
    its own write as a conflict; that is not another writer taking the feed over."""
    state_id = "vd_1.0.0_vd_4.8.0"
    with Runtime(make_settings(feed_server, opensearch_url, prefix, tmp_path)) as rt:
        store = rt.store
        assert store.load_state(state_id) is None
        state = FeedState("vd_1.0.0", "vd_4.8.0", status="running", lease_owner="me:1:abc")
        store.save_state(state_id, state)
        real = store.client.index
        calls: list[int] = []

        def lands_then_drops(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            got = real(*args, **kwargs)
            if len(calls) == 1:
                raise opensearchpy.ConnectionError("N/A", "closed without response", None)
            return got

        store.client.index = lands_then_drops
        state.local_offset = 500
        store.save_state(state_id, state)  # the retry conflicts with the first try, which landed
        assert len(calls) == 2
        stored = os_client.get(index=f"{prefix}-state", id=state_id)["_source"]
        assert (stored["local_offset"], stored["lease_owner"]) == (500, "me:1:abc")
        state.local_offset = 550
        store.save_state(state_id, state)  # and the next write goes on from there
        assert os_client.get(index=f"{prefix}-state", id=state_id)["_source"]["local_offset"] == 550

        # A real takeover still is one.
        os_client.index(index=f"{prefix}-state", id=state_id, body={**stored, "lease_owner": "x"})
        state.local_offset = 600
        with pytest.raises(LeaseLostError):
            store.save_state(state_id, state)
