"""Keep the bridge inside its memory budget by giving up what nobody is watching.

The warden samples the resident memory of this process and of every process it
spawned (capture helpers count against the same machine), and acts by tier:

* ``NORMAL``: nothing.
* ``ELEVATED``: stop every capture that has no viewer and collect garbage.
  Idle captures are cheap to restart and are the only thing we may take away
  without anyone noticing.
* ``CRITICAL``: first refuse new captures (:class:`~bridge_actors.ServerBusy`),
  then shed idle captures least recently used first, measuring again after
  each, until memory falls below the critical mark. Admission reopens as soon
  as it does, and whatever tier memory fell to is then handled as above.

A capture with viewers is never stopped: the warden only ever stops keys the
target itself reports as idle. :class:`WardenPolicy` is the pure tier decision;
:class:`MemoryWarden` is the Trio shell that samples and acts.
"""

from __future__ import annotations

import enum
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil
import trio

from .._checks import require_non_negative, require_positive
from .._errors import InvalidSettings

logger = logging.getLogger("bridge_actors.warden")

_MB = 1024 * 1024


class WardenTier(enum.IntEnum):
    NORMAL = 0
    ELEVATED = 1
    CRITICAL = 2


class WardenPolicy:
    """Maps resident memory to a tier: ``elevated`` and ``critical`` are fractions of the limit."""

    __slots__ = ("critical", "elevated", "limit_mb")

    def __init__(self, limit_mb: float, elevated: float = 0.8, critical: float = 1.0) -> None:
        require_positive("limit_mb", limit_mb)
        require_positive("elevated", elevated)
        require_positive("critical", critical)
        if elevated > critical:
            raise InvalidSettings(
                f"elevated ({elevated!r}) must not be above critical ({critical!r})"
            )
        self.limit_mb = float(limit_mb)
        self.elevated = float(elevated)
        self.critical = float(critical)

    def tier_for(self, rss_mb: float) -> WardenTier:
        if rss_mb >= self.limit_mb * self.critical:
            return WardenTier.CRITICAL
        if rss_mb >= self.limit_mb * self.elevated:
            return WardenTier.ELEVATED
        return WardenTier.NORMAL


@dataclass(frozen=True, slots=True)
class MemorySample:
    rss_mb: float
    vms_mb: float
    percent: float
    available_mb: float


class PsutilProbe:
    """Memory of this process and all its descendants, as one :class:`MemorySample`.

    ``psutil.Process`` objects are kept between samples (keyed by pid and
    checked against the pid's create time, so a recycled pid is not mistaken
    for the old child). A child that exits while we look is skipped: it no
    longer holds memory. Blocking (reads /proc), so the warden calls it from a
    worker thread.
    """

    def __init__(self, process: psutil.Process | None = None) -> None:
        self._root = process if process is not None else psutil.Process()
        self._children: dict[int, psutil.Process] = {}

    def __call__(self) -> MemorySample:
        own = self._root.memory_info()
        rss, vms = own.rss, own.vms
        alive: dict[int, psutil.Process] = {}
        for found in self._root.children(recursive=True):
            cached = self._children.get(found.pid)
            child = cached if cached is not None and cached == found else found
            try:
                info = child.memory_info()
            except psutil.Error:
                continue
            alive[child.pid] = child
            rss += info.rss
            vms += info.vms
        self._children = alive
        machine = psutil.virtual_memory()
        return MemorySample(
            rss_mb=rss / _MB,
            vms_mb=vms / _MB,
            percent=rss / machine.total * 100,
            available_mb=machine.available / _MB,
        )


# Start-up allocates (imports, first captures, caches filling): growth measured from
# the first minutes extrapolates that into hundreds of MB an hour. The first
# GROWTH_WARMUP seconds are left out, and a rate is reported only once it spans
# GROWTH_MIN_WINDOW seconds.
GROWTH_WARMUP = 300.0
GROWTH_MIN_WINDOW = 600.0


