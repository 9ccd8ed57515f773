"""What the cluster keeps in Redis, and how it reads back: pure, no I/O.

* ``bridge:instance:<id>`` — a string (JSON) per live instance, written with a
  lease (``PX``) that each heartbeat renews: an instance that stops beating drops
  out when its lease runs out, with nobody having to notice it died.
* ``bridge:sessions`` — one hash, session id -> JSON entry written by its owner,
  so a listing is one ``HGETALL`` however many instances there are.
* ``bridge:conns:<session>`` and ``bridge:window:connections:<session>|<address>``
  — the connections admitted to a session cluster-wide (see :mod:`.admission`).

An entry whose owner has no lease is reported ``lost``: the verdict is taken when
the directory is read, so it holds the moment the lease expires. An owner that
stops cleanly does not leave that to its lease: it marks its entries ``stopped``
and deletes its lease as it goes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SESSIONS_KEY",
    "DirectoryEntry",
    "InstanceEntry",
    "instance_key",
    "owner_of",
]

PREFIX = "bridge"
SESSIONS_KEY = f"{PREFIX}:sessions"
LOST = "lost"
STOPPED = "stopped"


def instance_key(instance_id: str) -> str:
    return f"{PREFIX}:instance:{instance_id}"


def owner_of(session_id: str) -> str | None:
    """The instance a cluster session id names (``<instance>-<hex>``), else None."""
    owner, dash, rest = session_id.partition("-")
    return owner if dash and owner and rest else None


@dataclass(frozen=True, slots=True)
class InstanceEntry:
    """One instance as it advertises itself: where it is, what it hosts, how busy it is."""

    instance_id: str
    url: str
    device_types: tuple[str, ...]
    sessions: int
    saturated: bool = False
    # A fresh token per process start: what it held before a crash is told apart from now.
    boot: str = ""

    def encode(self) -> str:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "url": self.url,
                "device_types": list(self.device_types),
                "sessions": self.sessions,
                "saturated": self.saturated,
                "boot": self.boot,
            }
        )

    @classmethod
    def decode(cls, text: str) -> InstanceEntry:
        data = json.loads(text)
        return cls(
            instance_id=str(data["instance_id"]),
            url=str(data["url"]),
            device_types=tuple(str(t) for t in data.get("device_types", ())),
            sessions=int(data.get("sessions", 0)),
            saturated=bool(data.get("saturated", False)),
            boot=str(data.get("boot", "")),
        )


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One session as its owner published it: the owner and the views it answers with.

    ``list_item`` and ``info`` are the owner's own answers to the listing and to
    ``GET /api/sessions/<id>``, so every instance answers in the same shape."""

    session_id: str
    owner: str
    url: str
    device_type: str
    created_at: float
    state: str
    list_item: Mapping[str, Any]
    info: Mapping[str, Any]

    def encode(self) -> str:
        return json.dumps(
            {
                "owner": self.owner,
                "url": self.url,
                "device_type": self.device_type,
                "created_at": self.created_at,
                "state": self.state,
                "list_item": self.list_item,
                "info": self.info,
            }
        )

    @classmethod
    def decode(cls, session_id: str, text: str) -> DirectoryEntry:
        data = json.loads(text)
        return cls(
            session_id=session_id,
            owner=str(data["owner"]),
            url=str(data["url"]),
            device_type=str(data["device_type"]),
            created_at=float(data["created_at"]),
            state=str(data["state"]),
            list_item=dict(data["list_item"]),
            info=dict(data["info"]),
        )

    def as_lost(self) -> DirectoryEntry:
        """This entry as the others answer once its owner's lease has expired."""
        return self._offline(LOST, f"instance {self.owner} stopped answering")

    def as_stopped(self) -> DirectoryEntry:
        """This entry as its owner leaves it when it stops cleanly: offline at once,
        not only when the lease would have run out."""
        return self._offline(STOPPED, f"instance {self.owner} stopped")

    @property
    def reason(self) -> str | None:
        """Why the session is offline (``lost``, ``stopped``), else None."""
        reason = self.info.get("reason")
        return str(reason) if reason is not None else None

    def _offline(self, state: str, reason: str) -> DirectoryEntry:
        offline = {"state": state, "status": "offline", "reason": reason}
        return DirectoryEntry(
            self.session_id,
            self.owner,
            self.url,
            self.device_type,
            self.created_at,
            state,
            {**self.list_item, **offline},
            {**self.info, **offline},
        )


def read_directory(raw: Mapping[str, str], live_owners: set[str]) -> dict[str, DirectoryEntry]:
    """The directory's entries by id, those of owners without a lease marked lost (unless
    their owner marked them stopped as it left); an entry that does not decode is left out
    (it is rewritten by its owner's next beat)."""
    entries: dict[str, DirectoryEntry] = {}
    for session_id, text in raw.items():
        try:
            entry = DirectoryEntry.decode(session_id, text)
        except (ValueError, KeyError, TypeError):
            continue
        offline = entry.owner not in live_owners and entry.state != STOPPED
        entries[session_id] = entry.as_lost() if offline else entry
    return entries
