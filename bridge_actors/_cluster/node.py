"""One instance's membership of the cluster: its lease, its heartbeat, its view of the directory.

The node is an actor in the server's nursery. Each heartbeat renews the
instance's lease and rewrites the entries of the sessions it owns; readers ask it
for the directory and get either the answer or :class:`RedisUnavailable`, never a
hang: every Redis call has a deadline, because a slow Redis must not make a
listing slow. When Redis goes away the node keeps beating into the void with a
doubling backoff and is back on the first beat that lands, without a restart.

An instance that stops cleanly (its server is shut down, or the node cancelled)
does not leave the others to wait out its lease: within one short, shielded
deadline it marks its sessions ``stopped`` and deletes its lease, so every other
instance answers for them at once. A crash still leaves it to the lease.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import coredis
import coredis.exceptions
import trio

from .directory import (
    PREFIX,
    SESSIONS_KEY,
    DirectoryEntry,
    InstanceEntry,
    instance_key,
    read_directory,
)

log = logging.getLogger("bridge_actors.cluster")

__all__ = ["ClusterNode", "ClusterStatistics", "RedisUnavailable"]

INSTANCES_KEY = f"{PREFIX}:instances"
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0

_REDIS_FAILURES = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


_POOL_CLOSED = "Connection pool is not initialized or has exited"


def _is_redis_failure(exc: BaseException, *, client_retired: bool = False) -> bool:
    """Redis failed (its client's task group may wrap the errors), as opposed to a
    cancellation or our own bug, which must go on up.

    ``client_retired``: the call's client was given up while the call ran (Redis was
    lost), and a call on a client whose pool has closed fails with coredis's
    RuntimeError ("Connection pool is not initialized or has exited"); that too is
    Redis being away. Any other RuntimeError is still ours.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(
            _is_redis_failure(inner, client_retired=client_retired) for inner in exc.exceptions
        )
    return isinstance(exc, _REDIS_FAILURES) or (
        client_retired and isinstance(exc, RuntimeError) and _POOL_CLOSED in str(exc)
    )


class RedisUnavailable(Exception):
    """Redis did not answer in time, or not at all; the message says which."""


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    instance_id: str
    connected: bool
    heartbeats: int
    failed_heartbeats: int
    reconnects: int
    published_sessions: int


