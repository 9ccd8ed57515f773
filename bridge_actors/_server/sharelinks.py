"""Share links: a signed, expiring credential for one session and one role.

An admin or operator mints one to let someone watch (or control) a single
session without a token in the token file. The link is signed by itsdangerous
(HMAC-SHA1 over the payload with a key derived from the server secret), so it
cannot be altered or forged, and carries its own expiry. Links are told apart
from file tokens by their prefix.

The secret comes from the settings, or is generated once into the state
directory with permissions 0600, so links outlive a restart.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import itsdangerous

from .authz import Principal, Role

__all__ = ["LINK_PREFIX", "LinkSigner", "ShareLink", "load_or_create_secret"]

LINK_PREFIX = "link."
SECRET_FILE = "auth-secret"
_SALT = "bridge_actors.share-link"
LINK_ROLES = (Role.OPERATOR, Role.SPECTATOR)


@dataclasses.dataclass(frozen=True, slots=True)
class ShareLink:
    session_id: str
    role: Role
    expires_at: float  # Unix time
    name: str

    def principal(self) -> Principal:
        return Principal(
            name=f"link:{self.name}",
            role=self.role,
            sessions=frozenset({self.session_id}),
            logs=False,
            via="link",
        )


class LinkSigner:
    """Mints and checks share links with one secret; ``clock`` is Unix time."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._serializer = itsdangerous.URLSafeSerializer(secret, salt=_SALT)
        self.clock = clock
        self.minted = 0
        self.refused = 0

    def mint(self, session_id: str, role: Role, ttl: float, name: str) -> tuple[str, ShareLink]:
        if role not in LINK_ROLES:
            raise ValueError(f"a share link's role is operator or spectator, not {role}")
        link = ShareLink(session_id, role, self.clock() + ttl, name)
        payload = {"s": session_id, "r": str(role), "e": round(link.expires_at, 3), "n": name}
        self.minted += 1
        return LINK_PREFIX + self._serializer.dumps(payload), link

    def verify(self, token: str) -> ShareLink | None:
        """The link ``token`` carries if it is ours, intact and unexpired, else None."""
        if not token.startswith(LINK_PREFIX):
            return None
        try:
            payload: Any = self._serializer.loads(token[len(LINK_PREFIX) :])
        except itsdangerous.BadData:
            self.refused += 1
            return None
        try:
            link = ShareLink(
                session_id=str(payload["s"]),
                role=Role(payload["r"]),
                expires_at=float(payload["e"]),
                name=str(payload["n"]),
            )
        except (KeyError, TypeError, ValueError):
            self.refused += 1
            return None
        if link.role not in LINK_ROLES or self.clock() >= link.expires_at:
            self.refused += 1
            return None
        return link

    def statistics(self) -> dict[str, int]:
        return {"minted": self.minted, "refused": self.refused}


def load_or_create_secret(state_dir: Path) -> bytes:
    """The server secret kept in ``state_dir`` (0600), created on first use."""
    path = state_dir / SECRET_FILE
    try:
        secret = path.read_bytes().strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return secret
