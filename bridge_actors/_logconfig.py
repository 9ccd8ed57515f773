"""Logging for the server process: plain lines for people, JSON lines for collectors.

Only the command line configures logging; an application that embeds the bridge
keeps its own configuration. Every record, Hypercorn's included, goes through
one handler on the root logger, so a JSON-lines log never has a plain line in it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["JsonLinesFormatter", "announce", "configure_logging"]

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD_ATTRIBUTES = frozenset(
    set(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {"message", "asctime"}
)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class _OurHandler(logging.StreamHandler):
    """Marks the handler this module installed, so configuring twice replaces it."""


def configure_logging(
    level: str = "INFO",
    log_format: str = "plain",
    stream: TextIO | None = None,
    *,
    access_log: bool = False,
) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr), plain or as JSON lines.

    An access log that was asked for is written whatever ``level`` says.
    """
    if log_format not in ("plain", "json"):
        raise ValueError(f"log format must be 'plain' or 'json', not {log_format!r}")
    handler = _OurHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Hypercorn would otherwise install its own handlers with its own format.
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("hypercorn.access").setLevel(logging.INFO if access_log else logging.NOTSET)
    return handler


def announce(message: str, *, logger: str = "bridge_actors") -> None:
    """Write one line through the configured handler whatever the level.

    For the few facts a supervisor or a test must always see (the bound address),
    even with ``--log-level WARNING``.
    """
    record = logging.LogRecord(logger, logging.INFO, __file__, 0, message, None, None)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, _OurHandler)]
    if not handlers:
        print(message, file=sys.stderr, flush=True)
        return
    for handler in handlers:
        handler.handle(record)
        handler.flush()