@dataclass(frozen=True, slots=True)
class Growth:
    """Resident memory growth: ``mb_per_hour`` over the last ``window_s`` seconds (None
    until the window reaches ``min_window_s``), measured from ``warmup_s`` after start."""

    mb_per_hour: float | None
    window_s: float
    min_window_s: float
    warmup_s: float


class GrowthMeter:
    """Memory growth per hour, from the first sample after a warm-up to the latest.

    Pure: fed ``(trio time, rss)`` samples, it keeps three of them.
    """

    __slots__ = ("_baseline", "_last", "_started", "min_window", "warmup")

    def __init__(
        self, warmup: float = GROWTH_WARMUP, min_window: float = GROWTH_MIN_WINDOW
    ) -> None:
        require_non_negative("warmup", warmup)
        require_positive("min_window", min_window)
        self.warmup = float(warmup)
        self.min_window = float(min_window)
        self._started: float | None = None
        self._baseline: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None

    def add(self, now: float, rss_mb: float) -> None:
        if self._started is None:
            self._started = now
        if self._baseline is None and now - self._started >= self.warmup:
            self._baseline = (now, rss_mb)
        self._last = (now, rss_mb)

    def growth(self) -> Growth:
        rate = None
        window = 0.0
        if self._baseline is not None and self._last is not None:
            window = self._last[0] - self._baseline[0]
            if window >= self.min_window:
                rate = (self._last[1] - self._baseline[1]) / window * 3600.0
        return Growth(rate, window, self.min_window, self.warmup)


class WardenTarget(Protocol):
    """What the warden may do to the captures (the capture pool implements this)."""

    def idle_services(self) -> list[tuple[str, float]]:
        """``(service key, last used trio time)`` of every service with zero viewers."""
        ...

    def stop_service(self, key: str, reason: str) -> bool:
        """Cancel the service without waiting for it; True if it was running."""
        ...

    def set_capture_admission(self, allowed: bool) -> None:
        """Allow or refuse starting new captures."""
        ...


class WardenTargets:
    """Several targets as one: each key is ``"<name> <key>"``, the name its target's.

    The oldest idle service is shed first whichever kind it is; admission opens
    and closes for all of them at once.
    """

    def __init__(self, targets: dict[str, WardenTarget]) -> None:
        self._targets = dict(targets)

    def idle_services(self) -> list[tuple[str, float]]:
        return [
            (f"{name} {key}", last_used)
            for name, target in self._targets.items()
            for key, last_used in target.idle_services()
        ]

    def stop_service(self, key: str, reason: str) -> bool:
        name, _, inner = key.partition(" ")
        target = self._targets.get(name)
        return target is not None and target.stop_service(inner, reason)

    def set_capture_admission(self, allowed: bool) -> None:
        for target in self._targets.values():
            target.set_capture_admission(allowed)


@dataclass(frozen=True, slots=True)
class WardenStatistics:
    tier: str
    limit_mb: float
    samples: int
    memory_cleanups: int
    services_stopped: int
    last: MemorySample | None
    start_rss_mb: float | None
    rss_growth_mb_per_hour: float | None  # None until growth spans long enough to mean something
    rss_growth: Growth
    ready: bool


