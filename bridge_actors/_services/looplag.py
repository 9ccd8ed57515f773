"""How late the event loop runs: the signal that one process has run out of core.

A task asks to wake every ``interval`` seconds and records how much later than
asked it did. With one core saturated every task waits its turn for a full round
of the scheduler, and that wait is exactly this lag; so its p99 over a sliding
window says "do not send me more" before the viewers notice.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import trio

__all__ = ["LoopLag", "LoopLagStatistics"]


@dataclass(frozen=True, slots=True)
class LoopLagStatistics:
    samples: int
    p50: float  # seconds
    p99: float
    max: float
    saturated: bool


class LoopLag:
    """Wake-up lateness over the last ``window`` seconds; saturated above ``threshold`` at p99."""

    def __init__(self, *, interval: float = 0.1, window: float = 30.0, threshold: float) -> None:
        self.interval = interval
        self.window = window
        self.threshold = threshold
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            asked = trio.current_time() + self.interval
            await trio.sleep_until(asked)
            now = trio.current_time()
            self.record(now, max(0.0, now - asked))

    def record(self, now: float, lag: float) -> None:
        self._samples.append((now, lag))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of the lags in the window; 0.0 with none yet."""
        lags = sorted(lag for _, lag in self._samples)
        if not lags:
            return 0.0
        return lags[min(len(lags) - 1, max(0, math.ceil(q * len(lags)) - 1))]

    @property
    def saturated(self) -> bool:
        return self.quantile(0.99) > self.threshold

    def statistics(self) -> LoopLagStatistics:
        lags = [lag for _, lag in self._samples]
        return LoopLagStatistics(
            samples=len(lags),
            p50=self.quantile(0.5),
            p99=self.quantile(0.99),
            max=max(lags, default=0.0),
            saturated=self.saturated,
        )
