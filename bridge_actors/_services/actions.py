"""The gate every device action passes: a per-session rate, and a line in the session's log.

Installing an app or moving the location runs a tool on the device's host; a
client looping over such a route could keep that host busy for everyone
sharing it, so each session gets at most ``per_minute`` actions in any minute
(the same exact sliding window as connections, :class:`~.ratelimit.SlidingWindow`).
Each admitted action is also written to the session's log stream, so whoever
watches the device's log sees what was done to it and when, next to what the
device said about it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from .._device import LogLine
from .._errors import RateLimited
from .ratelimit import SlidingWindow
from .sessions import Session

ACTION_PROCESS = "bridge"  # the process name action lines carry in the log stream


@dataclass(frozen=True, slots=True)
class ActionStatistics:
    admitted: int
    refused: int
    failed: int


def action_line(action: str, detail: str, *, outcome: str = "") -> LogLine:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    message = f"{action}: {detail}" if detail else action
    if outcome:
        message = f"{message} ({outcome})"
    level = "error" if outcome.startswith("failed") else "info"
    raw = f"{stamp} {ACTION_PROCESS}[0] {message}"
    return LogLine(stamp, ACTION_PROCESS, "0", level, message, raw)  # type: ignore[arg-type]


class ActionGate:
    """Admits and records the device actions of every session."""

    def __init__(self, *, per_minute: int, max_sessions: int = 10000) -> None:
        self._window = SlidingWindow(limit=per_minute, window=60.0, max_keys=max_sessions)
        self.admitted = 0
        self.refused = 0
        self.failed = 0

    def admit(self, session: Session, action: str, detail: str) -> None:
        """Count one action of ``session``, or raise RateLimited with its retry time."""
        try:
            self._window.consume(session.session_id, trio.current_time())
        except RateLimited:
            self.refused += 1
            raise
        self.admitted += 1
        self.record(session, action, detail)

    def record(self, session: Session, action: str, detail: str, outcome: str = "") -> None:
        if outcome.startswith("failed"):
            self.failed += 1
        if session.logs is not None:
            session.logs.note(action_line(action, detail, outcome=outcome))

    def forget_session(self, session_id: str) -> None:
        self._window.discard(session_id)

    def statistics(self) -> ActionStatistics:
        return ActionStatistics(admitted=self.admitted, refused=self.refused, failed=self.failed)
