"""The arithmetic of a benchmark run, with no I/O: histograms, percentiles, frame accounting.

Latencies are kept as exact counts per 0.1 ms bucket rather than as lists of
samples, so a worker can ship the distribution of a million frames to the
harness in a few kilobytes and the harness can merge workers without losing
any precision that matters for a p99.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BUCKETS_PER_MS = 10  # 0.1 ms resolution


class Histogram:
    """Counts of values (milliseconds) in 0.1 ms buckets; mergeable, JSON-friendly."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})
        self.total = sum(self.counts.values())

    def add(self, ms: float) -> None:
        bucket = round(ms * BUCKETS_PER_MS) if ms > 0 else 0
        self.counts[bucket] += 1
        self.total += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.total += other.total

    def __len__(self) -> int:
        return self.total

    def quantile(self, q: float) -> float | None:
        """The smallest value with at least ``q`` of the samples at or below it (nearest rank)."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be within [0, 1], not {q}")
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return bucket / BUCKETS_PER_MS
        raise AssertionError("unreachable: ranks never exceed the total")

    def mean(self) -> float | None:
        if not self.total:
            return None
        return sum(b * n for b, n in self.counts.items()) / BUCKETS_PER_MS / self.total

    def maximum(self) -> float | None:
        return max(self.counts) / BUCKETS_PER_MS if self.counts else None

    def cdf(self) -> tuple[list[float], list[float]]:
        """Points (value ms, fraction of samples at or below it) for a CDF plot."""
        xs: list[float] = []
        ys: list[float] = []
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            xs.append(bucket / BUCKETS_PER_MS)
            ys.append(seen / self.total)
        return xs, ys

    def to_json(self) -> dict[str, int]:
        return {str(bucket): n for bucket, n in self.counts.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        return cls({int(bucket): int(n) for bucket, n in data.items()})

    def summary(self) -> dict[str, float | None]:
        return {
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "max": self.maximum(),
        }


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of plain samples (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True, slots=True)
class SeqSpan:
    """The capture frames a window covered, as seen by the viewers: first and last seq."""

    first: int
    last: int

    @property
    def frames(self) -> int:
        return self.last - self.first + 1


def source_span(spans: Iterable[tuple[int, int] | None]) -> SeqSpan | None:
    """The union of the viewers' (first seq, last seq) within the window.

    Frames are attributed to the window by their capture timestamp, so any frame
    the capture produced inside it has a seq between the smallest first and the
    largest last seq any viewer saw (frames no viewer got are counted as lost).
    """
    firsts, lasts = [], []
    for span in spans:
        if span is not None:
            firsts.append(span[0])
            lasts.append(span[1])
    if not firsts:
        return None
    return SeqSpan(min(firsts), max(lasts))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute (RSS growth over a soak)."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60
