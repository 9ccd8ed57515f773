"""Connection admission decided for the whole cluster, in Redis, in one Lua script.

A viewer's connection is admitted by the instance that owns its session, since
that is the only one that can serve it (another answers 4004 before any limit is
asked), so in practice one instance admits for each session. Redis is still the
source of truth, for two reasons: a restarted owner must find the window and the
open connections where it left them rather than start counting from zero; and
should two instances ever admit to one session, the count is one.

The script decides both limits at once, atomically:

* the **per-session cap**: ``bridge:conns:<session>`` is a hash of the session's
  open connections, connection id -> ``"<instance> <boot>"``. A connection is
  removed when it ends; one whose instance holds no lease any more, or holds it
  from another process start (it crashed and came back), is swept by the next
  admission to the session, so a dead instance's slots come back;
* the **per-(session, client address) window**, exact, on Redis ``TIME``, the same
  Lua functions as the cluster's creation window (:mod:`.window`).

Nothing is counted unless both pass, as in the local limiter. A call that
Redis does not answer within ``within`` raises RedisUnavailable, and the server
lets its local limiter decide instead (``bridge_actors._server.shared_admission``).
A place that may have been taken by a call that timed out, or whose release could
not reach Redis, is released again at each heartbeat until it lands, so a blip
never leaks a place.

The script reads the lease keys of the instances holding connections, keys it is
not given in ``KEYS``: fine on one Redis (or a replicated one), not on a Redis
Cluster, where the keys of one script must share a slot.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import trio

from .directory import PREFIX, instance_key
from .node import ClusterNode, RedisUnavailable
from .window import NOW_LUA, WINDOW_LUA, window_key

log = logging.getLogger("bridge_actors.cluster")

__all__ = [
    "ADMISSION_SCRIPT",
    "ClusterAdmission",
    "ClusterAdmissionStatistics",
    "Verdict",
    "connections_key",
]

ADMITTED, SESSION_FULL, RATE_LIMITED = 1, 0, -1

ADMISSION_SCRIPT = (
    NOW_LUA
    + WINDOW_LUA
    + """
-- KEYS: the session's connections (hash), the (session, address) window (sorted set).
-- ARGV: window (us), per-window limit, per-session cap, connection id, holder
-- ("<instance> <boot>" of the instance asking), the prefix of the instances' lease keys.
local holder = ARGV[5]
local alive = {[holder] = true}
local held = redis.call('HGETALL', KEYS[1])
local open, gone = 0, {}
for i = 1, #held, 2 do
    local owner = held[i + 1]
    if alive[owner] == nil then
        alive[owner] = false
        local instance, boot = string.match(owner, '^(%S+) (%S+)$')
        if instance then
            local lease = redis.call('GET', ARGV[6] .. instance)
            if lease then
                local ok, entry = pcall(cjson.decode, lease)
                alive[owner] = ok and type(entry) == 'table' and entry.boot == boot
            end
        end
    end
    if alive[owner] then
        open = open + 1
    else
        gone[#gone + 1] = held[i]
    end
end
if #gone > 0 then
    redis.call('HDEL', KEYS[1], unpack(gone))
end
if open >= tonumber(ARGV[3]) then
    return {0, open}
end
local window = tonumber(ARGV[1])
local wait = window_wait(KEYS[2], now, window, tonumber(ARGV[2]))
if wait > 0 then
    return {-1, wait}
end
window_take(KEYS[2], now, window, ARGV[4])
redis.call('HSET', KEYS[1], ARGV[4], holder)
return {1, open + 1}
"""
)

RELEASE_SCRIPT = "return redis.call('HDEL', KEYS[1], unpack(ARGV))"


def connections_key(session_id: str) -> str:
    return f"{PREFIX}:conns:{session_id}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Redis's answer for one connection: ``connection`` names its place when admitted;
    a refusal says which limit (``session_full``, or ``rate_limited`` with the wait)."""

    connection: str
    admitted: bool
    session_full: bool = False
    retry_after: float = 0.0
    open_connections: int = 0


@dataclass(frozen=True, slots=True)
class ClusterAdmissionStatistics:
    decided: int
    admitted: int
    refused_session_full: int
    refused_rate_limited: int
    unanswered: int
    pending_releases: int


class ClusterAdmission:
    """``per_session`` open connections per session and ``per_minute`` admissions per
    (session, client address) in each ``window`` seconds, over the whole cluster."""

    def __init__(
        self,
        node: ClusterNode,
        *,
        per_minute: int,
        per_session: int,
        within: float,
        window: float = 60.0,
    ) -> None:
        self.node = node
        self.per_minute = per_minute
        self.per_session = per_session
        self.within = within
        self.window = window
        self._pending: set[tuple[str, str]] = set()  # (session, connection) to release again
        self.decided = 0
        self.admitted = 0
        self.refused_session_full = 0
        self.refused_rate_limited = 0
        self.unanswered = 0

    async def decide(self, session_id: str, client_ip: str) -> Verdict:
        """Take a place for one connection, or say which limit refuses it.

        Raises RedisUnavailable when Redis does not answer within ``within``."""
        connection = secrets.token_hex(8)
        try:
            result = await self.node.evaluate(
                ADMISSION_SCRIPT,
                keys=[
                    connections_key(session_id),
                    window_key("connections", f"{session_id}|{client_ip}"),
                ],
                args=[
                    round(self.window * 1_000_000),
                    self.per_minute,
                    self.per_session,
                    connection,
                    f"{self.node.instance_id} {self.node.boot}",
                    instance_key(""),
                ],
                within=self.within,
            )
        except BaseException as exc:
            if isinstance(exc, RedisUnavailable):
                self.unanswered += 1
            if self.node.reachable:  # the script may yet run: a late release frees its place
                self._pending.add((session_id, connection))
            raise
        self.decided += 1
        code, value = int(result[0]), int(result[1])
        if code == ADMITTED:
            self.admitted += 1
            return Verdict(connection, admitted=True, open_connections=value)
        if code == SESSION_FULL:
            self.refused_session_full += 1
            return Verdict(connection, admitted=False, session_full=True, open_connections=value)
        self.refused_rate_limited += 1
        return Verdict(connection, admitted=False, retry_after=max(value, 1) / 1_000_000)

    async def release(self, session_id: str, *connections: str) -> None:
        """Give the places back, within the deadline and shielded (a connection torn down by
        a cancellation still gives its place back); what Redis misses is retried later."""
        self._pending.difference_update((session_id, c) for c in connections)
        with trio.CancelScope(shield=True):
            try:
                await self.node.evaluate(
                    RELEASE_SCRIPT,
                    keys=[connections_key(session_id)],
                    args=list(connections),
                    within=self.within,
                )
            except RedisUnavailable as exc:
                log.debug("release of %d connection(s) postponed: %s", len(connections), exc)
                self._pending.update((session_id, c) for c in connections)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Retry the releases Redis missed, once a heartbeat, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.node.heartbeat)
            by_session: dict[str, list[str]] = {}
            for session_id, connection in self._pending:
                by_session.setdefault(session_id, []).append(connection)
            for session_id, connections in by_session.items():
                await self.release(session_id, *connections)

    def statistics(self) -> ClusterAdmissionStatistics:
        return ClusterAdmissionStatistics(
            decided=self.decided,
            admitted=self.admitted,
            refused_session_full=self.refused_session_full,
            refused_rate_limited=self.refused_rate_limited,
            unanswered=self.unanswered,
            pending_releases=len(self._pending),
        )
