"""Who may do what: modes, roles, permissions, and the decision for one request.

Pure policy, no I/O: the credentials are resolved elsewhere (:mod:`.tokens`,
:mod:`.sharelinks`), the refusals are written elsewhere (:mod:`.guard`). This
module only answers "may this principal do that, and if not, with which code".

Every route declares what it needs with :func:`requires`; a route that does not
is admin-only, so a route added later is safe until someone classifies it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

from .._errors import InvalidSettings

__all__ = [
    "ANONYMOUS_ADMIN",
    "PERMISSIONS",
    "WS_KIND_PERMISSION",
    "Decision",
    "Mode",
    "Permission",
    "Principal",
    "Role",
    "UnsafeBind",
    "decide",
    "effective_mode",
    "is_loopback",
    "permission_of",
    "requires",
]

Mode = Literal["none", "token"]
Permission = Literal["watch", "control", "admin"]
PERMISSIONS: tuple[Permission, ...] = ("watch", "control", "admin")


class Role(enum.StrEnum):
    """``admin``: everything; ``operator``: watch and control its sessions; ``spectator``: watch."""

    ADMIN = "admin"
    OPERATOR = "operator"
    SPECTATOR = "spectator"


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(PERMISSIONS),
    Role.OPERATOR: frozenset({"watch", "control"}),
    Role.SPECTATOR: frozenset({"watch"}),
}

# What opening each WebSocket kind needs. A control socket only needs "watch" to open:
# a spectator's viewer opens it and is told, message by message, that it may not control
# (see :meth:`Principal.may`), which a viewer can show; a socket refused outright could
# only say so once.
WS_KIND_PERMISSION: dict[str, Permission] = {
    "video": "watch",
    "screenshot": "watch",
    "control": "watch",
    "logs": "watch",
    "webrtc": "watch",
}
# The kinds a spectator opens only when its token grants the logs.
LOGS_KINDS = frozenset({"logs"})


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for. ``sessions`` None means every session."""

    name: str
    role: Role
    sessions: frozenset[str] | None = None
    logs: bool = True
    via: Literal["none", "token", "link"] = "token"

    def may(self, permission: Permission, session_id: str | None = None) -> bool:
        if permission not in _GRANTS[self.role]:
            return False
        if session_id is None or self.sessions is None:
            return True
        return session_id in self.sessions

    def may_open(self, kind: str, session_id: str) -> bool:
        """Whether this principal may open a WebSocket of ``kind`` on ``session_id``."""
        if kind in LOGS_KINDS and self.role is Role.SPECTATOR and not self.logs:
            return False
        return self.may(WS_KIND_PERMISSION.get(kind, "admin"), session_id)


# In mode "none" every client is this principal: today's behaviour, everything allowed.
ANONYMOUS_ADMIN = Principal(name="anonymous", role=Role.ADMIN, via="none")


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request: ``status`` 200 (allowed), 401 or 403, and why."""

    status: int
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def close_code(self) -> int:
        """The WebSocket close code of a refusal: 4401 or 4403."""
        return 4000 + self.status


ALLOWED = Decision(200)


def decide(
    principal: Principal | None,
    permission: Permission,
    session_id: str | None = None,
    *,
    credentials_given: bool = False,
) -> Decision:
    """May ``principal`` (None: no valid credentials) use ``permission`` on ``session_id``?"""
    if principal is None:
        reason = "invalid or expired credentials" if credentials_given else "credentials required"
        return Decision(401, reason)
    if principal.may(permission, session_id):
        return ALLOWED
    if permission not in _GRANTS[principal.role]:
        return Decision(403, f"role {principal.role} may not {_verb(permission)}")
    return Decision(403, f"not granted session {session_id}")


def _verb(permission: Permission) -> str:
    return {"watch": "watch", "control": "control a device", "admin": "administer"}[permission]


_View = TypeVar("_View", bound=Callable[..., object])
_PERMISSION_ATTRIBUTE = "__bridge_permission__"


def requires(permission: Permission) -> Callable[[_View], _View]:
    """Declare what a route needs; stack it with the route decorator, in either order."""
    if permission not in PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}, not {permission!r}")

    def mark(view: _View) -> _View:
        setattr(view, _PERMISSION_ATTRIBUTE, permission)
        return view

    return mark


def permission_of(view: Callable[..., object] | None) -> Permission:
    """What a route declared; "admin" for an undeclared one (or no route at all)."""
    return getattr(view, _PERMISSION_ATTRIBUTE, "admin")


# --- which mode a server runs in ------------------------------------------------------------


class UnsafeBind(InvalidSettings):
    """Binding a non-loopback address without authentication, and not explicitly allowed."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") only listens on this machine."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def effective_mode(
    configured: Mode | None, hosts: Iterable[str], *, allow_unauthenticated: bool
) -> tuple[Mode, str | None]:
    """The mode to run in and a warning to log on start (or None).

    Unset means ``none`` on loopback and ``token`` otherwise. Raises UnsafeBind for
    ``none`` on a non-loopback address unless ``allow_unauthenticated``.
    """
    exposed = [host for host in hosts if not is_loopback(host)]
    if configured is None:
        return ("token" if exposed else "none"), None
    if configured == "token" or not exposed:
        return configured, None
    if not allow_unauthenticated:
        raise UnsafeBind(
            f"BRIDGE_AUTH=none while binding {', '.join(exposed)}: anyone who reaches the port "
            "could control every device; use BRIDGE_AUTH=token, bind 127.0.0.1, or set "
            "BRIDGE_ALLOW_UNAUTHENTICATED=1"
        )
    warning = (
        f"authentication is off while binding {', '.join(exposed)} "
        "(BRIDGE_ALLOW_UNAUTHENTICATED=1): anyone who reaches the port controls every device"
    )
    return "none", warning
