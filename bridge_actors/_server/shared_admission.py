"""A viewer's connection admitted against the cluster's counts, the local limiter as fallback.

With ``BRIDGE_REDIS_URL`` the bridge asks this instead of its own limiter
(:attr:`~bridge_actors._bridge.Bridge.shared_admission`): the session's
concurrent cap and the (session, client address) window are decided in Redis
(:class:`~bridge_actors._cluster.ClusterAdmission`), so they hold over every
instance and survive the owner's restart. The local
:class:`~bridge_actors._services.ratelimit.RateLimiter` keeps what is this
instance's own (its bridge-wide cap, the statistics, every connection it holds)
and decides alone when Redis does not answer within
``BRIDGE_REDIS_ADMISSION_TIMEOUT``: a slow or absent Redis costs a viewer at
most that long, never the connection. Refusals are the same exceptions, so the
same close codes and reasons (4009, 4029), wherever they were decided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._cluster import ClusterAdmission, RedisUnavailable
from .._errors import RateLimited, SessionFull
from .._services.ratelimit import Admission, RateLimiter

log = logging.getLogger("bridge_actors.cluster")

__all__ = ["SharedAdmission", "SharedAdmissionStatistics"]


@dataclass(frozen=True, slots=True)
class SharedAdmissionStatistics:
    decided_in_redis: int
    local_fallbacks: int
    held_in_redis: int
    pending_releases: int


class SharedAdmission:
    """Redis decides the cluster's limits; ``limiter`` records, and decides without it."""

    def __init__(self, cluster: ClusterAdmission, limiter: RateLimiter) -> None:
        self.cluster = cluster
        self.limiter = limiter
        self._places: dict[Admission, tuple[str, str]] = {}  # -> (session, place in Redis)
        self.fallbacks = 0

    async def admit(self, session_id: str, client_ip: str, kind: str) -> Admission:
        """Admit one connection or raise ServerBusy / SessionFull / RateLimited."""
        if self.limiter.at_capacity:  # this instance's own cap: Redis need not be asked
            return self.limiter.admit(session_id, client_ip, kind)
        try:
            verdict = await self.cluster.decide(session_id, client_ip)
        except RedisUnavailable as exc:
            self.fallbacks += 1
            log.debug("connection to %s admitted locally: %s", session_id, exc)
            return self.limiter.admit(session_id, client_ip, kind)
        if not verdict.admitted:
            refusal: SessionFull | RateLimited = (
                SessionFull(session_id, self.cluster.per_session)
                if verdict.session_full
                else RateLimited(verdict.retry_after)
            )
            self.limiter.refuse(refusal)
            raise refusal
        try:
            admission = self.limiter.admit_decided(session_id, client_ip, kind)
        except BaseException:  # the last local place went while Redis was asked
            await self.cluster.release(session_id, verdict.connection)
            raise
        self._places[admission] = (session_id, verdict.connection)
        return admission

    async def release(self, admission: Admission) -> None:
        """The connection ended: its place goes back here, and in Redis if it had one there."""
        self.limiter.release(admission)
        place = self._places.pop(admission, None)
        if place is not None:
            await self.cluster.release(*place)

    def statistics(self) -> SharedAdmissionStatistics:
        cluster = self.cluster.statistics()
        return SharedAdmissionStatistics(
            decided_in_redis=cluster.decided,
            local_fallbacks=self.fallbacks,
            held_in_redis=len(self._places),
            pending_releases=cluster.pending_releases,
        )
