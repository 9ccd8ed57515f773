"""Who the caller is, and share links: one session, one role, for a while.

A share link is minted by an admin or by an operator of that session, for a role
no greater than the caller's own; see :mod:`..sharelinks`.
"""

from __future__ import annotations

import math
from typing import Any

import pydantic
import trio
from quart import Blueprint, g

from ..._errors import BadInput
from ..authz import Role, requires
from ..fields import request_fields
from ..openapi import request_body
from ..state import current_state

__all__ = ["access"]

access = Blueprint("access", __name__)

DEFAULT_LINK_TTL = 3600.0


class ShareLinkBody(pydantic.BaseModel):
    """The fields of ``POST /api/sessions/{session_id}/share``."""

    role: str = pydantic.Field("spectator", description="spectator or operator")
    ttl: float = pydantic.Field(
        DEFAULT_LINK_TTL, description="seconds the link stays valid (at most the server's maximum)"
    )
    name: str | None = pydantic.Field(None, description="who the link is for, for the audit log")


@access.get("/api/auth/whoami")
@requires("watch")
async def whoami() -> dict[str, Any]:
    """The caller's name, role and sessions (null: all), as the server sees its credentials."""
    await trio.lowlevel.checkpoint()
    principal = g.admission.principal
    sessions = sorted(principal.sessions) if principal.sessions is not None else None
    return {
        "success": True,
        "name": principal.name,
        "role": str(principal.role),
        "sessions": sessions,
        "mode": current_state().gate.mode,
    }


@access.post("/api/sessions/<session_id>/share")
@request_body(ShareLinkBody)
@requires("control")
async def share_link(session_id: str) -> dict[str, Any]:
    """Mint a signed link that opens the viewer on this session with ``role``, until it expires."""
    state = current_state()
    state.bridge.get_session(session_id)
    fields = await request_fields()
    try:
        role = Role(fields.get("role", "spectator"))
    except ValueError:
        raise BadInput("role", "must be spectator or operator") from None
    principal = g.admission.principal
    if role is Role.ADMIN or (role is Role.OPERATOR and principal.role is Role.SPECTATOR):
        raise BadInput("role", "must be spectator or operator, and not above your own role")
    ttl = _ttl(fields.get("ttl", DEFAULT_LINK_TTL), state.bridge.settings.share_link_max_ttl)
    name = fields.get("name") or f"by {principal.name}"
    if not isinstance(name, str) or len(name) > 100:
        raise BadInput("name", "must be a string of at most 100 characters")
    token, link = state.gate.links.mint(session_id, role, ttl, name)
    return {
        "success": True,
        "token": token,
        "url": f"/#token={token}&session={session_id}",
        "role": str(role),
        "session_id": session_id,
        "expires_at": link.expires_at,
    }


def _ttl(raw: Any, maximum: float) -> float:
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        raise BadInput("ttl", f"must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(ttl) or not 1 <= ttl <= maximum:
        raise BadInput("ttl", f"must be from 1 to {maximum:g} seconds")
    return ttl
