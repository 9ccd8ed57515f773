"""The token file: who holds which token, as SHA-256 hashes only.

A token is 32 random bytes (URL-safe base64); the file stores its SHA-256, never
the token, so reading the file (or a backup of it) grants nothing. A presented
token is hashed and compared with every entry in constant time, so neither a
match's position nor a matched prefix shows in the time taken.

The file is TOML, one ``[[token]]`` table per holder::

    [[token]]
    name = "ci"                      # shown in the audit log
    sha256 = "9f86d0…"               # hex SHA-256 of the token
    role = "operator"                # admin, operator or spectator
    sessions = ["3f2a…"]             # optional: only these sessions
    logs = false                     # optional, spectators: may read the device logs
    expires = 2026-12-31T00:00:00Z   # optional

:class:`TokenStore` keeps the last good reading: a reload that fails (a file
being edited) is reported and the previous tokens stay in force.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import logging
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .authz import Principal, Role

log = logging.getLogger("bridge_actors.auth")

__all__ = [
    "TokenEntry",
    "TokenFileError",
    "TokenStore",
    "constant_time_equal",
    "hash_token",
    "mint_token",
    "parse_token_file",
]

TOKEN_BYTES = 32
_HEX = frozenset("0123456789abcdef")


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the entry and field."""


def hash_token(token: str) -> str:
    return hashlib.sha256(_bytes(token)).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    """``a == b`` in time that depends on the lengths only, never on a matched prefix."""
    return hmac.compare_digest(_bytes(a), _bytes(b))


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclasses.dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    sha256: str
    role: Role
    sessions: frozenset[str] | None = None
    logs: bool = True
    expires: datetime.datetime | None = None

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.sessions, self.logs, via="token")

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def to_toml(self) -> str:
        """This entry as a ``[[token]]`` table of the token file."""
        lines = [
            "[[token]]",
            f"name = {_toml_string(self.name)}",
            f'sha256 = "{self.sha256}"',
            f'role = "{self.role}"',
        ]
        if self.sessions is not None:
            shown = ", ".join(_toml_string(s) for s in sorted(self.sessions))
            lines.append(f"sessions = [{shown}]")
        if not self.logs:
            lines.append("logs = false")
        if self.expires is not None:
            lines.append(f"expires = {self.expires.isoformat().replace('+00:00', 'Z')}")
        return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def mint_token(
    name: str,
    role: Role,
    *,
    sessions: Sequence[str] | None = None,
    logs: bool = True,
    expires: datetime.datetime | None = None,
) -> tuple[str, TokenEntry]:
    """A new random token and the file entry that grants it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    entry = TokenEntry(
        name=name,
        sha256=hash_token(token),
        role=role,
        sessions=frozenset(sessions) if sessions is not None else None,
        logs=logs,
        expires=expires,
    )
    return token, entry


def parse_token_file(text: str) -> tuple[TokenEntry, ...]:
    """The entries of a token file's text. Raises TokenFileError naming the first problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TokenFileError(f"not valid TOML: {error}") from None
    unknown = set(document) - {"token"}
    if unknown:
        raise TokenFileError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    tables = document.get("token", [])
    if not isinstance(tables, list):
        raise TokenFileError("'token' must be an array of tables ([[token]])")
    entries = [_entry(index, table) for index, table in enumerate(tables, 1)]
    names = [entry.name for entry in entries]
    for name in names:
        if names.count(name) > 1:
            raise TokenFileError(f"token name {name!r} is used twice")
    return tuple(entries)


_ENTRY_KEYS = frozenset({"name", "sha256", "role", "sessions", "logs", "expires"})


def _entry(index: int, table: Any) -> TokenEntry:
    where = f"token #{index}"
    if not isinstance(table, Mapping):
        raise TokenFileError(f"{where}: must be a table")
    unknown = set(table) - _ENTRY_KEYS
    if unknown:
        raise TokenFileError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TokenFileError(f"{where}: 'name' must be a non-empty string")
    where = f"token {name!r}"
    digest = table.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest.lower()) <= _HEX:
        raise TokenFileError(f"{where}: 'sha256' must be 64 hexadecimal digits")
    try:
        role = Role(table.get("role"))
    except ValueError:
        raise TokenFileError(
            f"{where}: 'role' must be one of {', '.join(r.value for r in Role)}"
        ) from None
    sessions = table.get("sessions")
    if sessions is not None and (
        not isinstance(sessions, list) or not all(isinstance(s, str) and s for s in sessions)
    ):
        raise TokenFileError(f"{where}: 'sessions' must be a list of session ids")
    logs = table.get("logs", True)
    if not isinstance(logs, bool):
        raise TokenFileError(f"{where}: 'logs' must be true or false")
    expires = table.get("expires")
    if expires is not None:
        if not isinstance(expires, datetime.datetime):
            raise TokenFileError(f"{where}: 'expires' must be a date-time")
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=datetime.UTC)
    return TokenEntry(
        name=name.strip(),
        sha256=digest.lower(),
        role=role,
        sessions=frozenset(sessions) if sessions is not None else None,
        logs=logs,
        expires=expires,
    )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class TokenStore:
    """The tokens in force, from a file (or none), reloadable while connections stay open.

    Connections admitted under a token keep what they were admitted with; a reload
    only changes who is admitted from then on.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self.path = path
        self.clock = clock
        self.entries: tuple[TokenEntry, ...] = ()
        self.loads = 0
        self.load_failures = 0
        self.last_error: str | None = None
        if path is not None:
            self.entries = self._read()
            self.loads = 1

    def _read(self) -> tuple[TokenEntry, ...]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            raise TokenFileError(f"{self.path}: {error.strerror or error}") from None
        try:
            return parse_token_file(text)
        except TokenFileError as error:
            raise TokenFileError(f"{self.path}: {error}") from None

    def reload(self) -> bool:
        """Read the file again; on failure keep the tokens in force. True if it was read."""
        if self.path is None:
            return False
        try:
            self.entries = self._read()
        except TokenFileError as error:
            self.load_failures += 1
            self.last_error = str(error)
            log.error("token file not reloaded, previous tokens stay in force: %s", error)
            return False
        self.loads += 1
        self.last_error = None
        log.info("token file reloaded: %d token(s)", len(self.entries))
        return True

    def lookup(self, token: str) -> TokenEntry | None:
        """The unexpired entry whose hash ``token`` has, else None.

        Every entry is compared, each in constant time, so the time taken depends only
        on how many entries there are.
        """
        digest = hash_token(token)
        found: TokenEntry | None = None
        for entry in self.entries:
            if constant_time_equal(digest, entry.sha256) and found is None:
                found = entry
        if found is None or found.expired(self.clock()):
            return None
        return found

    def statistics(self) -> dict[str, Any]:
        return {
            "tokens": len(self.entries),
            "loads": self.loads,
            "load_failures": self.load_failures,
        }
