"""Connection admission: a sliding window per (session, client address) plus concurrency caps.

The arithmetic lives in :class:`SlidingWindow`, which takes ``now`` as an
argument and never touches an event loop, so tests drive it with plain numbers.
:class:`RateLimiter` adds the two concurrency caps and reads the Trio clock;
its only task, :meth:`RateLimiter.run`, prunes buckets whose attempts have all
left the window.

Memory stays bounded under a flood of distinct addresses: each bucket holds at
most ``limit`` timestamps, and the buckets form an LRU of at most ``max_keys``
entries, so the oldest idle address is forgotten before memory can grow.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass

import trio

from .._checks import require_int, require_positive
from .._errors import BadInput, RateLimited, ServerBusy, SessionFull

DENIAL_REASONS = (RateLimited.reason, SessionFull.reason, ServerBusy.reason)


class SlidingWindow:
    """At most ``limit`` attempts per key within any ``window`` seconds, exactly.

    An attempt admitted at ``t`` counts against its key while ``now < t + window``.
    Each key keeps the timestamps of its admitted attempts, at most ``limit`` of
    them, in a :class:`_Times`, so a decision costs O(1) amortised: expire from
    the left, compare the length with the limit. Refused attempts are never recorded, so
    a client that keeps knocking cannot push its own retry time further away.
    """

    __slots__ = ("_buckets", "_limit", "_window", "evictions", "max_keys")

    def __init__(self, *, limit: int, window: float = 60.0, max_keys: int = 10000) -> None:
        require_int("limit", limit, 1)
        require_positive("window", window)
        require_int("max_keys", max_keys, 1)
        self._limit = limit
        self._window = float(window)
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, _Times] = OrderedDict()
        self.evictions = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> float:
        return self._window

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self) -> Iterator[Hashable]:
        """The live keys, least recently used first (a snapshot, safe to mutate while iterating)."""
        return iter(list(self._buckets))

    def _touch(self, key: Hashable, now: float) -> _Times | None:
        """Expire ``key``'s old attempts and mark it recently used; drop it if nothing is left."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        # ``t + window <= now`` rather than ``t <= now - window``: the same sum is
        # used by retry_after, so a refused key always gets a strictly positive wait.
        while bucket and bucket[0] + self._window <= now:
            bucket.popleft()
        if not bucket:
            del self._buckets[key]
            return None
        self._buckets.move_to_end(key)
        return bucket

    def retry_after(self, key: Hashable, now: float) -> float:
        """0.0 if an attempt now would be admitted, else the seconds until it would be."""
        bucket = self._touch(key, now)
        if bucket is None or len(bucket) < self._limit:
            return 0.0
        return bucket[0] + self._window - now

    def consume(self, key: Hashable, now: float) -> None:
        """Record an admitted attempt. Raises :class:`RateLimited` if the window is already full."""
        bucket = self._touch(key, now)
        if bucket is None:
            bucket = self._buckets[key] = _Times()
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
                self.evictions += 1
        elif len(bucket) >= self._limit:
            raise RateLimited(bucket[0] + self._window - now)
        bucket.append(now)

    def discard(self, key: Hashable) -> bool:
        """Forget ``key`` entirely; True if it had a bucket."""
        return self._buckets.pop(key, None) is not None

    def prune(self, now: float) -> int:
        """Drop every key whose attempts have all left the window; returns how many went."""
        before = len(self._buckets)
        for key in list(self._buckets):
            bucket = self._buckets[key]
            while bucket and bucket[0] + self._window <= now:
                bucket.popleft()
            if not bucket:
                del self._buckets[key]
        return before - len(self._buckets)


class _Times:
    """Timestamps in arrival order, appended on the right and expired from the left.

    Held unboxed in an ``array``: a crowd's admissions stay in their windows for
    a minute after the crowd has gone, and as float objects, allocated among the
    crowd's own short-lived objects, they would keep the memory those freed from
    returning to the system.
    """

    __slots__ = ("_head", "_times")

    def __init__(self) -> None:
        self._times = array("d")
        self._head = 0

    def __len__(self) -> int:
        return len(self._times) - self._head

    def __bool__(self) -> bool:
        return len(self._times) > self._head

    def __getitem__(self, index: int) -> float:
        if index != 0 or not self:
            raise IndexError(index)
        return self._times[self._head]

    def append(self, time: float) -> None:
        self._times.append(time)

    def popleft(self) -> float:
        if not self:
            raise IndexError("pop from an empty window")
        time = self._times[self._head]
        self._head += 1
        if self._head * 2 >= len(self._times):  # compact, amortised O(1)
            del self._times[: self._head]
            self._head = 0
        return time


@dataclass(frozen=True, eq=False, slots=True)
class Admission:
    """One admitted connection, handed back to :meth:`RateLimiter.release` when it ends.

    Compared by identity: two connections from the same address at the same
    instant are still two connections, and each must be released once.
    """

    session_id: str
    client_ip: str
    kind: str
    admitted_at: float


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    buckets: int
    bucket_evictions: int
    attempts: int
    admitted: int
    denied: Mapping[str, int]
    active_connections: int
    active_by_session: Mapping[str, int]
    max_connections: int
    max_per_session: int
    per_minute: int
    success_rate: float
    denied_share: Mapping[str, float]


