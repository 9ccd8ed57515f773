"""Sessions: one device each, owning everything opened on it.

A Session is an actor in the registry's nursery with its own cancel scope.
Deleting it cuts the lifeline of every connection and viewer opened on it
(they raise ``SessionNotFound(deleted=True)``), stops its capture and cancels
its log stream; nothing it opened can outlive it.

A stored session the registry cannot run is never dropped: a session whose
device could not be restored, whose backend is not enabled, or whose device
could not be deleted is *held* (:class:`HeldSession`), listed with its state,
kept in the store, and (for a device that did not restore) tried again with
backoff. Only a delete that succeeded, or one that was forced, forgets it.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import outcome
import trio

from .._controls import ControlEvent
from .._device import Configurations, DeviceBackend, DeviceInfo
from .._errors import BadInput, BridgeError, DeleteFailed, DeviceError, SessionNotFound
from .lifeline import Lifeline
from .logstream import LogStream
from .persist import SessionStore
from .supervision import Backoff

log = logging.getLogger("bridge_actors.sessions")

HEALTH_CHECK_INTERVAL = 10.0
HEALTH_CHECK_TIMEOUT = 5.0
# The first check runs inside the create request, whose answer is due within 10 s.
FIRST_CHECK_TIMEOUT = 1.0
DEVICE_CALL_TIMEOUT = 30.0  # one restore or delete of a device
RESTORE_RETRY_INITIAL = 5.0
RESTORE_RETRY_MAX = 300.0

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what a URL path segment carries as it is


# --- stored records (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredSession:
    session_id: str
    created_at: float | None
    device: DeviceInfo


def session_from_record(record: Any) -> StoredSession:
    """A stored session record, every value checked; raises BadInput naming the field."""
    if not isinstance(record, Mapping):
        raise BadInput("record", f"must be an object, not {type(record).__name__}")
    session_id = record.get("session_id")
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise BadInput(
            "session_id", f"must be 1 to 128 letters, digits, '_' or '-', not {session_id!r:.80}"
        )
    created_at = record.get("created_at")
    if created_at is not None and (
        isinstance(created_at, bool)
        or not isinstance(created_at, int | float)
        or not math.isfinite(created_at)
        or created_at < 0
    ):
        raise BadInput("created_at", f"must be epoch seconds, not {created_at!r:.80}")
    device = DeviceInfo.from_record(record.get("device"))
    return StoredSession(session_id, None if created_at is None else float(created_at), device)


def session_record_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with a stored record (for ``SessionStore(check=...)``), or None."""
    try:
        session_from_record(record)
    except BadInput as problem:
        return str(problem)
    return None


@dataclass(eq=False, slots=True)
class Connection:
    """One admitted client connection (a WebSocket, or an in-process client)."""

    id: int
    session_id: str
    kind: str
    client_ip: str
    opened_at: float
    lifeline: Lifeline


