"""Test doubles shared by the test modules: real backends with faults injected."""

from __future__ import annotations

import trio

from bridge_actors import DeviceInfo, FrameSink, Settings
from bridge_actors._simulated import SimulatedBackend, run_on_event_loop


def simulated(*, inline: bool = True, **kwargs) -> SimulatedBackend:
    """The real simulated backend; ``inline`` encodes on the event loop so that
    MockClock's virtual time stays exact (no jumps while a worker thread runs)."""
    return SimulatedBackend(
        encode_limiter=trio.CapacityLimiter(2),
        run_in_worker=run_on_event_loop if inline else trio.to_thread.run_sync,
        **kwargs,
    )


def settings(tmp_path, **overrides) -> Settings:
    values = {
        "state_dir": tmp_path / "state",
        "memory_check_interval": 3600.0,
        "connection_cleanup_interval": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


class CrashingBackend(SimulatedBackend):
    """The simulated device, whose capture crashes after ``frames_per_run`` frames
    for the first ``crashes`` runs (forever when ``crashes`` is None)."""

    def __init__(self, *, frames_per_run: int, crashes: int | None, **kwargs) -> None:
        super().__init__(
            encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop, **kwargs
        )
        self.frames_per_run = frames_per_run
        self.crashes = crashes
        self.runs = 0

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None:
        self.runs += 1
        if self.crashes is not None and self.runs > self.crashes:
            await super().capture(device, sink, fps=fps)
            return
        counting = _CountingSink(sink, self.frames_per_run)
        try:
            await super().capture(device, counting, fps=fps)
        except _Enough:
            raise RuntimeError(f"capture crashed on run {self.runs}") from None


class _Enough(Exception):
    pass


class _CountingSink:
    def __init__(self, inner: FrameSink, limit: int) -> None:
        self._inner = inner
        self._left = limit

    @property
    def applied_input_seq(self) -> int:
        return self._inner.applied_input_seq

    async def wait_for_viewers(self) -> None:
        await self._inner.wait_for_viewers()

    def publish(self, jpeg, **kwargs) -> None:
        if self._left <= 0:
            raise _Enough
        self._left -= 1
        self._inner.publish(jpeg, **kwargs)
