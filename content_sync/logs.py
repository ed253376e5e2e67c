"""Logging set-up: plain text by default, JSON lines on request (logging.format: json)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from content_sync.settings import LoggingSettings

__all__ = ["JsonFormatter", "setup_logging"]

# Libraries whose INFO/WARNING lines are noise for an operator: opensearch-py logs every 404 (a
# missing state document is normal), apscheduler every job start.
_QUIET = {"opensearch": logging.ERROR, "apscheduler": logging.WARNING, "httpx": logging.WARNING}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(max(level, logging.getLevelName(settings.level)))
