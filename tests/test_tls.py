"""TLS to the feed, OpenSearch and the Command Manager: verified by default, a private CA in the
settings, verification off only with a warning at every start.

The feed and the Command Manager stand-in speak HTTPS themselves (FeedServer's ssl_context). The
test node speaks plain HTTP, so a TLS-terminating relay on 127.0.0.1 sits in front of it; it can
also demand HTTP basic auth on every request, which shows the credentials are really sent.
Every certificate comes from a throw-away CA made by trustme.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from opensearchpy import OpenSearch

from content_sync.cli import main
from content_sync.testing.model import FeedModel
from content_sync.testing.server import FeedServer
from tests.helpers import assert_matches_truth, clean_env, settings_dict, wait_for
from tests.reliability import TALLY
from tests.test_cli import SCRIPT, cli, write_config

pytestmark = pytest.mark.reliability

STATE_ID = "vd_1.0.0_vd_4.8.0"
OFF_WARNING = "TLS certificate verification is off for"


@dataclass
class Pki:
    """A throw-away CA, its PEM file, and a server context holding a certificate it issued for
    127.0.0.1 and localhost."""

    ca: trustme.CA
    ca_file: Path
    server_context: ssl.SSLContext


def make_pki(directory: Path, name: str = "ca") -> Pki:
    ca = trustme.CA()
    ca_file = directory / f"{name}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return Pki(ca, ca_file, context)


class TlsRelay:
    """HTTPS on 127.0.0.1 in front of a plain-HTTP node: terminates TLS, forwards the bytes.

    With `auth`, every request must carry that HTTP basic auth (else 401 and the connection is
    closed): the relay parses request heads and Content-Length bodies on the way in. Counts
    handshakes that failed (a client that refused the certificate) and requests forwarded.
    """

    def __init__(
        self, target_url: str, context: ssl.SSLContext, auth: tuple[str, str] | None = None
    ) -> None:
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 9200)
        self.context = context
        self.expected = (
            "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        )
        self.handshake_failures = 0
        self.forwarded = 0
        self.refused = 0
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="tls-relay").start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.handshake_failures += 1
            raw.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=60)
        except OSError:
            tls.close()
            return
        with contextlib.suppress(OSError), tls, upstream:
            self._pump(tls, upstream)

    def _pump(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        pending = b""  # client bytes not yet checked and forwarded
        while True:
            ready, _, _ = select.select([tls, upstream], [], [], 60)
            if not ready:
                return
            if upstream in ready:
                data = upstream.recv(65536)
                if not data:
                    return
                tls.sendall(data)
            if tls in ready:
                data = tls.recv(65536)
                while tls.pending():
                    data += tls.recv(65536)
                if not data:
                    return
                pending += data
                while (request := self._next_request(pending)) is not None:
                    if not self._authorised(request):
                        with self._lock:
                            self.refused += 1
                        body = json.dumps({"error": "unauthorized", "status": 401}).encode()
                        tls.sendall(
                            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                            b'WWW-Authenticate: Basic realm="relay"\r\nConnection: close\r\n'
                            + f"Content-Length: {len(body)}\r\n\r\n".encode()
                            + body
                        )
                        return
                    upstream.sendall(request)
                    pending = pending[len(request) :]
                    with self._lock:
                        self.forwarded += 1

    @staticmethod
    def _next_request(buffer: bytes) -> bytes | None:
        """The first complete request in `buffer` (head and Content-Length body), or None."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
            assert key.strip().lower() != "transfer-encoding", "chunked requests not expected"
        total = end + 4 + length
        return buffer[:total] if len(buffer) >= total else None

    def _authorised(self, request: bytes) -> bool:
        if self.expected is None:
            return True
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "authorization":
                return value.strip() == self.expected
        return False


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def tls_feed(feed_model: FeedModel, pki: Pki) -> Iterator[FeedServer]:
    """The local feed and Command Manager stand-in, over HTTPS with a certificate of `pki`."""
    with FeedServer(feed_model, ssl_context=pki.server_context) as server:
        yield server


@pytest.fixture
def relay(opensearch_url: str, pki: Pki) -> Iterator[TlsRelay]:
    r = TlsRelay(opensearch_url, pki.server_context)
    yield r
    r.close()


def tls_settings(
    server: FeedServer,
    relay: TlsRelay,
    prefix: str,
    tmp_path: Path,
    *,
    cti: dict[str, Any],
    opensearch: dict[str, Any],
    command_manager: dict[str, Any],
) -> dict[str, Any]:
    data = settings_dict(server, relay.url, prefix, tmp_path)
    for section, values in (
        ("cti", cti),
        ("opensearch", opensearch),
        ("command_manager", command_manager),
    ):
        data[section].update(values)
    return data


