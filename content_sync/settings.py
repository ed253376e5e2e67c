"""settings.yaml + environment -> typed, validated settings.

Any key can be overridden as CONTENT_SYNC_<SECTION>__<KEY> (list items by position:
CONTENT_SYNC_FEEDS__0__INDEX). Environment values are strings; pydantic converts them in lax mode.
Unknown keys, wrong types and impossible values are rejected with the key's path.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from content_sync.errors import SettingsError

__all__ = [
    "CTISettings",
    "CommandManagerSettings",
    "FeedSettings",
    "HttpSettings",
    "LoggingSettings",
    "OpenSearchSettings",
    "RetrySettings",
    "ScheduleSettings",
    "Settings",
    "SyncSettings",
    "is_loopback",
    "load_settings",
    "parse_duration",
    "plaintext_credentials",
    "public_url",
    "tls_verify",
    "unverified_endpoints",
]

ENV_PREFIX = "CONTENT_SYNC_"
GiB = 1024**3
MAX_WINDOW = 1000  # the feed answers 422 above this many changes per request

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """'90s', '60m', '1h', '250ms' or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 60m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"{value!r} is not a duration such as 30s, 60m or 1h")


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _comma_list(value: object) -> object:
    # From the environment a list arrives as "a,b" (or as YAML/JSON "[a, b]").
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return yaml.safe_load(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_comma_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def tls_verify(verify_certs: bool, ca_certs: Path | None) -> bool | ssl.SSLContext:
    """httpx's `verify`: off, the default store, or a context trusting the operator's CA file."""
    if verify_certs and ca_certs is not None:
        return ssl.create_default_context(cafile=str(ca_certs))
    return verify_certs


def _ca_file(value: Path | None) -> Path | None:
    # Checked at start, so a wrong path is a settings error naming the key, not a traceback or a
    # handshake failure later. The message names the file, never its content.
    if value is None:
        return None
    try:
        ssl.create_default_context(cafile=str(value))
    except ssl.SSLError:
        reason = "not a PEM file of CA certificates"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        return value
    raise ValueError(f"cannot use {value} as CA certificates: {reason}")


CAFile = Annotated[Path | None, AfterValidator(_ca_file)]


def _no_credentials(url: str, key: str) -> None:
    """Credentials never ride in a URL: URLs end up in logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        shown = f"{scheme}{sep}{authority.rpartition('@')[2]}"
        raise ValueError(f"credentials do not belong in the URL ({shown}); {key}")


def _one_password(value: SecretStr | None, path: Path | None) -> None:
    # Which of the two would win is a guess an operator should not have to make.
    if value is not None and path is not None:
        raise ValueError("password and password_file are both set: give one of them")


def _read_secret(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
    return None


class ScheduleSettings(_Section):
    interval: Seconds | None = Field(default=3600.0, gt=0)
    cron: str | None = None
    run_on_start: bool = True
    # Spread the feeds' start times a little so replicas do not hit the feed in lockstep.
    jitter: Seconds = Field(default=30.0, ge=0)
    # A run that starts late (busy process, suspended VM) still runs within this window.
    misfire_grace_time: Seconds = Field(default=600.0, gt=0)

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, value: str | None) -> str | None:
        return _check_cron(value)

    def for_feed(self, feed: FeedSettings) -> ScheduleSettings:
        """This schedule with a feed's own interval or cron in place of the global one."""
        if feed.cron:
            return self.model_copy(update={"cron": feed.cron, "interval": None})
        if feed.interval:
            return self.model_copy(update={"interval": feed.interval, "cron": None})
        return self


def _check_cron(value: str | None) -> str | None:
    if value is None:
        return None
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"not a crontab expression: {exc}") from None
    return value


class CTISettings(_Section):
    base_url: str = "https://cti.wazuh.com/api/v1"
    # Hosts the snapshot link (and any redirect) may point at; empty = the API's own host.
    allowed_hosts: StrList = Field(default_factory=list)
    timeout: Seconds = Field(default=60.0, gt=0)
    verify_certs: bool = True
    ca_certs: CAFile = None
    proxy: str | None = None
    # A JSON answer is parsed whole, so this bounds the memory one answer may take. A window of
    # 1000 changes is a few MB (12 MB if all are creates of average CVE records).
    max_answer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        _no_credentials(value, "the CTI API takes none")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @property
    def snapshot_hosts(self) -> frozenset[str]:
        hosts = self.allowed_hosts or [urlsplit(self.base_url).hostname or ""]
        return frozenset(h.lower() for h in hosts)


class FeedSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    context: str = Field(min_length=1)
    consumer: str = Field(min_length=1)
    index: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # A disabled feed is never synchronised (status shows it as disabled).
    enabled: bool = True
    # Offline (air-gapped): no request to the feed, ever; content arrives by `import`.
    offline: bool = False
    # This feed's own schedule, instead of the global one.
    interval: Seconds | None = Field(default=None, gt=0)
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, value: str | None) -> str | None:
        return _check_cron(value)

    @model_validator(mode="after")
    def _one_schedule(self) -> FeedSettings:
        if self.interval is not None and self.cron is not None:
            raise ValueError("give either interval or cron, not both")
        return self

    @property
    def state_id(self) -> str:
        return f"{self.context}_{self.consumer}"


class OpenSearchSettings(_Section):
    hosts: StrList = Field(default_factory=lambda: ["https://127.0.0.1:9200"], min_length=1)
    username: str | None = "admin"
    password: SecretStr | None = None
    password_file: Path | None = None
    verify_certs: bool = True
    ca_certs: CAFile = None
    state_index: str = Field(default="content-sync-state", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    timeout: Seconds = Field(default=60.0, gt=0)
    # Bulk requests are bounded by count and by bytes; `bulk_concurrency` of them in flight.
    bulk_docs: int = Field(default=1000, ge=1, le=10_000)
    bulk_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=100 * 1024 * 1024)
    bulk_concurrency: int = Field(default=2, ge=1, le=16)
    # Replicas of the content index once loaded (loading runs with none).
    replicas: str = "0-1"

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            _no_credentials(host, "give opensearch.username and password / password_file")
        return value

    @model_validator(mode="after")
    def _password(self) -> OpenSearchSettings:
        _one_password(self.password, self.password_file)
        return self

    def password_value(self) -> str | None:
        return _read_secret(self.password, self.password_file, "opensearch.password")


class CommandManagerSettings(_Section):
    enabled: bool = True
    url: str = "https://127.0.0.1:9200/_plugins/_command_manager/commands"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    verify_certs: bool = True
    ca_certs: CAFile = None
    timeout: Seconds = Field(default=30.0, gt=0)
    version: str = "5.0.0"
    source: str = "Content Manager"
    command_timeout: int = Field(default=100, gt=0)
    target_id: str = "vulnerability-detector"
    target_type: str = "server"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _no_credentials(value, "give command_manager.username and password / password_file")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _password(self) -> CommandManagerSettings:
        _one_password(self.password, self.password_file)
        return self

    def password_value(self) -> str | None:
        return _read_secret(self.password, self.password_file, "command_manager.password")


class SyncSettings(_Section):
    batch_size: int = Field(default=MAX_WINDOW, ge=1, le=MAX_WINDOW)
    with_empties: bool = True
    # A newer snapshot that skips more changes than this (its offset minus the local one) is
    # loaded, then the rest patched; otherwise the changes are replayed. From bench/ (session
    # 6): 5,700-6,200 snapshot documents/s and 4,300-6,200 changes/s on the same machine, so the
    # real feed's 336,000 resources load in the time of ~230,000-370,000 changes (over the
    # Internet both are slower: the archive's download, one feed request a window).
    snapshot_threshold: int = Field(default=250_000, ge=1)
    temp_dir: Path | None = None
    max_archive_bytes: int = Field(default=20 * GiB, gt=0)
    max_uncompressed_bytes: int = Field(default=20 * GiB, gt=0)
    max_line_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # One writer per feed: a lease in the state document, renewed while a cycle runs; if its
    # holder dies, another process may take the feed over after this long.
    lease_ttl: Seconds = Field(default=60.0, ge=1)
    # Keep the last archive that initialised a feed, to re-initialise from it when drift is
    # found while the feed cannot serve a snapshot. Off by default; needs room on disk.
    keep_archive: bool = False
    keep_archive_dir: Path | None = None
    keep_archive_max_bytes: int = Field(default=2 * GiB, gt=0)


class RetrySettings(_Section):
    attempts: int = Field(default=8, ge=1, le=100)
    initial: Seconds = Field(default=1.0, gt=0)
    max_wait: Seconds = Field(default=60.0, gt=0)
    # Upper bound on the total time spent retrying one call.
    budget: Seconds = Field(default=900.0, gt=0)


