"""Events per second, in constant memory."""

from __future__ import annotations


class RateMeter:
    """Events in the last second, estimated in O(1) memory per meter.

    Counts events per whole second and reports this second's count plus the
    share of the previous second's that still lies within the last second (the
    sliding-window counter of rate limiters): exact for a steady rate, never a
    list of timestamps per viewer.
    """

    __slots__ = ("_count", "_previous", "_second")

    def __init__(self) -> None:
        self._second = 0
        self._count = 0
        self._previous = 0

    def _roll(self, second: int) -> None:
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second = second
            self._count = 0

    def add(self, now: float, n: int = 1) -> None:
        self._roll(int(now))
        self._count += n

    def rate(self, now: float) -> float:
        second = int(now)
        if second > self._second + 1:
            return 0.0
        if second == self._second + 1:
            return self._count * (1.0 - (now - second))
        return self._count + self._previous * (1.0 - (now - second))
