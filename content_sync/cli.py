"""Command line: run / sync / status / import / check (see the README and interface.md).

Exit status: 0 success; 1 the work failed or something is unreachable; 2 bad usage or settings.
Errors are one sentence on stderr naming the setting, URL or file at fault, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from content_sync import __version__, tempfiles
from content_sync.errors import ContentSyncError, SettingsError
from content_sync.logs import setup_logging
from content_sync.memory import fix_malloc_thresholds
from content_sync.progress import progress_events
from content_sync.runtime import Runtime
from content_sync.settings import Settings, load_settings, public_url
from content_sync.signals import stop_on_signals

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on bad usage, as interface.md wants
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    config_help = "settings file (default: $CONTENT_SYNC_CONFIG, else ./settings.yaml)"
    # --config is accepted before or after the command; SUPPRESS keeps a subcommand's unset
    # option from overwriting the value given before it.
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    parser = _Parser(
        prog="content-sync",
        description="Keeps OpenSearch in step with the Wazuh CTI content feed.",
    )
    parser.add_argument("--config", metavar="PATH", default=None, help=config_help)
    parser.add_argument("--version", action="version", version=f"content-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", parents=[common], help="run the service until SIGTERM/SIGINT")
    run.add_argument("--resync", action="store_true", help="re-initialise every feed first")

    sync = sub.add_parser("sync", parents=[common], help="one synchronisation cycle now")
    sync.add_argument("--feed", metavar="NAME", help="only this feed (default: all)")
    sync.add_argument("--resync", action="store_true", help="re-initialise from the snapshot")
    sync.add_argument(
        "--dry-run", action="store_true", help="say what the cycle would do; write nothing"
    )

    status = sub.add_parser("status", parents=[common], help="offsets, lag and state per feed")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    imp = sub.add_parser("import", parents=[common], help="initialise a feed from a zip on disk")
    imp.add_argument("--feed", metavar="NAME", required=True)
    imp.add_argument("path", metavar="PATH.zip", type=Path)
    imp.add_argument("--offset", type=int, help="offset the archive holds (default: its name)")

    sub.add_parser("check", parents=[common], help="validate settings and reach every endpoint")
    return parser


def entry() -> int:
    """The `content-sync` command (console script and `python -m content_sync`)."""
    # What the imports built lives as long as the process. Frozen, the collector never walks it
    # again: not in a service's later full collections, nor in the ones the interpreter runs at
    # exit, which took 60-140 ms of every `content-sync sync` (11-17 ms frozen). Not done in
    # main(): a test calling it would freeze its own process's garbage.
    gc.freeze()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fix_malloc_thresholds()
    try:
        settings = load_settings(args.config)
        if getattr(args, "feed", None):
            settings.feed(args.feed)
        setup_logging(settings.logging)
        command: Callable[[argparse.Namespace, Settings], int] = _COMMANDS[args.command]
        return command(args, settings)
    except SettingsError as exc:
        print(f"content-sync: bad settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ContentSyncError as exc:
        print(f"content-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from content_sync.service import Service

    try:
        service = Service.build(settings, progress_events(False))
    except OSError as exc:  # the HTTP port is taken or not ours to bind
        raise SettingsError(
            f"http: cannot listen on {settings.http.host}:{settings.http.port}: {exc.strerror}"
        ) from None
    service.run_forever(resync=args.resync)
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    feeds = [settings.feed(args.feed)] if args.feed else settings.feeds
    code = EXIT_OK
    events = progress_events()
    # SIGTERM/SIGINT stop a manual cycle as they stop the service: the current window finishes
    # (or is not recorded), a snapshot download or load is abandoned and its files removed. A
    # second signal interrupts at once.
    with (
        Runtime(settings, events=events) as runtime,
        stop_on_signals(runtime.stop, second_interrupts=True),
    ):
        runtime.check_store()  # fail fast, with the reason, when OpenSearch is not there
        for feed in feeds:
            name = feed.name
            if runtime.stop.is_set():
                print(f"content-sync: feed {name}: not started (stopping)", file=sys.stderr)
                code = EXIT_FAILED
                continue
            if not feed.enabled or feed.offline:
                why = "disabled" if not feed.enabled else "offline: use content-sync import"
                print(f"feed {name}: skipped ({why})", file=sys.stderr)
                if args.feed:
                    code = EXIT_FAILED
                continue
            if args.dry_run:
                print(runtime.feed_sync(name).plan(resync=args.resync).describe())
                continue
            result = runtime.feed_sync(name).run_cycle(resync=args.resync)
            if result.outcome == "stopped":
                print(
                    f"content-sync: feed {name}: stopped at offset {result.after}", file=sys.stderr
                )
                code = EXIT_FAILED
            elif result.outcome != "ok" or result.after != result.remote:
                print(
                    f"content-sync: feed {name}: {result.outcome}: {result.error}", file=sys.stderr
                )
                code = EXIT_FAILED
            else:
                print(f"feed {name}: in sync at offset {result.after}")
    events.close()  # finish the bars before the exit line
    return code


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    if not args.path.is_file():
        raise SettingsError(f"{args.path}: no such file")
    events = progress_events()
    with Runtime(settings, events=events) as runtime:
        result = runtime.feed_sync(args.feed).import_archive(args.path, offset=args.offset)
    events.close()  # finish the bars before the result line, as sync does
    if result.outcome != "ok":
        print(f"content-sync: import refused, nothing changed: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"feed {args.feed}: {result.documents} documents imported at offset {result.after}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with Runtime(settings, quick=True) as runtime:
        rows = []
        for feed in settings.feeds:
            state = runtime.store.peek_state(feed.state_id)
            local = state.local_offset if state else 0
            remote = state.remote_offset if state else 0
            status: str = state.status if state else "new"
            if not feed.enabled:
                status = "disabled"
            rows.append(
                {
                    "name": feed.name,
                    "context": feed.context,
                    "consumer": feed.consumer,
                    "local_offset": local,
                    "remote_offset": remote,
                    "lag": max(remote - local, 0),
                    "status": status,
                    "index": runtime.store.alias_target(feed.index),
                    "last_success_at": state.last_success_at if state else None,
                    "next_run_at": state.next_run_at if state and feed.enabled else None,
                    "offline": feed.offline,
                }
            )
    if args.json:
        print(json.dumps({"feeds": rows}))
    else:
        for row in rows:
            print(
                f"{row['name']}: {row['status']}, local {row['local_offset']}, remote "
                f"{row['remote_offset']}, lag {row['lag']}, index {row['index']}, "
                f"last success {row['last_success_at']}, next run {row['next_run_at']}"
                + (" (offline)" if row["offline"] else "")
            )
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    ok = True

    def report(what: str, error: str | None) -> None:
        nonlocal ok
        ok = ok and error is None
        print(
            f"{'ok  ' if error is None else 'FAIL'} {what}{'' if error is None else ': ' + error}"
        )

    print(f"ok   settings ({len(settings.feeds)} feed(s))")
    with Runtime(settings, quick=True) as runtime:
        for feed in settings.feeds:
            if feed.offline:
                print(f"skip feed {feed.name} (offline)")
                continue
            url = runtime.client.consumer_url(feed.context, feed.consumer)
            try:
                info = runtime.client.consumer(feed.context, feed.consumer)
                report(
                    f"feed {feed.name} at {public_url(url)} (last_offset {info.last_offset})", None
                )
            except ContentSyncError as exc:
                report(f"feed {feed.name} at {public_url(url)}", str(exc))
        hosts = ", ".join(public_url(h) for h in settings.opensearch.hosts)
        try:
            version = runtime.store.client.info()["version"]["number"]
            report(f"OpenSearch {version} at {hosts}", None)
        except Exception as exc:
            report(f"OpenSearch at {hosts}", type(exc).__name__ + _short(exc))
        cm = settings.command_manager
        if not cm.enabled:
            print("skip Command Manager (command_manager.enabled is false)")
        else:
            report(f"Command Manager at {public_url(cm.url)}", runtime.notifier.probe())
    temp = f"temp dir {tempfiles.directory(settings.sync.temp_dir)} (sync.temp_dir)"
    try:
        locks = tempfiles.probe(settings.sync.temp_dir)
        report(temp + ("" if locks else ": no file locks, leftovers stay (see README)"), None)
    except OSError as exc:
        report(temp, str(exc))
    return EXIT_OK if ok else EXIT_FAILED


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f": {text[:200]}" if text else ""


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "run": _cmd_run,
    "sync": _cmd_sync,
    "status": _cmd_status,
    "import": _cmd_import,
    "check": _cmd_check,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
