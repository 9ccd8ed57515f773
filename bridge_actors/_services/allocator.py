"""Give the memory a crowd of viewers leaves behind back to the system.

Two things keep it after the crowd has gone. Each connection leaves cyclic
garbage (exceptions and the frames their tracebacks hold), which the server's
tuned collector (``tune_garbage_collector``: a large youngest generation, start-up
objects frozen) reaches only much later: after a crowd of 500, about 145,000
objects, so the process looked as if it grew by 20 to 40 MB a round. So once
``collect_after`` connections have ended since the last collection and none
has ended since the last check (the crowd is gone, not still going), at most
every ``collect_spacing`` seconds, the trimmer collects garbage: one pause of
some milliseconds.

Hundreds of viewers that connect, stall and leave each held a frame or two in
flight: tens of megabytes of medium-sized buffers, freed together when they go.
glibc's malloc keeps freed memory inside its heap for reuse, and since small
long-lived objects sit between those buffers the heap cannot shrink from its
top: resident memory stays at the crowd's peak although nothing uses it
(measured: 500 stalled viewers leave 40 MB free inside the heap, which
``malloc_trim`` returns at once). :class:`TrimPolicy` decides when a trim is
worth its cost; :class:`AllocatorTrimmer` samples and trims in a worker thread.
Elsewhere than glibc it only collects garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import trio

from .._checks import require_positive

log = logging.getLogger("bridge_actors.warden")

__all__ = ["AllocatorStatistics", "AllocatorTrimmer", "TrimPolicy", "glibc_allocator"]

_MB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True, slots=True)
class GlibcAllocator:
    """The two calls we need of glibc: how much it holds freed, and give it back."""

    _libc: ctypes.CDLL

    def free_bytes(self) -> int:
        return self._libc.mallinfo2().fordblks

    def resident_bytes(self) -> int:
        return psutil.Process().memory_info().rss

    def trim(self) -> None:
        self._libc.malloc_trim(0)


def glibc_allocator() -> GlibcAllocator | None:
    """glibc's allocator, or None where the C library is another (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return GlibcAllocator(libc)


@dataclass(slots=True)
class TrimPolicy:
    """Trim when the heap holds at least ``threshold_mb`` freed, at most every ``spacing`` s.

    A trim walks the heap and hands free pages back, which the next allocations
    fault in again: a little free memory is cheaper kept, and a heap that stays
    fragmented is walked only now and then (a few milliseconds, in a worker thread).
    Free memory is the only signal the heap gives: trimmed pages still count as
    free in its books, and resident memory also moves for memory in use.
    """

    threshold_mb: float = 16.0
    spacing: float = 2.0
    last_trim: float = -math.inf

    def __post_init__(self) -> None:
        require_positive("threshold_mb", self.threshold_mb)
        require_positive("spacing", self.spacing)

    def should_trim(self, free_bytes: int, now: float) -> bool:
        return free_bytes >= self.threshold_mb * _MB and now - self.last_trim >= self.spacing

    def trimmed(self, now: float) -> None:
        self.last_trim = now


@dataclass(frozen=True, slots=True)
class AllocatorStatistics:
    available: bool
    checks: int
    collections: int
    trims: int
    returned_mb: float
    last_free_mb: float | None


class AllocatorTrimmer:
    """Every ``interval`` seconds, trim the heap when the policy says it holds enough freed."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        policy: TrimPolicy | None = None,
        allocator: GlibcAllocator | None = None,
        departures: Callable[[], int] | None = None,
        collect_after: int = 100,
        collect_spacing: float = 10.0,
        run_in_worker: Callable = trio.to_thread.run_sync,
    ) -> None:
        require_positive("interval", interval)
        require_positive("collect_after", collect_after)
        self.interval = float(interval)
        self.policy = policy if policy is not None else TrimPolicy()
        self._allocator = allocator
        self._departures = departures
        self.collect_after = collect_after
        self.collect_spacing = float(collect_spacing)
        self._departed_at_collection = 0
        self._departed_at_last_check = 0
        self._collected_at = -math.inf
        self._run_in_worker = run_in_worker
        self._collections = 0
        self._checks = 0
        self._trims = 0
        self._returned = 0
        self._last_free: int | None = None

    async def check(self) -> bool:
        """Sample once, trimming if worth it; returns whether it trimmed.

        The sample is two cheap reads, taken on the loop; only the trim, a walk of
        the heap that takes milliseconds, goes to a worker thread (ctypes lets go
        of the GIL meanwhile).
        """
        await trio.lowlevel.checkpoint()
        self._collect_after_a_crowd()
        if self._allocator is None:
            return False
        self._checks += 1
        free = self._allocator.free_bytes()
        self._last_free = free
        if not self.policy.should_trim(free, trio.current_time()):
            return False
        before = self._allocator.resident_bytes()
        await self._run_in_worker(self._allocator.trim)
        after = self._allocator.resident_bytes()
        self.policy.trimmed(trio.current_time())
        self._trims += 1
        self._returned += max(0, before - after)
        log.debug("returned %.1f MB of freed heap to the system", (before - after) / _MB)
        return True

    def _collect_after_a_crowd(self) -> None:
        """Collect once ``collect_after`` connections have ended and the departures have
        stopped for a check: while a crowd is still leaving, collecting is paid twice."""
        if self._departures is None:
            return
        departed, now = self._departures(), trio.current_time()
        still_leaving = departed != self._departed_at_last_check
        self._departed_at_last_check = departed
        if still_leaving or departed - self._departed_at_collection < self.collect_after:
            return
        if now - self._collected_at < self.collect_spacing:
            return
        self._departed_at_collection, self._collected_at = departed, now
        # On the loop on purpose: the collector holds the GIL throughout, so a worker
        # thread would stall the loop all the same.
        gc.collect()
        self._collections += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.check()

    def statistics(self) -> AllocatorStatistics:
        return AllocatorStatistics(
            available=self._allocator is not None,
            checks=self._checks,
            collections=self._collections,
            trims=self._trims,
            returned_mb=round(self._returned / _MB, 1),
            last_free_mb=None if self._last_free is None else round(self._last_free / _MB, 1),
        )
