"""Credentials from the environment or from files, sent over verified TLS, and never printed.

The real console script runs at DEBUG, in text and in JSON, with distinctive passwords for
OpenSearch and the Command Manager (and the trigger's token): `sync`, `status`, `status --json`,
`check` (passing and failing), failed cycles whose error is printed, and `run`. Not one byte of
stdout or stderr may carry a secret, in clear or inside a basic-auth header; nor may the state
or content in OpenSearch. The OpenSearch relay and the Command Manager stand-in demand the
credentials, so every successful step also proves they were sent.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from content_sync.cli import main
from content_sync.runtime import Runtime
from content_sync.settings import Settings
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer
from tests.helpers import FEED, assert_matches_truth, clean_env, settings_dict, wait_for
from tests.reliability import TALLY
from tests.test_cli import SCRIPT, cli, write_config
from tests.test_tls import Pki, TlsRelay, make_pki, tls_settings, verified

pytestmark = pytest.mark.reliability

OS_USER, OS_SECRET = "admin", "os-Pa55w0rd-5ecret-4b1d9"
CM_USER, CM_SECRET = "wazuh", "cm-Pa55w0rd-5ecret-9c2e7"
TOKEN_SECRET = "tok-5ecret-77aa3e"
URL_SECRET = "url-Pa55w0rd-5ecret-31f0"
STATE_ID = "vd_1.0.0_vd_4.8.0"


def secret_forms() -> list[str]:
    """Each secret as it could leak: in clear, or inside an `Authorization: Basic` header."""
    forms = [OS_SECRET, CM_SECRET, TOKEN_SECRET, URL_SECRET]
    for user, secret in ((OS_USER, OS_SECRET), (CM_USER, CM_SECRET)):
        forms.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


def assert_no_secret(label: str, text: str) -> None:
    for form in secret_forms():
        assert form not in text, f"{label}: a secret was printed"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def tls_feed(feed_model: FeedModel, pki: Pki) -> Iterator[FeedServer]:
    with FeedServer(feed_model, ssl_context=pki.server_context) as server:
        server.command_auth = (CM_USER, CM_SECRET)
        yield server


@pytest.fixture
def relays(opensearch_url: str, pki: Pki) -> Iterator[tuple[TlsRelay, TlsRelay]]:
    """The node behind TLS demanding our OpenSearch credentials, and one demanding others."""
    good = TlsRelay(opensearch_url, pki.server_context, auth=(OS_USER, OS_SECRET))
    other = TlsRelay(opensearch_url, pki.server_context, auth=(OS_USER, "someone-else"))
    yield good, other
    good.close()
    other.close()


@pytest.mark.parametrize(("way", "fmt"), [("env", "text"), ("file", "json")])
def test_secrets_appear_in_no_output_at_debug(
    tls_feed: FeedServer,
    relays: tuple[TlsRelay, TlsRelay],
    pki: Pki,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
    way: str,
    fmt: str,
) -> None:
    relay, refusing = relays
    model = tls_feed.model
    data = tls_settings(
        tls_feed,
        relay,
        prefix,
        tmp_path,
        cti=verified(pki),
        opensearch={**verified(pki), "username": OS_USER},
        command_manager={**verified(pki), "username": CM_USER},
    )
    data["logging"] = {"level": "DEBUG", "format": fmt}
    data["schedule"] = {"interval": "1s", "jitter": 0, "run_on_start": True}
    env = {"CONTENT_SYNC_HTTP__TOKEN": TOKEN_SECRET}
    if way == "env":
        env["CONTENT_SYNC_OPENSEARCH__PASSWORD"] = OS_SECRET
        env["CONTENT_SYNC_COMMAND_MANAGER__PASSWORD"] = CM_SECRET
    else:
        for section, secret in (("opensearch", OS_SECRET), ("command_manager", CM_SECRET)):
            path = tmp_path / f"{section}.password"
            path.write_text(secret + "\n", encoding="utf-8")
            path.chmod(0o600)
            data[section]["password_file"] = str(path)
    config = str(write_config(tmp_path / "secrets.yaml", data))
    assert_no_secret("settings file", Path(config).read_text())
    outputs: dict[str, str] = {}

    def run(label: str, *args: str, code: int, **extra: str) -> subprocess.CompletedProcess[str]:
        done = cli(*args, "--config", config, env={**env, **extra})
        assert done.returncode == code, (label, done.stdout, done.stderr)
        outputs[label] = done.stdout + done.stderr
        return done

    done = run("sync", "sync", code=0)
    assert f"in sync at offset {model.head_offset}" in done.stdout
    # Both sets of credentials were sent, and accepted.
    assert relay.forwarded > 0 and relay.refused == 0 and len(tls_feed.commands) == 1
    TALLY["documents compared"] += assert_matches_truth(
        os_client, f"{prefix}-cve", model, model.head_offset
    )

    unreachable_cm = "https://127.0.0.1:9/_plugins/_command_manager/commands"
    with ThreadPoolExecutor(max_workers=5) as pool:  # read-only commands, side by side
        jobs = {
            "status": pool.submit(run, "status", "status", code=0),
            "status --json": pool.submit(run, "status --json", "status", "--json", code=0),
            "check": pool.submit(run, "check", "check", code=0),
            # OpenSearch refusing our credentials and the Command Manager unreachable.
            "failing check": pool.submit(
                run,
                "failing check",
                "check",
                code=1,
                CONTENT_SYNC_OPENSEARCH__HOSTS=refusing.url,
                CONTENT_SYNC_COMMAND_MANAGER__URL=unreachable_cm,
            ),
            # A cycle that cannot start: OpenSearch refuses the credentials.
            "refused sync": pool.submit(
                run, "refused sync", "sync", code=1, CONTENT_SYNC_OPENSEARCH__HOSTS=refusing.url
            ),
        }
        done_by = {label: job.result() for label, job in jobs.items()}
    rows = json.loads(done_by["status --json"].stdout)["feeds"]
    assert rows[0]["local_offset"] == model.head_offset and rows[0]["status"] == "ready"
    assert f"{FEED}: ready" in done_by["status"].stdout
    assert done_by["check"].stdout.count("ok  ") == 5
    failing = done_by["failing check"].stdout
    assert "FAIL OpenSearch" in failing and "AuthenticationException" in failing
    assert "FAIL Command Manager" in failing and "unreachable" in failing
    assert "refused the credentials" in done_by["refused sync"].stderr
    assert refusing.refused >= 2

    # A failed cycle prints its error (and records it in the state).
    model.append_changes(20)
    tls_feed.inject("500", times=50, on="changes")
    done = run("failed cycle", "sync", code=1)
    assert "failed: feed answered 500" in done.stderr
    tls_feed.clear_faults()

    # A kept notification: the Command Manager refuses (401), with its own message.
    tls_feed.command_auth = (CM_USER, "changed-on-the-server")
    done = run("refused notification", "sync", code=0)
    assert "notification kept for a later cycle" in done.stderr and "401" in done.stderr
    tls_feed.command_auth = (CM_USER, CM_SECRET)

    # The service: its first cycle delivers the kept command and the new content; then SIGTERM.
    model.append_changes(20)
    log = tmp_path / "run.log"
    with log.open("w") as err:
        service = subprocess.Popen(
            [SCRIPT, "run", "--config", config],
            env=clean_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_for(lambda: "outcome=ok" in log.read_text(), 30, "a cycle")
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()
    outputs["run"] = log.read_text()
    assert tls_feed.commands[-1]["commands"][0]["action"]["args"]["offset"] == str(
        model.head_offset
    )
    TALLY["documents compared"] += assert_matches_truth(
        os_client, f"{prefix}-cve", model, model.head_offset
    )

    assert len(outputs) == 9
    for label, text in outputs.items():
        assert_no_secret(label, text)
    TALLY["hostile inputs tried"] += len(outputs)
    # DEBUG really was on, in the format asked for.
    assert "DEBUG" in outputs["sync"] and "DEBUG" in outputs["run"]
    if fmt == "json":
        logged = [line for line in outputs["run"].splitlines() if line.strip()]
        assert logged and all(json.loads(line)["level"] for line in logged)

    # Nothing in OpenSearch either: not the state, not the content.
    os_client.indices.refresh(index=f"{prefix}*")
    stored = os_client.search(index=f"{prefix}*", body={"size": 10_000})["hits"]["hits"]
    assert any(hit["_id"] == STATE_ID for hit in stored)
    assert_no_secret("OpenSearch documents", json.dumps(stored))


def test_credentials_in_urls_are_refused_without_printing_them(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """URLs end up in logs and errors, so user:password@ in one is a settings error (exit 2)
    that names the key and shows the URL without them."""
    config = write_config(
        tmp_path / "s.yaml", settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    )
    port = feed_server.port
    base_url = f"https://reader:{URL_SECRET}@127.0.0.1:{port}/api/v1"
    cases = [
        ("CONTENT_SYNC_CTI__BASE_URL", base_url, "cti.base_url", f"(https://127.0.0.1:{port})"),
        (  # an @ inside the password too
            "CONTENT_SYNC_CTI__BASE_URL",
            f"http://reader:{URL_SECRET}@x@127.0.0.1:{port}/api/v1",
            "cti.base_url",
            f"(http://127.0.0.1:{port})",
        ),
        (
            "CONTENT_SYNC_OPENSEARCH__HOSTS",
            f"https://127.0.0.1:9200,https://admin:{URL_SECRET}@127.0.0.1:9201",
            "opensearch.hosts",
            "(https://127.0.0.1:9201)",
        ),
        (  # no scheme: opensearch-py would take host:port
            "CONTENT_SYNC_OPENSEARCH__HOSTS",
            f"admin:{URL_SECRET}@127.0.0.1:9200",
            "opensearch.hosts",
            "(127.0.0.1:9200)",
        ),
        (
            "CONTENT_SYNC_COMMAND_MANAGER__URL",
            f"https://wazuh:{URL_SECRET}@127.0.0.1:{port}/_plugins/_command_manager/commands",
            "command_manager.url",
            f"(https://127.0.0.1:{port})",
        ),
    ]
    for variable, url, key, shown in cases:
        with monkeypatch.context() as patch:
            patch.setenv(variable, url)
            for command in ("check", "sync", "status"):
                assert main([command, "--config", str(config)]) == 2
                out = capsys.readouterr()
                assert f"{key}: credentials do not belong in the URL {shown}" in out.err
                assert len(out.err.splitlines()) == 1
                assert_no_secret(f"{variable} {command}", out.out + out.err)
        TALLY["hostile inputs tried"] += 1
    # And through the real console script, at DEBUG.
    done = cli(
        "check",
        "--config",
        str(config),
        env={
            "CONTENT_SYNC_LOGGING__LEVEL": "DEBUG",
            "CONTENT_SYNC_CTI__BASE_URL": base_url,
        },
    )
    assert done.returncode == 2 and "cti.base_url" in done.stderr
    assert_no_secret("console script", done.stdout + done.stderr)
    assert feed_server.requests == []  # refused before any request


def test_unreadable_password_file_is_a_settings_error(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    missing = tmp_path / "no-such.password"
    data["command_manager"].update({"username": CM_USER, "password_file": str(missing)})
    done = cli("check", "--config", str(write_config(tmp_path / "s.yaml", data)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"command_manager.password_file: cannot read {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    TALLY["hostile inputs tried"] += 1


def test_credentials_over_plain_http_are_warned_about_without_the_password(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Basic auth over http:// off loopback: one warning per endpoint at start, naming the
    settings, never the secret. None over https, on loopback, or where nothing is sent."""
    cm_url = "http://wazuh.example.net:55000/_plugins/_command_manager/commands"
    os_auth = {"username": OS_USER, "password": OS_SECRET}
    cm_auth = {"username": CM_USER, "password": CM_SECRET}

    def start(opensearch: dict[str, Any], command_manager: dict[str, Any]) -> list[str]:
        """The warnings about unencrypted credentials of one start (no request is made)."""
        settings = Settings.model_validate(
            {
                "feeds": [{"name": FEED, "context": "c", "consumer": "k", "index": "cve"}],
                "cti": {"base_url": "http://cti.example.net/api/v1"},  # takes no credentials
                "opensearch": opensearch,
                "command_manager": {"url": cm_url, **command_manager},
            }
        )
        caplog.clear()
        with caplog.at_level(logging.DEBUG), Runtime(settings):
            pass
        assert_no_secret("start-up log", caplog.text)
        return [r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()]

    hosts = ["https://10.0.0.5:9200", "http://10.0.0.6:9200", "10.0.0.7:9200"]
    opensearch, command_manager = start({"hosts": hosts, **os_auth}, cm_auth)
    assert "opensearch.username, opensearch.password" in opensearch
    assert "opensearch.hosts uses plain HTTP (http://10.0.0.6:9200, http://10.0.0.7:9200)" in (
        opensearch
    )
    assert "command_manager.username, command_manager.password" in command_manager
    assert "command_manager.url uses plain HTTP (http://wazuh.example.net:55000/" in (
        command_manager
    )
    # The credential setting named is the one in use.
    secret_file = tmp_path / "os.password"
    secret_file.write_text(OS_SECRET + "\n", encoding="utf-8")
    file_auth = {"username": OS_USER, "password_file": str(secret_file)}
    (opensearch,) = start({"hosts": ["http://opensearch.lan:9200"], **file_auth}, {})
    assert "opensearch.username, opensearch.password_file" in opensearch

    quiet: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"hosts": ["https://10.0.0.5:9200"], **os_auth}, {"url": "https://wazuh:55000/c"}),
        (
            {"hosts": ["http://127.0.0.1:9200", "http://localhost:9200", "http://[::1]:9200"]},
            {"url": "http://127.0.0.1:55000/c", **cm_auth},
        ),
        ({"hosts": ["http://10.0.0.6:9200"], "username": OS_USER}, {}),  # no password
        ({"hosts": ["http://10.0.0.6:9200"], "username": None, "password": OS_SECRET}, {}),
        ({"hosts": ["https://10.0.0.5:9200"]}, {"enabled": False, **cm_auth}),  # sends nothing
    ]
    for opensearch_section, cm_section in quiet:
        assert start(opensearch_section, cm_section) == [], (opensearch_section, cm_section)