class ClusterNode:
    """This instance in the cluster on ``redis_url``.

    ``local_entries`` lists the sessions this instance owns as directory entries;
    ``device_types`` says what it can host. Both are asked at every heartbeat.
    """

    def __init__(
        self,
        redis_url: str,
        instance_id: str,
        *,
        lease: float,
        heartbeat: float,
        local_entries: Callable[[], list[DirectoryEntry]],
        device_types: Callable[[], Awaitable[tuple[str, ...]]],
        saturated: Callable[[], bool] = lambda: False,
    ) -> None:
        self.redis_url = redis_url
        self.instance_id = instance_id
        self.lease = lease
        self.heartbeat = heartbeat
        # A Redis call may take at most this: a reader waits no longer than a beat.
        self.timeout = min(1.0, heartbeat)
        # This process's start, in the lease: what a crashed run held is told from ours.
        self.boot = secrets.token_hex(6)
        self.url = ""
        self._local_entries = local_entries
        self._device_types = device_types
        self._saturated = saturated
        self._client: coredis.Redis | None = None
        self._published: set[str] = set()
        self._adopted = False  # entries this instance left before a restart are swept once
        self._left = False  # stopped cleanly: no beat may bring the lease back
        self._beat_lock = trio.Lock()
        self._scripts: dict[str, Any] = {}
        self.connected = False
        self.heartbeats = 0
        self.failed_heartbeats = 0
        self.reconnects = 0

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Beat until cancelled, then leave; started once the first attempt (landed or not)
        is over."""
        try:
            await self._beat_on(task_status)
        finally:
            await self._leave()

    async def _beat_on(self, task_status) -> None:
        started = False
        backoff = BACKOFF_INITIAL
        while True:
            client = coredis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                connect_timeout=self.timeout,
                stream_timeout=self.timeout,
            )
            try:
                async with client:
                    self._client = client
                    try:
                        while True:
                            await self.beat()
                            backoff = BACKOFF_INITIAL
                            if not started:
                                started = True
                                task_status.started()
                            await trio.sleep(self.heartbeat)
                    finally:
                        # Before the pool closes, which other tasks see happen: a call
                        # started on a closing pool fails with coredis's RuntimeError,
                        # not a Redis failure, and would reach its caller as our bug.
                        self._client = None
            except BaseException as exc:
                if not _is_redis_failure(exc):
                    raise
                self._client = None
                if self.connected:
                    log.warning("lost Redis at %s: %r; retrying with backoff", self.redis_url, exc)
                    self.reconnects += 1
                self.connected = False
                self.failed_heartbeats += 1
                if not started:
                    started = True
                    log.warning("Redis at %s is not answering: %r", self.redis_url, exc)
                    task_status.started()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                self._client = None

    async def beat(self) -> None:
        """Renew the lease and rewrite this instance's entries (also right after a change)."""
        async with self._beat_lock:
            if self._left:
                raise RedisUnavailable(f"instance {self.instance_id} has left the cluster")
            client = self._require_client()
            entries = {entry.session_id: entry for entry in self._local_entries()}
            me = InstanceEntry(
                self.instance_id,
                self.url,
                await self._device_types(),
                len(entries),
                self._saturated(),
                self.boot,
            )
            with trio.fail_after(self.timeout):
                if not self._adopted:
                    await self._sweep_left_behind(client, entries)
                await client.set(
                    instance_key(self.instance_id), me.encode(), px=round(self.lease * 1000)
                )
                await client.sadd(INSTANCES_KEY, [self.instance_id])
                if entries:
                    await client.hset(
                        SESSIONS_KEY, {sid: entry.encode() for sid, entry in entries.items()}
                    )
                gone = self._published - entries.keys()
                if gone:
                    await client.hdel(SESSIONS_KEY, list(gone))
            self._published = set(entries)
            if not self.connected:
                log.info("instance %s joined the cluster on %s", self.instance_id, self.redis_url)
            self.connected = True
            self.heartbeats += 1

    async def _leave(self) -> None:
        """Stopping cleanly: mark this instance's sessions stopped and drop its lease now,
        shielded from the cancellation that stops us and bounded by the Redis deadline.

        On a client of its own: the beating one went with the cancellation."""
        self._left = True
        if not self.connected:
            return
        entries: list[DirectoryEntry] = []
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeout) as bound:
            try:
                client = coredis.Redis.from_url(
                    self.redis_url,
                    decode_responses=True,
                    connect_timeout=self.timeout,
                    stream_timeout=self.timeout,
                )
                async with client, self._beat_lock:
                    entries = [entry.as_stopped() for entry in self._local_entries()]
                    if entries:
                        await client.hset(
                            SESSIONS_KEY, {entry.session_id: entry.encode() for entry in entries}
                        )
                    await client.delete([instance_key(self.instance_id)])
                    await client.srem(INSTANCES_KEY, [self.instance_id])
            except BaseException as exc:
                if not _is_redis_failure(exc):
                    raise
                log.warning("could not leave the cluster cleanly: %r; the lease will expire", exc)
                return
        if bound.cancelled_caught:
            log.warning("Redis did not answer as this instance left; the lease will expire")
            return
        self.connected = False
        log.info(
            "instance %s left the cluster (%d sessions stopped)", self.instance_id, len(entries)
        )

    async def publish(self) -> None:
        """A heartbeat now (after a create), or RedisUnavailable: the next beat lists it then."""
        client = self._client
        try:
            await self.beat()
        except BaseException as exc:
            if not _is_redis_failure(exc, client_retired=client is not self._client):
                raise
            raise RedisUnavailable(f"Redis at {self.redis_url} failed: {exc!r}") from exc

    async def _sweep_left_behind(self, client: coredis.Redis, entries: dict) -> None:
        """After a restart: forget entries this instance owned that it did not re-adopt."""
        raw = await client.hgetall(SESSIONS_KEY)
        stale = [
            sid
            for sid, text in raw.items()
            if sid not in entries and _entry_owner(sid, text) == self.instance_id
        ]
        if stale:
            await client.hdel(SESSIONS_KEY, stale)
        self._adopted = True

    # -- reading -----------------------------------------------------------------------------

    async def directory(self) -> dict[str, DirectoryEntry]:
        """Every session of the cluster by id; those whose owner has no lease are ``lost``."""
        async with self._reading() as client:
            raw = await client.hgetall(SESSIONS_KEY)
            live = {entry.instance_id for entry in await self._instances(client)}
        return read_directory(raw, live)

    async def entry(self, session_id: str) -> DirectoryEntry | None:
        """One session's entry, or None if the directory does not know it."""
        async with self._reading() as client:
            text = await client.hget(SESSIONS_KEY, session_id)
            if text is None:
                return None
            live = {entry.instance_id for entry in await self._instances(client)}
        return read_directory({session_id: text}, live).get(session_id)

    async def instances(self) -> list[InstanceEntry]:
        """The instances holding a lease now."""
        async with self._reading() as client:
            return await self._instances(client)

    async def forget(self, session_id: str) -> None:
        """Drop a deleted session's entry now rather than at the next beat."""
        async with self._reading() as client:
            await client.hdel(SESSIONS_KEY, [session_id])
        self._published.discard(session_id)

    async def evaluate(
        self, script: str, *, keys: list[str], args: list, within: float | None = None
    ) -> list:
        """Run a Lua script (cached by its digest after the first call) within the deadline
        (``within`` seconds, or the node's own)."""
        async with self._reading(within) as client:
            registered = self._scripts.get(script)
            if registered is None:
                registered = self._scripts[script] = client.register_script(script)
            return await registered(keys=keys, args=args, client=client)

    async def _instances(self, client: coredis.Redis) -> list[InstanceEntry]:
        ids = sorted(await client.smembers(INSTANCES_KEY))
        if not ids:
            return []
        texts = await client.mget([instance_key(i) for i in ids])
        live = []
        for text in texts:
            if text is None:
                continue
            try:
                live.append(InstanceEntry.decode(text))
            except (ValueError, KeyError, TypeError):
                continue
        return live

    @asynccontextmanager
    async def _reading(self, within: float | None = None) -> AsyncIterator[coredis.Redis]:
        """A bounded Redis call: the client, or RedisUnavailable if it is away, slow or fails."""
        client = self._require_client()
        try:
            with trio.fail_after(self.timeout if within is None else within):
                yield client
        except trio.TooSlowError:
            raise RedisUnavailable(f"Redis at {self.redis_url} did not answer in time") from None
        except BaseException as exc:
            if not _is_redis_failure(exc, client_retired=client is not self._client):
                raise
            raise RedisUnavailable(f"Redis at {self.redis_url} failed: {exc!r}") from exc

    @property
    def reachable(self) -> bool:
        """A client is connected (a call may still be slow); False while Redis is away."""
        return self._client is not None

    def _require_client(self) -> coredis.Redis:
        if self._client is None:
            raise RedisUnavailable(f"Redis at {self.redis_url} is not connected")
        return self._client

    def statistics(self) -> ClusterStatistics:
        return ClusterStatistics(
            instance_id=self.instance_id,
            connected=self.connected,
            heartbeats=self.heartbeats,
            failed_heartbeats=self.failed_heartbeats,
            reconnects=self.reconnects,
            published_sessions=len(self._published),
        )


def _entry_owner(session_id: str, text: str) -> str | None:
    try:
        return DirectoryEntry.decode(session_id, text).owner
    except (ValueError, KeyError, TypeError):
        return None