def verified(pki: Pki) -> dict[str, Any]:
    return {"verify_certs": True, "ca_certs": str(pki.ca_file)}


def off_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if OFF_WARNING in line]


def test_verified_tls_with_the_ca_everywhere(
    tls_feed: FeedServer,
    relay: TlsRelay,
    pki: Pki,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    model = tls_feed.model
    head = model.append_changes(150)
    data = tls_settings(
        tls_feed,
        relay,
        prefix,
        tmp_path,
        cti=verified(pki),
        opensearch=verified(pki),
        command_manager=verified(pki),
    )
    config = write_config(tmp_path / "tls.yaml", data)
    assert data["cti"]["base_url"].startswith("https://")
    assert data["command_manager"]["url"].startswith("https://")

    done = cli("sync", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"in sync at offset {head}" in done.stdout
    assert off_warnings(done.stderr) == []
    kinds = {r.kind for r in tls_feed.requests}
    assert {"consumer", "snapshot", "changes", "command"} <= kinds  # all of it over HTTPS
    assert tls_feed.commands[-1]["commands"][0]["action"]["args"]["offset"] == str(head)
    assert relay.forwarded > 0 and relay.handshake_failures == 0
    TALLY["documents compared"] += assert_matches_truth(os_client, f"{prefix}-cve", model, head)

    checked = cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("ok  ") == 5 and "FAIL" not in checked.stdout
    TALLY["hostile inputs tried"] += 1


def test_verification_without_the_ca_fails_naming_the_certificate(
    tls_feed: FeedServer,
    relay: TlsRelay,
    pki: Pki,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    """Verified against the default store (which lacks the test CA) or against another CA, each
    endpoint fails, saying TLS/certificate; given the CA, it works."""
    model = tls_feed.model
    names = ("cti", "opensearch", "command_manager")
    other = make_pki(tmp_path, "other-ca")

    def config(name: str, **sections: dict[str, Any]) -> Path:
        data = tls_settings(
            tls_feed, relay, prefix, tmp_path, **{n: verified(pki) for n in names} | sections
        )
        return write_config(tmp_path / f"{name}.yaml", data)

    # `check` names the three, whether no CA or the wrong CA is given.
    for bad in ({"verify_certs": True}, {"verify_certs": True, "ca_certs": str(other.ca_file)}):
        checked = cli("check", "--config", str(config("check", **dict.fromkeys(names, bad))))
        fails = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
        assert checked.returncode == 1 and len(fails) == 3, checked.stdout
        for line, what in zip(fails, ("feed", "OpenSearch", "Command Manager"), strict=True):
            assert line.startswith(f"FAIL {what}") and "CERTIFICATE_VERIFY_FAILED" in line
        TALLY["hostile inputs tried"] += 3
    assert tls_feed.requests == [] and relay.forwarded == 0
    wait_for(lambda: relay.handshake_failures == 2, 5, "the relay to see both handshakes fail")

    # OpenSearch without the CA: `sync` fails at once, before asking the feed.
    done = cli("sync", "--config", str(config("os", opensearch={"verify_certs": True})))
    assert done.returncode == 1
    assert "TLS handshake failed" in done.stderr and "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "opensearch.ca_certs" in done.stderr
    assert tls_feed.requests == [] and relay.forwarded == 0
    assert not os_client.indices.exists(index=f"{prefix}-state")

    # The feed without the CA: the cycle fails, and says why in the state too.
    done = cli("sync", "--config", str(config("cti", cti={"verify_certs": True})))
    assert done.returncode == 1 and "certificate verify failed" in done.stderr
    # A CA that is wrong stays wrong: reported at once, with the setting to fix, not retried.
    assert "cti.ca_certs" in done.stderr and "; retry 1 in" not in done.stderr, done.stderr
    assert tls_feed.requests == []  # not one request got through
    state = os_client.get(index=f"{prefix}-state", id=STATE_ID)["_source"]
    assert state["status"] == "failed" and state["local_offset"] == 0
    assert "CERTIFICATE_VERIFY_FAILED" in state["last_error"]

    # The Command Manager without the CA: content is synchronised, the command kept.
    cm_bad = config("cm", command_manager={"verify_certs": True})
    done = cli("sync", "--config", str(cm_bad))
    assert done.returncode == 0, done.stderr
    assert "notification kept for a later cycle" in done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "command_manager.ca_certs" in done.stderr and "; retry 1 in" not in done.stderr
    assert tls_feed.commands == [] and tls_feed.requests_of("command") == []
    state = os_client.get(index=f"{prefix}-state", id=STATE_ID)["_source"]
    assert state["pending_command"] == model.head_offset
    TALLY["hostile inputs tried"] += 3

    # Given the CA, the kept command goes out.
    done = cli("sync", "--config", str(config("fixed")))
    assert done.returncode == 0, done.stderr
    assert len(tls_feed.commands) == 1
    state = os_client.get(index=f"{prefix}-state", id=STATE_ID)["_source"]
    assert state["pending_command"] is None and state["local_offset"] == model.head_offset
    TALLY["documents compared"] += assert_matches_truth(
        os_client, f"{prefix}-cve", model, model.head_offset
    )


def test_verification_off_works_and_warns_at_every_start(
    tls_feed: FeedServer,
    relay: TlsRelay,
    prefix: str,
    tmp_path: Path,
    os_client: OpenSearch,
) -> None:
    model = tls_feed.model
    off = {"verify_certs": False}
    data = tls_settings(
        tls_feed, relay, prefix, tmp_path, cti=off, opensearch=off, command_manager=off
    )
    data["schedule"] = {"interval": "1s", "jitter": 0, "run_on_start": True}
    config = write_config(tmp_path / "off.yaml", data)
    expected = {
        "the CTI feed (cti.verify_certs: false)": tls_feed.base_url,
        "OpenSearch (opensearch.verify_certs: false)": relay.url,
        "the Command Manager (command_manager.verify_certs: false)": tls_feed.command_url,
    }

    def assert_warned_once_each(stderr: str) -> None:
        lines = off_warnings(stderr)
        assert len(lines) == 3, stderr
        for what, url in expected.items():
            [line] = [line for line in lines if f"{OFF_WARNING} {what}" in line]
            assert url in line and "WARNING" in line
        assert "InsecureRequestWarning" not in stderr  # no per-request noise beside them

    done = cli("sync", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert_warned_once_each(done.stderr)
    assert len(tls_feed.commands) == 1 and relay.forwarded > 0
    TALLY["documents compared"] += assert_matches_truth(
        os_client, f"{prefix}-cve", model, model.head_offset
    )

    # The service warns once at its start, not at every cycle (here one cycle a second).
    head = model.append_changes(60)
    log = tmp_path / "run.log"
    with log.open("w") as err:
        service = subprocess.Popen(
            [SCRIPT, "run", "--config", str(config)],
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_for(lambda: log.read_text().count("outcome=ok") >= 3, 30, "three cycles")
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()
    text = log.read_text()
    assert text.count("outcome=ok") >= 3, text
    assert_warned_once_each(text)
    TALLY["documents compared"] += assert_matches_truth(os_client, f"{prefix}-cve", model, head)
    TALLY["hostile inputs tried"] += 1


@pytest.mark.parametrize("section", ["cti", "opensearch", "command_manager"])
def test_unusable_ca_file_is_a_settings_error(
    feed_server: FeedServer,
    opensearch_url: str,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
) -> None:
    """Refused at start (exit 2, the key and the file named), for every command."""
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    for path, reason in (
        (tmp_path / "missing.pem", "No such file or directory"),
        (not_pem, "not a PEM file of CA certificates"),
        (tmp_path, "Is a directory"),
    ):
        data = settings_dict(feed_server, opensearch_url, prefix, tmp_path)
        data[section].update({"verify_certs": True, "ca_certs": str(path)})
        config = write_config(tmp_path / "s.yaml", data)
        for command in ("check", "sync", "status", "run"):
            assert main([command, "--config", str(config)]) == 2
            err = capsys.readouterr().err
            assert f"bad settings: {config}: {section}.ca_certs: " in err, err
            assert reason in err and str(path) in err and len(err.splitlines()) == 1
        TALLY["hostile inputs tried"] += 1
    assert feed_server.requests == []


def test_warning_is_only_for_https_endpoints(
    feed_server: FeedServer, opensearch_url: str, prefix: str, tmp_path: Path
) -> None:
    """Plain-HTTP endpoints have no certificate to skip: no warning for them (the helpers'
    settings turn verification off for the plain-HTTP test node)."""
    config = write_config(
        tmp_path / "plain.yaml", settings_dict(feed_server, opensearch_url, prefix, tmp_path)
    )
    done = cli("check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert off_warnings(done.stderr) == []
