"""An exact sliding window shared by every instance: Lua run in Redis, on Redis's own clock.

Each key is a sorted set of the moments (microseconds of Redis ``TIME``) it was
let through; the script drops the moments older than the window, counts, and
either adds this one or answers how long until the oldest leaves. Run as one
script it is atomic, so two instances asking at once can never both take the
last place; and with Redis's clock no instance's drift moves the window.

The window is written once, as Lua functions (:data:`WINDOW_LUA`), and every
script that counts in a window is built from them: the creations of
:class:`GlobalWindow` here, and the connection admission of
:mod:`.admission`, which checks the per-session cap in the same script.
"""

from __future__ import annotations

import secrets

from .node import ClusterNode

__all__ = ["NOW_LUA", "SLIDING_WINDOW_SCRIPT", "WINDOW_LUA", "GlobalWindow"]

# ``now``: Redis's clock in microseconds, the only clock any window reads.
NOW_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
"""

WINDOW_LUA = """
-- 0 if ``key`` has room for one more within ``window`` us, else the us until it has.
local function window_wait(key, now, window, limit)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    if redis.call('ZCARD', key) >= limit then
        local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        return math.max(tonumber(oldest[2]) + window - now, 1)
    end
    return 0
end
-- Count one event (named ``member``) in ``key``'s window; the key goes with its last event.
local function window_take(key, now, window, member)
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
end
"""

SLIDING_WINDOW_SCRIPT = (
    NOW_LUA
    + WINDOW_LUA
    + """
local window = tonumber(ARGV[1])
local wait = window_wait(KEYS[1], now, window, tonumber(ARGV[2]))
if wait > 0 then
    return {0, wait}
end
window_take(KEYS[1], now, window, ARGV[3])
return {1, 0}
"""
)


def window_key(name: str, key: str) -> str:
    return f"bridge:window:{name}:{key}"


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
            keys=[window_key(self.name, key)],
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
