"""Latencies counted into fixed buckets: constant memory and O(log buckets) per sample.

A histogram keeps a count per bucket, never the samples, so it may observe every
frame of every viewer for the life of the process. Its buckets are Prometheus's
(cumulative, upper bounds inclusive, a last ``+Inf``), so ``/metrics`` exports it
unchanged and ``histogram_quantile`` over a scrape gives the same figure as
:meth:`HistogramStatistics.quantile` here.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Histogram", "HistogramStatistics"]


@dataclass(frozen=True, slots=True)
class HistogramStatistics:
    bounds: tuple[float, ...]  # the finite upper bounds; a last bucket holds everything above
    buckets: tuple[int, ...]  # cumulative: samples <= each bound, then the total for +Inf
    count: int
    sum: float

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, interpolated linearly inside its bucket as
        Prometheus's ``histogram_quantile`` does; 0.0 with no samples.

        A quantile that falls in the ``+Inf`` bucket is the largest finite bound:
        the histogram knows no more than "above it".
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q: must be from 0 to 1, not {q!r}")
        if self.count == 0:
            return 0.0
        rank = q * self.count
        index = bisect.bisect_left(self.buckets, rank)
        if index >= len(self.bounds):
            return self.bounds[-1]
        lower = self.bounds[index - 1] if index > 0 else 0.0
        below = self.buckets[index - 1] if index > 0 else 0
        inside = self.buckets[index] - below
        if inside == 0:  # q == 0 and the first bucket is empty
            return lower
        return lower + (self.bounds[index] - lower) * (rank - below) / inside


class Histogram:
    """Samples counted into buckets with the given upper bounds (seconds, or any unit).

    ``bounds`` must be finite and strictly ascending; a sample equal to a bound
    falls in that bound's bucket (Prometheus's ``le``). A negative sample (a clock
    read on another thread a moment early) counts as 0.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        bounds = tuple(float(bound) for bound in bounds)
        if not bounds:
            raise ValueError("bounds: need at least one finite upper bound")
        if not all(math.isfinite(bound) for bound in bounds):
            raise ValueError(f"bounds: need finite upper bounds, got {bounds!r}")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"bounds: need strictly ascending upper bounds, got {bounds!r}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe(self, value: float) -> None:
        if not value > 0.0:  # negative, zero, or NaN
            value = 0.0
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def statistics(self) -> HistogramStatistics:
        cumulative = []
        total = 0
        for count in self._counts:
            total += count
            cumulative.append(total)
        return HistogramStatistics(
            bounds=self._bounds, buckets=tuple(cumulative), count=total, sum=self._sum
        )
