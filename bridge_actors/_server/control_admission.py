"""Whether one control message may be applied: the role, and the connection's rate.

Asked by the control and screenshot sockets before each control (see
:attr:`~.ws.SocketHandlers.admit_control`): a spectator's control is refused with a
reason it can show, and counted; a connection over its per-second limit is told so.
Every admitted control is audited by kind, never by content (no typed text).
"""

from __future__ import annotations

import dataclasses
import math

import trio
from quart import g

from .guard import Admission, Gatekeeper

__all__ = ["ControlRate", "admit_control"]


@dataclasses.dataclass(slots=True)
class ControlRate:
    """One connection's control messages: at most ``limit`` in each one-second window."""

    limit: int
    started: float = -math.inf
    count: int = 0

    def admit(self, now: float) -> bool:
        if now - self.started >= 1.0:
            self.started, self.count = now, 0
        self.count += 1
        return self.count <= self.limit


def admit_control(gate: Gatekeeper, session_id: str, event: object) -> str | None:
    """Whether the current WebSocket may apply the control ``event``: None, or why not.

    A spectator's control is refused and counted; a connection over the per-second
    limit is told so. Every admitted control is audited by kind, never by content.
    """
    admission: Admission | None = g.get("admission")
    principal = admission.principal if admission is not None else None
    client = admission.client if admission is not None else None
    kind = type(event).__name__.lower()
    if principal is not None and not principal.may("control", session_id):
        gate.control_refused += 1
        gate.audit.write("control_refused", principal, client, session_id, kind=kind)
        return f"control refused: role {principal.role} may only watch this session"
    rate: ControlRate | None = g.get("control_rate")
    if rate is None:
        rate = g.control_rate = ControlRate(gate.settings.control_messages_per_second)
    if not rate.admit(trio.current_time()):
        gate.control_rate_limited += 1
        return f"control refused: more than {rate.limit} control messages per second"
    gate.audit.write("control", principal, client, session_id, kind=kind)
    return None