class Session:
    def __init__(
        self,
        session_id: str,
        device: DeviceInfo,
        backend: DeviceBackend,
        *,
        created_at: float | None = None,
        connection_ids: Iterator[int] | None = None,
    ) -> None:
        self.session_id = session_id
        # Ids unique within the registry that made the session (each bridge has its own).
        self._connection_ids = connection_ids if connection_ids is not None else itertools.count(1)
        self.device = device
        self.backend = backend
        self.created_at = time.time() if created_at is None else created_at
        # What the backend last said about the device, refreshed by the session's own
        # task (``_watch_device``): the views read these and never call the backend,
        # so a listing of many sessions costs no device call and cannot hang on one.
        self.accessible = False
        self.state = "Unknown"
        self.checked_at: float | None = None
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.logs: LogStream | None = None
        self._lifelines: set[Lifeline] = set()
        self.connections: dict[int, Connection] = {}
        self.total_connections = 0
        self.first_connection: float | None = None
        self.last_connection: float | None = None
        self.applied_input_seq = 0
        self._next_input_seq = 0

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.logs = LogStream(self.backend, self.device, nursery)
                    # Known before the session is shown to anyone: the answer to the
                    # create request already says whether the device is still booting.
                    with trio.move_on_after(FIRST_CHECK_TIMEOUT):
                        await self.refresh()  # if it takes longer: "Unknown" until the next
                    nursery.start_soon(self._watch_device)
                    task_status.started(self)
                    await trio.sleep_forever()
        finally:
            self.done.set()

    async def refresh(self) -> None:
        """Ask the backend how the device is, within ``HEALTH_CHECK_TIMEOUT``.

        A failing or hanging backend makes the device offline, never the session
        crash: the answer is only ever shown, and the next round asks again.
        """
        with trio.move_on_after(HEALTH_CHECK_TIMEOUT) as waited:
            try:
                state = await self.backend.device_state(self.device)
                accessible = await self.backend.is_accessible(self.device)
            except Exception as exc:
                log.warning("health check of %s failed: %r", self.session_id, exc)
                state, accessible = "Unknown", False
        if waited.cancelled_caught:
            log.warning("health check of %s took over %gs", self.session_id, HEALTH_CHECK_TIMEOUT)
            state, accessible = "Unknown", False
        self.state, self.accessible = state, bool(accessible)
        self.checked_at = time.time()

    async def _watch_device(self) -> None:
        while True:
            await trio.sleep(HEALTH_CHECK_INTERVAL)
            await self.refresh()

    def adopt(self, lifeline: Lifeline) -> None:
        if self.scope.cancel_called:
            raise SessionNotFound(self.session_id, deleted=True)
        self._lifelines.add(lifeline)

    def release(self, lifeline: Lifeline) -> None:
        self._lifelines.discard(lifeline)

    def end(self) -> None:
        """Cut everything opened on this session and cancel its own tasks."""
        for lifeline in list(self._lifelines):
            lifeline.cut(SessionNotFound(self.session_id, deleted=True))
        self.scope.cancel()

    # -- connections -------------------------------------------------------------------------

    def open_connection(self, kind: str, client_ip: str) -> Connection:
        now = time.time()
        connection = Connection(
            next(self._connection_ids), self.session_id, kind, client_ip, now, Lifeline()
        )
        self.adopt(connection.lifeline)
        self.connections[connection.id] = connection
        self.total_connections += 1
        if self.first_connection is None:
            self.first_connection = now
        self.last_connection = now
        return connection

    def close_connection(self, connection: Connection) -> None:
        self.connections.pop(connection.id, None)
        self.release(connection.lifeline)

    def next_input_seq(self) -> int:
        self._next_input_seq += 1
        return self._next_input_seq

    def input_applied(self, input_seq: int) -> None:
        self.applied_input_seq = max(self.applied_input_seq, input_seq)

    def to_record(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "device": self.device.to_record(),
        }


UNRESTORED = "Unrestored"  # its device did not come back yet; tried again with backoff
BACKEND_DISABLED = "BackendDisabled"  # its backend is not enabled in this server
DELETE_FAILED = "DeleteFailed"  # deleted, but its device could not be deleted


@dataclass(eq=False, slots=True)
class HeldSession:
    """A stored session that is not running, kept (in memory and in the store) until
    it runs again or is deleted. ``state`` says why, ``reason`` what went wrong."""

    record: dict[str, Any]
    session_id: str
    device: DeviceInfo
    created_at: float
    state: str
    reason: str
    attempts: int = 0
    next_attempt_at: float | None = None  # trio time of the next restore attempt
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def statistics(self) -> HeldStatistics:
        next_in = None
        if self.next_attempt_at is not None and self.state == UNRESTORED:
            next_in = max(0.0, self.next_attempt_at - trio.current_time())
        return HeldStatistics(
            session_id=self.session_id,
            udid=self.device.udid,
            backend=self.device.backend,
            state=self.state,
            reason=self.reason,
            attempts=self.attempts,
            next_attempt_in=next_in,
        )


