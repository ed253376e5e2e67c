"""The deployment files say what the README says they do (they cannot be run here: no Docker
engine, no systemd as PID 1), so their key lines are checked."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

from content_sync.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_non_root_healthcheck_and_command() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert "\nUSER content-sync\n" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'CMD ["content-sync", "run"]' in text


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "content-sync.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith(
        "content-sync run --config /etc/content-sync/settings.yaml"
    )
    for key, expected in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "CacheDirectory": "content-sync",
    }.items():
        assert service[key] == expected, key
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["TimeoutStopSec"] == "120s"  # the compose example's stop_grace_period too


def test_compose_example_parses_and_uses_the_image() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"opensearch", "content-sync"}
    assert compose["services"]["content-sync"]["build"] == "."
    # A clean stop gets as long as under systemd, not Docker's default 10 s.
    assert compose["services"]["content-sync"]["stop_grace_period"] == "2m"


def test_example_settings_load() -> None:
    settings = load_settings(ROOT / "settings.yaml", environ={})
    assert [f.index for f in settings.feeds] == ["wazuh-cve"]
    assert settings.opensearch.password is None  # secrets never live in the example file