class RateLimiter:
    """Decides whether a connection may open, and keeps count of those that did.

    Checks run from the widest to the narrowest: the bridge-wide cap
    (:class:`ServerBusy`), the session's concurrent cap (:class:`SessionFull`),
    then the (session, address) window (:class:`RateLimited`). Nothing is
    consumed unless every check passes, so a refusal never costs the client
    a window slot.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        per_session: int,
        max_connections: int,
        max_buckets: int = 10000,
        cleanup_interval: float = 30.0,
        window: float = 60.0,
    ) -> None:
        require_int("per_minute", per_minute, 1)
        require_int("per_session", per_session, 1)
        require_int("max_connections", max_connections, 1)
        require_int("max_buckets", max_buckets, 1)
        require_positive("cleanup_interval", cleanup_interval)
        require_positive("window", window)
        self._window = SlidingWindow(limit=per_minute, window=window, max_keys=max_buckets)
        self._per_session = per_session
        self._max_connections = max_connections
        self._cleanup_interval = float(cleanup_interval)
        self._live: set[Admission] = set()
        self._active_by_session: dict[str, int] = {}
        self._attempts = 0
        self._admitted = 0
        self._released = 0
        self._denied = dict.fromkeys(DENIAL_REASONS, 0)

    @property
    def admitted(self) -> int:
        """Connections admitted since the start."""
        return self._admitted

    @property
    def released(self) -> int:
        """Admitted connections that have ended since the start."""
        return self._released

    def active(self, session_id: str) -> int:
        """The session's connections open now."""
        return self._active_by_session.get(session_id, 0)

    def admit(self, session_id: str, client_ip: str, kind: str = "video") -> Admission:
        """Admit one connection or raise the :class:`~bridge_actors.Refused` subclass saying why."""
        for field, value in (("session_id", session_id), ("client_ip", client_ip), ("kind", kind)):
            if not isinstance(value, str) or not value:
                raise BadInput(field, f"must be a non-empty string, got {value!r}")
        now = trio.current_time()
        self._attempts += 1
        try:
            if len(self._live) >= self._max_connections:
                raise ServerBusy(
                    f"the bridge has reached its limit of {self._max_connections} connections"
                )
            if self.active(session_id) >= self._per_session:
                raise SessionFull(session_id, self._per_session)
            wait = self._window.retry_after((session_id, client_ip), now)
            if wait > 0:
                raise RateLimited(wait)
        except (ServerBusy, SessionFull, RateLimited) as refusal:
            self._denied[refusal.reason] += 1
            raise
        self._window.consume((session_id, client_ip), now)
        return self._record(session_id, client_ip, kind, now)

    def admit_decided(self, session_id: str, client_ip: str, kind: str = "video") -> Admission:
        """Record a connection whose session cap and window were decided elsewhere (the
        cluster's, in Redis): only the bridge-wide cap is this instance's to check.

        The window records the admission where it has room, so that this limiter's own
        counts, which decide while Redis is away, never exceed the cluster's."""
        now = trio.current_time()
        self._attempts += 1
        if len(self._live) >= self._max_connections:
            self._denied[ServerBusy.reason] += 1
            raise ServerBusy(
                f"the bridge has reached its limit of {self._max_connections} connections"
            )
        if self._window.retry_after((session_id, client_ip), now) == 0:
            self._window.consume((session_id, client_ip), now)
        return self._record(session_id, client_ip, kind, now)

    def refuse(self, refusal: RateLimited | SessionFull) -> None:
        """Count an attempt refused elsewhere (the cluster's verdict), as if refused here."""
        self._attempts += 1
        self._denied[refusal.reason] += 1

    @property
    def at_capacity(self) -> bool:
        """The bridge-wide cap is reached: the next attempt is refused whatever else says."""
        return len(self._live) >= self._max_connections

    def _record(self, session_id: str, client_ip: str, kind: str, now: float) -> Admission:
        admission = Admission(session_id, client_ip, kind, now)
        self._live.add(admission)
        self._active_by_session[session_id] = self._active_by_session.get(session_id, 0) + 1
        self._admitted += 1
        return admission

    def release(self, admission: Admission) -> None:
        """The connection ended. Releasing the same admission again does nothing."""
        if admission not in self._live:
            return
        self._live.remove(admission)
        self._released += 1
        remaining = self._active_by_session[admission.session_id] - 1
        if remaining:
            self._active_by_session[admission.session_id] = remaining
        else:
            del self._active_by_session[admission.session_id]

    def forget_session(self, session_id: str) -> None:
        """Drop a deleted session's buckets; its open connections still drain through release()."""
        for key in self._window:
            if isinstance(key, tuple) and key[0] == session_id:
                self._window.discard(key)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prune empty buckets every ``cleanup_interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._cleanup_interval)
            self._window.prune(trio.current_time())

    def statistics(self) -> RateLimiterStatistics:
        attempts = self._attempts
        return RateLimiterStatistics(
            buckets=len(self._window),
            bucket_evictions=self._window.evictions,
            attempts=attempts,
            admitted=self._admitted,
            denied=dict(self._denied),
            active_connections=len(self._live),
            active_by_session=dict(self._active_by_session),
            max_connections=self._max_connections,
            max_per_session=self._per_session,
            per_minute=self._window.limit,
            success_rate=self._admitted / attempts if attempts else 1.0,
            denied_share={
                reason: (count / attempts if attempts else 0.0)
                for reason, count in self._denied.items()
            },
        )
