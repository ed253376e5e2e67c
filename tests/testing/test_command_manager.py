"""The Command Manager stand-in validates bodies like the real plugin (cti-api.md section 6)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from content_sync.testing.server import FeedServer, validate_commands

GOOD: dict[str, Any] = {
    "commands": [
        {
            "action": {
                "name": "update",
                "args": {"index": "wazuh-cve", "offset": "1675416"},
                "version": "5.0.0",
            },
            "source": "Content Manager",
            "timeout": 100,
            "target": {"id": "vulnerability-detector", "type": "server"},
        }
    ]
}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _post(client: httpx.Client, server: FeedServer, body: Any, **kw: Any) -> httpx.Response:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(
        server.command_url, content=raw, headers={"Content-Type": "application/json"}, **kw
    )


def _reordered(cmd: dict[str, Any], order: list[str]) -> dict[str, Any]:
    return {k: cmd[k] for k in order}


def test_good_body_is_accepted_and_recorded(feed_server: FeedServer, client: httpx.Client) -> None:
    resp = _post(client, feed_server, GOOD)
    assert resp.status_code == 200
    body = resp.json()
    assert body["_index"] == "wazuh-commands"
    assert body["result"] == "OK"
    (order,) = body["orders"]
    uuid.UUID(order["_id"])
    assert feed_server.commands == [GOOD]
    assert list(feed_server.commands[0]["commands"][0]) == ["action", "source", "timeout", "target"]


def _bad_bodies() -> list[tuple[str, Any]]:
    cmd = GOOD["commands"][0]
    cases: list[tuple[str, Any]] = [
        (
            "target before action",
            {"commands": [_reordered(cmd, ["target", "source", "timeout", "action"])]},
        ),
        (
            "args before name",
            {
                "commands": [
                    {**cmd, "action": _reordered(cmd["action"], ["args", "name", "version"])}
                ]
            },
        ),
        ("not json", "{commands: nope"),
        ("not an object", ["commands"]),
        ("no commands", {"command": []}),
        ("empty commands", {"commands": []}),
    ]
    for label, path, value in [
        ("int offset", ("action", "args", "offset"), 1675416),
        ("int index", ("action", "args", "index"), 7),
        ("missing offset", ("action", "args", "offset"), None),
        ("target without id", ("target", "id"), None),
        ("target without type", ("target", "type"), None),
        ("no source", ("source",), None),
        ("no timeout", ("timeout",), None),
        ("string timeout", ("timeout",), "100"),
        ("no action name", ("action", "name"), None),
    ]:
        body = copy.deepcopy(GOOD)
        node = body["commands"][0]
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        cases.append((label, body))
    return cases


@pytest.mark.parametrize(("label", "body"), _bad_bodies(), ids=[c[0] for c in _bad_bodies()])
def test_bad_bodies_are_400(
    feed_server: FeedServer, client: httpx.Client, label: str, body: Any
) -> None:
    resp = _post(client, feed_server, body)
    assert resp.status_code == 400, label
    assert resp.json()["status"] == 400
    assert resp.json()["error"]["reason"]
    assert feed_server.commands == []


def test_key_order_is_checked_on_the_raw_json(
    feed_server: FeedServer, client: httpx.Client
) -> None:
    raw = (
        '{"commands":[{"target":{"id":"vulnerability-detector","type":"server"},'
        '"source":"Content Manager","timeout":100,'
        '"action":{"name":"update","args":{"index":"wazuh-cve","offset":"5"}}}]}'
    )
    assert _post(client, feed_server, raw).status_code == 400
    dup = raw.replace('"timeout":100', '"timeout":100,"timeout":100')
    assert _post(client, feed_server, dup).status_code == 400


def test_validator_directly() -> None:
    assert validate_commands(GOOD) is None
    assert validate_commands({"commands": [{}]}) is not None


def test_auth(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.command_auth = ("admin", "s3cret")
    resp = _post(client, feed_server, GOOD)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Basic")
    assert _post(client, feed_server, GOOD, auth=("admin", "wrong")).status_code == 401
    assert feed_server.commands == []
    assert _post(client, feed_server, GOOD, auth=("admin", "s3cret")).status_code == 200
    assert len(feed_server.commands) == 1


def test_failures_on_request(feed_server: FeedServer, client: httpx.Client) -> None:
    feed_server.inject("500", on="command")
    assert client.get(feed_server.consumer_url).status_code == 200
    assert _post(client, feed_server, GOOD).status_code == 500
    feed_server.inject("401", on="command")
    assert _post(client, feed_server, GOOD).status_code == 401
    feed_server.inject("drop", on="command")
    with pytest.raises(httpx.RemoteProtocolError):
        _post(client, feed_server, GOOD)
    assert feed_server.commands == []
    assert _post(client, feed_server, GOOD).status_code == 200
    assert client.get(feed_server.command_url).status_code == 405
