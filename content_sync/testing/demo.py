"""`make demo`: the product end to end on this machine, in a few minutes, leaving nothing running.

OpenSearch is the node `make demo` started (OPENSEARCH_URL); the feed is the local CTI-compatible
server with a few tens of thousands of resources. Runs the real console script: `sync` (snapshot,
then changes), more changes appear at the feed, `sync` again (changes only), then `status`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer


def _run(script: str, *args: str, env: dict[str, str]) -> None:
    print(f"\n$ content-sync {' '.join(args)}", flush=True)
    started = time.monotonic()
    done = subprocess.run([script, *args], env=env, check=False)
    print(f"  (exit {done.returncode}, {time.monotonic() - started:.1f} s)", flush=True)
    if done.returncode != 0:
        sys.exit(f"demo: `content-sync {' '.join(args)}` failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=3_000)
    args = parser.parse_args()
    url = os.environ.get("OPENSEARCH_URL")
    if not url:
        sys.exit("demo: OPENSEARCH_URL is not set; run it with `make demo`")
    script = str(Path(sys.executable).parent / "content-sync")
    with tempfile.TemporaryDirectory(prefix="content-sync-demo-") as tmp:
        work = Path(tmp)
        print(f"Building a local feed of {args.resources} resources ...", flush=True)
        model = FeedModel(
            resources=args.resources, history=args.history, seed=7, workdir=work / "feed"
        )
        with FeedServer(model) as server:
            config = work / "settings.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "cti": {"base_url": server.base_url},
                        "feeds": [
                            {
                                "name": "vulnerabilities",
                                "context": model.context,
                                "consumer": model.consumer,
                                "index": "demo-wazuh-cve",
                            }
                        ],
                        "opensearch": {
                            "hosts": [url],
                            "username": None,
                            "verify_certs": False,
                            "state_index": "demo-content-sync-state",
                        },
                        "command_manager": {"url": server.command_url, "verify_certs": False},
                        "sync": {"temp_dir": str(work)},
                    }
                )
            )
            env = {**os.environ, "CONTENT_SYNC_CONFIG": str(config)}
            print(f"Feed at {server.consumer_url}, OpenSearch at {url}")
            print(f"Snapshot at offset {model.snapshot_offset}; appending 2,500 changes after it.")
            model.append_changes(2_500)
            _run(script, "check", env=env)
            _run(script, "sync", env=env)
            print("\nThe feed moves on: 1,200 more changes.")
            model.append_changes(1_200)
            _run(script, "sync", env=env)
            _run(script, "status", env=env)
            print(f"\nCommands received by the stand-in Command Manager: {len(server.commands)}")
            for body in server.commands:
                print(f"  {body['commands'][0]['action']['args']}")
        print(
            f"\nWhere to look: {url}/demo-wazuh-cve/_count , "
            f"{url}/demo-content-sync-state/_search?pretty\n"
            "(the demo's OpenSearch node is stopped when `make demo` ends; run "
            "`make opensearch-up` and this module with OPENSEARCH_URL set to keep one)"
        )


if __name__ == "__main__":
    main()