class MemoryWarden:
    """Samples memory every ``interval`` seconds and acts on the tier (see the module docstring)."""

    def __init__(
        self,
        target: WardenTarget,
        *,
        limit_mb: float,
        interval: float,
        probe: Callable[[], MemorySample] | None = None,
        policy: WardenPolicy | None = None,
        growth: GrowthMeter | None = None,
    ) -> None:
        require_positive("interval", interval)
        if policy is None:
            policy = WardenPolicy(limit_mb)
        elif policy.limit_mb != limit_mb:
            raise InvalidSettings(
                f"limit_mb ({limit_mb!r}) disagrees with the policy's limit ({policy.limit_mb!r})"
            )
        self._target = target
        self._policy = policy
        self._interval = float(interval)
        self._probe = probe if probe is not None else PsutilProbe()
        # The real probe reads /proc; a test's fake probe must run on the loop
        # so MockClock time and the fake's state stay in step.
        self._probe_in_thread = isinstance(self._probe, PsutilProbe)
        self._lock = trio.Lock()
        self.tier = WardenTier.NORMAL
        self._admission_open = True
        self._samples = 0
        self._memory_cleanups = 0
        self._services_stopped = 0
        self._first: tuple[float, MemorySample] | None = None
        self._last: tuple[float, MemorySample] | None = None
        self._growth = growth if growth is not None else GrowthMeter()

    @property
    def ready(self) -> bool:
        """False while memory is critical: the bridge should not take new viewers."""
        return self.tier < WardenTier.CRITICAL

    async def _sample(self) -> MemorySample:
        if self._probe_in_thread:
            sample = await trio.to_thread.run_sync(self._probe)
        else:
            await trio.lowlevel.checkpoint()
            sample = self._probe()
        now = trio.current_time()
        if self._first is None:
            self._first = (now, sample)
        self._last = (now, sample)
        self._growth.add(now, sample.rss_mb)
        self._samples += 1
        return sample

    def _enter(self, tier: WardenTier, sample: MemorySample) -> None:
        """Adopt ``tier``, logging only when it changes."""
        if tier == self.tier:
            return
        log = logger.warning if tier > self.tier else logger.info
        log(
            "memory tier %s -> %s: rss %.1f MB of %.1f MB limit",
            self.tier.name,
            tier.name,
            sample.rss_mb,
            self._policy.limit_mb,
        )
        self.tier = tier

    def _set_admission(self, allowed: bool) -> None:
        if allowed != self._admission_open:
            self._target.set_capture_admission(allowed)
            self._admission_open = allowed

    def _stop(self, key: str, reason: str) -> None:
        if self._target.stop_service(key, reason):
            self._services_stopped += 1
            logger.info("stopped idle capture %s (%s)", key, reason)

    def _idle_lru(self, exclude: set[str]) -> list[str]:
        idle = sorted(self._target.idle_services(), key=lambda service: service[1])
        return [key for key, _ in idle if key not in exclude]

    async def check(self) -> WardenTier:
        """Take one sample and act on it; returns the tier memory ended at."""
        async with self._lock:
            sample = await self._sample()
            self._enter(self._policy.tier_for(sample.rss_mb), sample)
            if self.tier < WardenTier.ELEVATED:
                self._set_admission(True)
                return self.tier
            tried: set[str] = set()
            if self.tier == WardenTier.CRITICAL:
                self._set_admission(False)
                # Idle services are asked for afresh after every stop: the
                # sample in between checkpoints, and a viewer may have joined.
                while self.tier == WardenTier.CRITICAL and (idle := self._idle_lru(tried)):
                    tried.add(idle[0])
                    self._stop(idle[0], f"memory critical: rss {sample.rss_mb:.1f} MB")
                    sample = await self._sample()
                    self._enter(self._policy.tier_for(sample.rss_mb), sample)
            if self.tier >= WardenTier.ELEVATED:
                for key in self._idle_lru(tried):
                    self._stop(key, f"memory {self.tier.name.lower()}: rss {sample.rss_mb:.1f} MB")
            # Runs on the loop on purpose: the collector holds the GIL
            # throughout, so a worker thread would stall the loop all the same.
            gc.collect()
            self._memory_cleanups += 1
            if self.tier < WardenTier.CRITICAL:
                self._set_admission(True)
            return self.tier

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check now and then every ``interval`` seconds, until cancelled."""
        task_status.started()
        while True:
            await self.check()
            await trio.sleep(self._interval)

    def statistics(self) -> WardenStatistics:
        growth = self._growth.growth()
        return WardenStatistics(
            tier=self.tier.name,
            limit_mb=self._policy.limit_mb,
            samples=self._samples,
            memory_cleanups=self._memory_cleanups,
            services_stopped=self._services_stopped,
            last=self._last[1] if self._last is not None else None,
            start_rss_mb=self._first[1].rss_mb if self._first is not None else None,
            rss_growth_mb_per_hour=growth.mb_per_hour,
            rss_growth=growth,
            ready=self.ready,
        )
