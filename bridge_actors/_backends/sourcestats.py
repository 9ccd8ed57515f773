"""What each device's capture source is doing, for ``/stats``: one small meter per device.

Restarts are the capture supervisor's to count; a backend only knows what its
source did: frames published, how fast lately, and the last thing that went wrong.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FPS_WINDOW = 1.0  # seconds


@dataclass(frozen=True, slots=True)
class SourceStatistics:
    udid: str
    source: str
    mode: str  # how frames are obtained now ("decode", "mjpeg", "screenshots"), "" when idle
    capturing: bool
    fps_in: int  # frames published in the last second
    frames: int
    last_error: str | None


class SourceMeter:
    """Counts one device's published frames against trio time (``now`` is passed in)."""

    __slots__ = ("_recent", "captures", "frames", "last_error", "mode", "source", "udid")

    def __init__(self, udid: str, source: str) -> None:
        self.udid = udid
        self.source = source
        self.mode = ""
        self.captures = 0  # running capture() calls; more than one only briefly, during a restart
        self.frames = 0
        self.last_error: str | None = None
        self._recent: deque[float] = deque()

    def frame(self, now: float) -> None:
        self.frames += 1
        self._recent.append(now)
        self._forget(now)

    def fps(self, now: float) -> int:
        self._forget(now)
        return len(self._recent)

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - FPS_WINDOW:
            self._recent.popleft()

    def snapshot(self, now: float) -> SourceStatistics:
        return SourceStatistics(
            udid=self.udid,
            source=self.source,
            mode=self.mode if self.captures else "",
            capturing=self.captures > 0,
            fps_in=self.fps(now),
            frames=self.frames,
            last_error=self.last_error,
        )
