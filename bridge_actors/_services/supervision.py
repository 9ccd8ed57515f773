"""Restart a crashing task with backoff, until it crashes too often (Erlang/OTP style).

A capture source dies for reasons outside our control: a simulator reboots, a
stream hiccups, a helper binary segfaults. Restarting it hides the blip from
viewers; restarting it forever hides a real fault and burns CPU. The OTP answer
is *restart intensity*: at most ``max_restarts`` restarts in any ``period``
seconds, after which the supervisor gives up and raises
:class:`~bridge_actors.CaptureFailed`.

:class:`RestartIntensity` and :class:`Backoff` are the pure decisions (they take
``now`` and ``attempt`` as arguments); :class:`Supervisor` is the Trio loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .._checks import exception_leaves, require_non_negative
from .._errors import CaptureFailed, InvalidSettings

logger = logging.getLogger("bridge_actors.supervision")


class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``period`` seconds.

    Only the newest ``max_restarts + 1`` failure times matter to the decision,
    so that is all it keeps, however long the supervised task lives.
    """

    __slots__ = ("_failures", "max_restarts", "period")

    def __init__(self, max_restarts: int, period: float) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise InvalidSettings(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        require_non_negative("period", period)
        if period == 0:
            raise InvalidSettings("period must be > 0, got 0")
        self.max_restarts = max_restarts
        self.period = float(period)
        self._failures: deque[float] = deque(maxlen=max_restarts + 1)

    def _expire(self, now: float) -> None:
        while self._failures and self._failures[0] + self.period <= now:
            self._failures.popleft()

    def allow_restart(self, now: float) -> bool:
        """Record a failure at ``now``; False once the window holds more than ``max_restarts``."""
        self._failures.append(now)
        self._expire(now)
        return len(self._failures) <= self.max_restarts

    def recent(self, now: float) -> int:
        """Failures within the last ``period`` seconds (at most max_restarts + 1 are kept)."""
        self._expire(now)
        return len(self._failures)


class Backoff:
    """Delay before restart ``attempt`` (0-based): initial, initial * factor, ..., capped."""

    __slots__ = ("factor", "initial", "maximum")

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        require_non_negative("backoff initial", initial)
        require_non_negative("backoff maximum", maximum)
        require_non_negative("backoff factor", factor)
        if maximum < initial:
            raise InvalidSettings(
                f"backoff maximum ({maximum!r}) must not be below backoff initial ({initial!r})"
            )
        if factor < 1:
            raise InvalidSettings(f"backoff factor must be >= 1, got {factor!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)

    def delay(self, attempt: int) -> float:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be an integer >= 0, got {attempt!r}")
        if self.initial == 0:
            return 0.0
        try:
            return min(self.maximum, self.initial * self.factor**attempt)
        except OverflowError:
            return self.maximum


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    restarts: int
    failures: int
    failed_for_good: bool
    last_error: str | None
    recent: int


class TargetReturned(Exception):
    """A supervised task returned although it should run until cancelled."""


def describe(error: BaseException) -> str:
    """``repr`` of an error; a group is described by its leaves, which is where the cause is."""
    if isinstance(error, BaseExceptionGroup):
        return f"{type(error).__name__}({', '.join(map(repr, exception_leaves(error)))})"
    return repr(error)


class Supervisor:
    """Runs one task again and again, one_for_one, within a restart intensity.

    Every exit of the target other than cancellation is a failure: an exception,
    an exception group (one failure, however many leaves), or a plain return.
    Cancellation (or any BaseException) passes through untouched, so stopping
    a supervised service is just cancelling the scope around :meth:`run`.
    """

    def __init__(
        self,
        *,
        name: str,
        max_restarts: int,
        period: float,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        self.name = name
        self._period = period
        self._intensity = RestartIntensity(max_restarts, period)
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._restarts = 0
        self._failures = 0
        self._failed_for_good = False
        self._last_error: str | None = None

    async def run(self, target: Callable[[], Awaitable[None]]) -> None:
        """Run ``target`` until cancelled; raise :class:`CaptureFailed` if it crashes too often."""
        while True:
            try:
                await target()
            except Exception as exc:
                error: Exception = exc
            else:
                error = TargetReturned(f"{self.name} returned without being cancelled")
            self._failures += 1
            self._last_error = describe(error)
            now = trio.current_time()
            if not self._intensity.allow_restart(now):
                self._failed_for_good = True
                crashes = self._intensity.recent(now)
                logger.error(
                    "%s: crashed %d times in %ss, giving up; last error: %s",
                    self.name,
                    crashes,
                    self._period,
                    self._last_error,
                )
                raise CaptureFailed(
                    f"{self.name}: crashed {crashes} times in {self._period}s; "
                    f"last error: {self._last_error}"
                ) from error
            delay = self._backoff.delay(self._intensity.recent(now) - 1)
            logger.warning(
                "%s: crashed (%s); restarting in %.3fs",
                self.name,
                self._last_error,
                delay,
                exc_info=error if not isinstance(error, TargetReturned) else None,
            )
            await trio.sleep(delay)
            self._restarts += 1

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            restarts=self._restarts,
            failures=self._failures,
            failed_for_good=self._failed_for_good,
            last_error=self._last_error,
            recent=self._intensity.recent(trio.current_time()),
        )