class HttpSettings(_Section):
    """The service's HTTP port: /metrics (Prometheus), /health, and the on-demand trigger."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    # Unhealthy when a feed's last success is older than this many schedule periods.
    healthy_intervals: float = Field(default=3.0, gt=0)
    # Required by the trigger (POST /feeds/<name>/sync) when host is not a loopback address.
    token: SecretStr | None = None


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(_Section):
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    cti: CTISettings = Field(default_factory=CTISettings)
    feeds: list[FeedSettings] = Field(min_length=1)
    opensearch: OpenSearchSettings = Field(default_factory=OpenSearchSettings)
    command_manager: CommandManagerSettings = Field(default_factory=CommandManagerSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)

    @model_validator(mode="after")
    def _unique_feeds(self) -> Settings:
        for attr in ("name", "index"):
            seen: set[str] = set()
            for i, feed in enumerate(self.feeds):
                value = getattr(feed, attr)
                if value in seen:
                    raise ValueError(f"feeds.{i}.{attr}: {value!r} is used by two feeds")
                seen.add(value)
        return self

    def feed(self, name: str) -> FeedSettings:
        for feed in self.feeds:
            if feed.name == name:
                return feed
        known = ", ".join(f.name for f in self.feeds)
        raise SettingsError(f"feeds: no feed named {name!r} (configured: {known})")


def unverified_endpoints(settings: Settings) -> list[tuple[str, str, str]]:
    """(what, setting, URLs) of each HTTPS endpoint whose certificate is not verified."""
    cm = settings.command_manager
    endpoints = [
        ("the CTI feed", "cti.verify_certs", settings.cti.verify_certs, [settings.cti.base_url]),
        (
            "OpenSearch",
            "opensearch.verify_certs",
            settings.opensearch.verify_certs,
            settings.opensearch.hosts,
        ),
        ("the Command Manager", "command_manager.verify_certs", cm.verify_certs, [cm.url]),
    ]
    if not cm.enabled:
        endpoints.pop()
    out = []
    for what, key, verify, urls in endpoints:
        tls = [public_url(u) for u in urls if urlsplit(u).scheme == "https"]
        if not verify and tls:
            out.append((what, key, ", ".join(tls)))
    return out


def is_loopback(host: str) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_credentials(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(what, credential settings, URL setting, URLs) of each endpoint given credentials over
    plain HTTP off loopback. Names settings only, never values. The CTI API takes no
    credentials (they are refused in cti.base_url), so it is never one of them."""
    os_, cm = settings.opensearch, settings.command_manager
    endpoints: list[tuple[str, str, OpenSearchSettings | CommandManagerSettings, str, list[str]]]
    endpoints = [("OpenSearch", "opensearch", os_, "hosts", os_.hosts)]
    if cm.enabled:
        endpoints.append(("the Command Manager", "command_manager", cm, "url", [cm.url]))
    out = []
    for what, section, creds, key, urls in endpoints:
        # Sent (as basic auth) only with both a user and a password: store.py, notify.py.
        if not creds.username or (creds.password is None and creds.password_file is None):
            continue
        # A host without a scheme is plain HTTP to opensearch-py.
        full = [urlsplit(u if "://" in u else f"http://{u}") for u in urls]
        plain = [
            public_url(u.geturl())
            for u in full
            if u.scheme == "http" and not is_loopback(u.hostname or "")
        ]
        if plain:
            secret = "password" if creds.password is not None else "password_file"
            out.append(
                (
                    what,
                    f"{section}.username, {section}.{secret}",
                    f"{section}.{key}",
                    ", ".join(plain),
                )
            )
    return out


def public_url(url: str) -> str:
    """A URL fit for printing: without user:password and query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in sorted(environ.items()):
        # CONFIG names the file; FAILPOINTS arms the reliability suite's crash points.
        if not key.startswith(ENV_PREFIX) or key[len(ENV_PREFIX) :] in ("CONFIG", "FAILPOINTS"):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SettingsError(f"{key}: {'.'.join(path[:i])} has no item {part}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise SettingsError(f"{key}: {'.'.join(path[:i])} is not a section")


def _format(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")  # our validators' own sentences
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from `path` (default: $CONTENT_SYNC_CONFIG, else ./settings.yaml)."""
    env = os.environ if environ is None else environ
    file = Path(path or env.get(f"{ENV_PREFIX}CONFIG") or "settings.yaml")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{file}: settings file not found") from None
    except OSError as exc:
        raise SettingsError(f"{file}: cannot read settings: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{file}: not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{file}: expected a mapping of sections at the top level")
    _apply_env(raw, env)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_format(exc, str(file))) from None
