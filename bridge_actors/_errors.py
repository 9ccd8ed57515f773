"""The plain exceptions the public API raises.

Every public call raises one of these (never a nested exception group), so an
embedding app can write ``except SessionNotFound:`` and the server can map each
class to one HTTP status or WebSocket close code.
"""

from __future__ import annotations

from collections.abc import Mapping


class BridgeError(Exception):
    """Base class of every error bridge_actors raises on purpose."""


class InvalidSettings(BridgeError):
    """A configuration value is wrong; the message names the variable and the accepted range."""


class BadInput(BridgeError, ValueError):
    """A request carried a value we cannot use; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SessionNotFound(BridgeError, LookupError):
    """No session has this id (or it was deleted while in use)."""

    def __init__(self, session_id: str, *, deleted: bool = False) -> None:
        super().__init__(
            f"session {session_id!r} was deleted"
            if deleted
            else f"session {session_id!r} not found"
        )
        self.session_id = session_id
        self.deleted = deleted


class Refused(BridgeError):
    """A connection was not admitted. Subclasses say why; ``reason`` is a stable label."""

    reason = "refused"


class RateLimited(Refused):
    """Too many connection attempts from this address for this session within the window."""

    reason = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry_after={retry_after:.3f}")
        self.retry_after = retry_after


class SessionFull(Refused):
    """The session already has ``MAX_CONNECTIONS_PER_SESSION`` open connections."""

    reason = "session_full"

    def __init__(self, session_id: str, limit: int) -> None:
        super().__init__(f"session {session_id!r} has reached its limit of {limit} connections")
        self.session_id = session_id
        self.limit = limit


class ServerBusy(Refused):
    """The bridge-wide connection cap is reached, or memory is critical and no capture may start."""

    reason = "server_busy"


class CaptureFailed(BridgeError):
    """The device capture failed for good: it crashed more often than its restart
    intensity allows."""


class CaptureStopped(BridgeError):
    """The capture was stopped on purpose (memory warden, shutdown); the viewer may reconnect."""


class ViewerEvicted(BridgeError):
    """The viewer stayed behind the capture for longer than the eviction deadline."""


class DeviceError(BridgeError):
    """The device backend could not do what was asked (create, control, screenshot)."""


class StateDirInUse(BridgeError):
    """Another bridge holds the state directory; ``pid`` is the holder's, when known."""

    def __init__(self, message: str, *, state_dir: object, pid: int | None) -> None:
        super().__init__(message)
        self.state_dir = state_dir
        self.pid = pid


class DeleteFailed(DeviceError):
    """Sessions were not deleted because their devices could not be: each is kept
    (listed, and in the store) until a later delete succeeds or one is forced.
    ``failures`` maps each kept session's id to why; ``deleted`` counts the others."""

    def __init__(self, failures: Mapping[str, str], *, deleted: int = 0) -> None:
        self.failures = dict(failures)
        self.deleted = deleted
        if len(self.failures) == 1 and not deleted:
            [(session_id, reason)] = self.failures.items()
            message = (
                f"session {session_id!r} was not deleted: {reason}; it is kept until its "
                "device is gone: delete it again, or with ?force=true to forget it anyway"
            )
        else:
            kept = "; ".join(f"{sid!r}: {why}" for sid, why in self.failures.items())
            message = (
                f"deleted {deleted} session(s); kept {len(self.failures)} whose device could "
                f"not be deleted ({kept}): delete again, or with ?force=true to forget them"
            )
        super().__init__(message)


class ActionUnsupported(BridgeError):
    """The session's backend cannot do this device action (answered 501, naming both)."""

    def __init__(self, backend: str, action: str) -> None:
        super().__init__(f"{action}: not supported by the {backend} backend")
        self.backend = backend
        self.action = action
