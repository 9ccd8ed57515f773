"""An exact sliding window shared by every instance: one Lua script, Redis's own clock.

Each key is a sorted set of the moments (microseconds of Redis ``TIME``) it was
let through; the script drops the moments older than the window, counts, and
either adds this one or answers how long until the oldest leaves. Run as one
script it is atomic, so two instances asking at once can never both take the
last place; and with Redis's clock no instance's drift moves the window.
"""

from __future__ import annotations

import secrets

from .node import ClusterNode

__all__ = ["SLIDING_WINDOW_SCRIPT", "GlobalWindow"]

SLIDING_WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return {1, 0}
"""


class GlobalWindow:
    """``limit`` events per ``window`` seconds per key, counted over the whole cluster."""

    def __init__(self, node: ClusterNode, name: str, *, limit: int, window: float) -> None:
        self.node = node
        self.name = name
        self.limit = limit
        self.window = window
        self.allowed = 0
        self.refused = 0

    async def take(self, key: str) -> float:
        """Take a place for ``key``: 0.0 if taken, else the seconds until one frees up.

        Raises RedisUnavailable when Redis cannot decide in time."""
        result = await self.node.evaluate(
            SLIDING_WINDOW_SCRIPT,
            keys=[f"bridge:window:{self.name}:{key}"],
            args=[round(self.window * 1_000_000), self.limit, secrets.token_hex(8)],
        )
        taken, wait_us = int(result[0]), int(result[1])
        if taken:
            self.allowed += 1
            return 0.0
        self.refused += 1
        return max(wait_us, 1) / 1_000_000

    def statistics(self) -> dict[str, int]:
        return {"allowed": self.allowed, "refused": self.refused, "limit": self.limit}
