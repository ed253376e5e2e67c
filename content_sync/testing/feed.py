"""Run the local CTI-compatible feed: `python -m content_sync.testing.feed --resources N --port P`.

Prints the API base URL and the consumer URL, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m content_sync.testing.feed", description="Serve a local CTI-compatible feed."
    )
    parser.add_argument("--resources", type=int, required=True, help="initial resources")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--history", type=int, default=0, help="random changes after the creates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (keep it on loopback: this is test content)",
    )
    parser.add_argument("--context", default="vd_1.0.0")
    parser.add_argument("--consumer", default="vd_4.8.0")
    parser.add_argument("--workdir", default=None, help="where snapshot zips go (default: temp)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    started = time.monotonic()
    print(
        f"building {args.resources} resources + {args.history} changes ...",
        file=sys.stderr,
        flush=True,
    )
    model = FeedModel(
        resources=args.resources,
        seed=args.seed,
        history=args.history,
        context=args.context,
        consumer=args.consumer,
        workdir=args.workdir,
    )
    print(
        f"built in {time.monotonic() - started:.1f}s: head offset {model.head_offset}, "
        f"snapshot {model.snapshot_path} ({model.snapshot_path.stat().st_size} bytes)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with FeedServer(model, host=args.host, port=args.port) as server:
            print(server.base_url, flush=True)
            print(server.consumer_url, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
