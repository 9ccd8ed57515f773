"""The audit log: who did what, one JSON object per line, rotated by size.

Every entry names the event, the principal (token name and role, never a token),
the client address and the session. Features record their own events through
:func:`record` (an app install, a file push, a recording) without knowing where
the log goes; :class:`AuditLog` is what the app installs.

Lines are appended with :class:`logging.handlers.RotatingFileHandler`: a few
hundred bytes per entry, written in the event loop, since an entry is evidence
and must not be lost in a queue when the process dies.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quart import g, has_request_context, has_websocket_context

from .authz import Principal

__all__ = ["AuditLog", "record"]

_MAX_FIELD_CHARS = 200


class AuditLog:
    """An append-only JSON-lines file; ``path`` None keeps the counts only."""

    def __init__(self, path: Path | None, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self.write_failures = 0
        self._handler: logging.Handler | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )

    def write(
        self,
        event: str,
        principal: Principal | None,
        client: str | None,
        session_id: str | None = None,
        **fields: Any,
    ) -> None:
        entry: dict[str, Any] = {"time": round(time.time(), 3), "event": event}
        if principal is not None:
            entry["who"] = principal.name
            entry["role"] = str(principal.role)
        entry["client"] = client
        if session_id is not None:
            entry["session"] = _short(session_id)
        for name, value in fields.items():
            entry[name] = _short(value) if isinstance(value, str) else value
        self.counts[event] += 1
        if self._handler is None:
            return
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        except Exception:  # the handler reports its own errors; count them here too
            self.write_failures += 1

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()

    def statistics(self) -> dict[str, Any]:
        return {"events": dict(self.counts), "write_failures": self.write_failures}


def _short(text: str) -> str:
    return text if len(text) <= _MAX_FIELD_CHARS else text[:_MAX_FIELD_CHARS] + "…"


def record(event: str, session_id: str | None = None, **fields: Any) -> None:
    """Record ``event`` for the request or WebSocket being served (a no-op outside one).

    The principal and client address are the current connection's; ``fields`` are
    what the event is about (an app's bundle id, a file's name), never secrets.
    """
    if not (has_request_context() or has_websocket_context()):
        return
    admission = g.get("admission")
    if admission is None:
        return
    admission.audit.write(event, admission.principal, admission.client, session_id, **fields)