@dataclass(frozen=True, slots=True)
class HeldStatistics:
    session_id: str
    udid: str
    backend: str
    state: str
    reason: str
    attempts: int
    next_attempt_in: float | None


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    sessions: int
    created: int
    deleted: int
    restored: int
    recovered: int
    unrestored: int
    """Held sessions that are not running: unrestored, or their backend is not enabled."""
    delete_failed: int
    """Held sessions whose device could not be deleted; kept until it is, or forced."""
    delete_failures: int
    load_problem: str | None
    held: tuple[HeldStatistics, ...]


class SessionRegistry:
    """The actor owning every session; persists them after each change."""

    def __init__(
        self,
        backends: dict[str, DeviceBackend],
        store: SessionStore,
        *,
        on_session_end=None,
        restore_backoff: Backoff | None = None,
        id_prefix: str = "",
    ) -> None:
        self._backends = backends
        # In a cluster the owner's name leads every id, so a proxy routes by id alone.
        self._id_prefix = id_prefix
        self._store = store
        self._on_session_end = on_session_end
        self._restore_backoff = restore_backoff or Backoff(RESTORE_RETRY_INITIAL, RESTORE_RETRY_MAX)
        self._sessions: dict[str, Session] = {}
        self._held: dict[str, HeldSession] = {}
        self._nursery: trio.Nursery | None = None
        self._connection_ids = itertools.count(1)  # shared by this registry's sessions
        self.created = 0
        self.deleted = 0
        self.delete_failures = 0
        self.restored = 0
        self.recovered = 0
        self.load_problem: str | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._restore()
            task_status.started(self)
            await trio.sleep_forever()

    # -- queries -----------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def held(self) -> list[HeldSession]:
        """Stored sessions that are not running (see :class:`HeldSession`)."""
        return list(self._held.values())

    def __len__(self) -> int:
        return len(self._sessions)

    async def configurations(self) -> Configurations:
        types: list[str] = []
        versions: list[str] = []
        for backend in self._backends.values():
            config = await backend.configurations()
            types.extend(t for t in config.device_types if t not in types)
            versions.extend(v for v in config.ios_versions if v not in versions)
        return Configurations(tuple(types), tuple(versions))

    async def _backend_for(self, device_type: str) -> DeviceBackend:
        known: list[str] = []
        for backend in self._backends.values():
            config = await backend.configurations()
            if device_type in config.device_types:
                return backend
            known.extend(config.device_types)
        raise BadInput(
            "device_type", f"unknown device type {device_type!r}; known: {', '.join(known)}"
        )

    # -- changes -----------------------------------------------------------------------------

    async def create(self, device_type: str, ios_version: str) -> Session:
        if not isinstance(device_type, str) or not device_type.strip():
            raise BadInput("device_type", "is required")
        if not isinstance(ios_version, str) or not ios_version.strip():
            raise BadInput("ios_version", "is required")
        return await self._detached(self._create, device_type, ios_version)

    async def _create(self, device_type: str, ios_version: str) -> Session:
        backend = await self._backend_for(device_type)
        device = await backend.create_device(device_type, ios_version)
        session = await self._start(self._id_prefix + secrets.token_hex(16), device, backend)
        self.created += 1
        log.info("created session %s (%s, %s)", session.session_id, device_type, ios_version)
        await self.save()
        return session

    async def _detached(self, work, *args):
        """Run ``work`` in the registry's own nursery and wait for its result.

        Creating or deleting a device must finish once begun: a caller that gives
        up (an HTTP client that disconnects) stops waiting, never the work, so no
        device is left running without a session, nor a session without a device.
        """
        assert self._nursery is not None, "SessionRegistry is not running"
        finished = trio.Event()
        result: outcome.Outcome | None = None

        async def run() -> None:
            nonlocal result
            try:
                result = outcome.Value(await work(*args))
            except Exception as exc:
                result = outcome.Error(exc)
            finally:
                finished.set()

        self._nursery.start_soon(run)
        await finished.wait()
        if result is None:
            raise BridgeError("the bridge is shutting down")
        return result.unwrap()

    async def _start(
        self,
        session_id: str,
        device: DeviceInfo,
        backend: DeviceBackend,
        created_at: float | None = None,
    ) -> Session:
        assert self._nursery is not None, "SessionRegistry is not running"
        session = Session(
            session_id, device, backend, created_at=created_at, connection_ids=self._connection_ids
        )
        await self._nursery.start(session.run)
        self._sessions[session_id] = session  # only once running: its log stream exists
        return session

    async def delete(self, session_id: str, *, force: bool = False) -> None:
        """Delete a session and its device; raise DeleteFailed (and keep the session,
        held, in the store) if the device cannot be deleted, unless ``force``."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            held = self._held.get(session_id)
            if held is None:
                raise SessionNotFound(session_id)
            await self._detached(self._delete_held, held, force)
            return
        session.end()
        await self._detached(self._tear_down, session, force)

    async def _tear_down(self, session: Session, force: bool) -> None:
        if self._on_session_end is not None:
            await self._on_session_end(session)
        await session.done.wait()
        problem = await self._delete_device(session.backend, session.device)
        if problem is not None and not force:
            held = HeldSession(
                record=session.to_record(),
                session_id=session.session_id,
                device=session.device,
                created_at=session.created_at,
                state=DELETE_FAILED,
                reason=problem,
            )
            self._held[session.session_id] = held
            await self._keep_undeleted(held)
            raise DeleteFailed({held.session_id: problem})
        await self._forget(session.session_id, problem)

    async def _delete_held(self, held: HeldSession, force: bool) -> None:
        held.scope.cancel()  # no more restore attempts: it is to go
        backend = self._backends.get(held.device.backend)
        if backend is None:
            problem = f"its backend {held.device.backend!r} is not enabled in this server"
        else:
            problem = await self._delete_device(backend, held.device)
        if problem is not None and not force:
            held.state, held.reason, held.next_attempt_at = DELETE_FAILED, problem, None
            await self._keep_undeleted(held)
            raise DeleteFailed({held.session_id: problem})
        self._held.pop(held.session_id, None)
        await self._forget(held.session_id, problem)

    async def _delete_device(self, backend: DeviceBackend, device: DeviceInfo) -> str | None:
        """Delete ``device``; None once it is gone, else what went wrong."""
        try:
            with trio.fail_after(DEVICE_CALL_TIMEOUT):
                await backend.delete_device(device)
        except trio.TooSlowError:
            return f"deleting device {device.udid} took over {DEVICE_CALL_TIMEOUT:g}s"
        except (DeviceError, OSError) as exc:
            return f"deleting device {device.udid} failed: {exc}"
        return None

    async def _keep_undeleted(self, held: HeldSession) -> None:
        self.delete_failures += 1
        log.warning("session %s is kept, not deleted: %s", held.session_id, held.reason)
        await self.save()

    async def _forget(self, session_id: str, problem: str | None) -> None:
        if problem is not None:
            log.warning("session %s forgotten, as forced, although %s", session_id, problem)
        self.deleted += 1
        log.info("deleted session %s", session_id)
        await self.save()

    async def delete_all(self, *, force: bool = False) -> int:
        """Delete every session, held ones too; raise DeleteFailed naming those kept."""
        count = 0
        failures: dict[str, str] = {}
        for session_id in [*self._sessions, *self._held]:
            try:
                await self.delete(session_id, force=force)
                count += 1
            except SessionNotFound:
                pass
            except DeleteFailed as failure:
                failures.update(failure.failures)
        if failures:
            raise DeleteFailed(failures, deleted=count)
        return count

    async def recover_orphaned(self) -> int:
        known = frozenset(
            [s.device.udid for s in self._sessions.values()]
            + [h.device.udid for h in self._held.values()]
        )
        count = 0
        for backend in self._backends.values():
            for device in await backend.list_orphans(known):
                await self._start(secrets.token_hex(16), device, backend)
                count += 1
        self.recovered += count
        if count:
            await self.save()
        return count

    async def control(self, session_id: str, event: ControlEvent) -> int:
        session = self.get(session_id)
        input_seq = session.next_input_seq()
        await session.backend.apply_control(session.device, event, input_seq)
        session.input_applied(input_seq)
        return input_seq

    # -- persistence -------------------------------------------------------------------------

    async def save(self) -> None:
        records = [s.to_record() for s in self._sessions.values()]
        records += [h.record for h in self._held.values()]
        try:
            await self._store.save(records)
        except OSError as exc:
            log.error("could not save sessions: %r", exc)

    async def _restore(self) -> None:
        try:
            result = await self._store.load()
        except IsADirectoryError:
            raise BridgeError(
                f"the session file {self._store.path} is a directory, not a file: "
                "move it away, or choose another state directory (--state-dir)"
            ) from None
        except OSError as exc:
            raise BridgeError(
                f"cannot read the session file {self._store.path}: {exc.strerror or exc}"
            ) from exc
        self.load_problem = result.problem
        if result.problem:
            log.error("session file: %s (kept as %s)", result.problem, result.quarantined)
        for record in result.records:
            # The store refused every record this cannot read (SessionStore(check=...)).
            stored = session_from_record(record)
            held = HeldSession(
                record=record,
                session_id=stored.session_id,
                device=stored.device,
                created_at=time.time() if stored.created_at is None else stored.created_at,
                state=UNRESTORED,
                reason="",
            )
            if self._backends.get(stored.device.backend) is None:
                held.state = BACKEND_DISABLED
                held.reason = f"backend {stored.device.backend!r} is not enabled in this server"
                log.warning("session %s is kept for later: %s", held.session_id, held.reason)
                self._held[held.session_id] = held
                continue
            if not await self._try_restore(held):
                self._held[held.session_id] = held
                self._start_retrying(held)
        if self.restored:
            log.info("restored %d session(s)", self.restored)

    async def _try_restore(self, held: HeldSession) -> bool:
        """One attempt to bring a held session back; True once it runs."""
        backend = self._backends[held.device.backend]
        held.attempts += 1
        try:
            with trio.fail_after(DEVICE_CALL_TIMEOUT):
                alive = await backend.restore_device(held.device)
        except trio.TooSlowError:
            held.reason = f"restoring its device took over {DEVICE_CALL_TIMEOUT:g}s"
        except (DeviceError, OSError) as exc:
            held.reason = f"restoring its device failed: {exc}"
        else:
            if alive:
                await self._start(held.session_id, held.device, backend, held.created_at)
                self.restored += 1
                return True
            held.reason = f"device {held.device.udid} is gone"
        log.warning(
            "session %s not restored (attempt %d): %s; kept, and tried again",
            held.session_id,
            held.attempts,
            held.reason,
        )
        return False

    def _start_retrying(self, held: HeldSession) -> None:
        assert self._nursery is not None, "SessionRegistry is not running"
        self._nursery.start_soon(self._keep_restoring, held)

    async def _keep_restoring(self, held: HeldSession) -> None:
        """Try again with backoff until the session runs or is deleted (``held.scope``)."""
        with held.scope:
            while True:
                delay = self._restore_backoff.delay(held.attempts - 1)
                held.next_attempt_at = trio.current_time() + delay
                await trio.sleep(delay)
                if await self._try_restore(held):
                    self._held.pop(held.session_id, None)
                    log.info("restored session %s (attempt %d)", held.session_id, held.attempts)
                    await self.save()
                    return

    def statistics(self) -> RegistryStatistics:
        held = tuple(h.statistics() for h in self._held.values())
        delete_failed = sum(1 for h in held if h.state == DELETE_FAILED)
        return RegistryStatistics(
            sessions=len(self._sessions),
            created=self.created,
            deleted=self.deleted,
            restored=self.restored,
            recovered=self.recovered,
            unrestored=len(held) - delete_failed,
            delete_failed=delete_failed,
            delete_failures=self.delete_failures,
            load_problem=self.load_problem,
            held=held,
        )
