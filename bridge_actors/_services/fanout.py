"""One capture, many viewers: a latest-frame slot per viewer.

The producer hands every frame to every slot and never waits: a slot holds at
most ``capacity`` frames (1 or 2) and a new frame pushes out the oldest unsent
one. A viewer that takes nothing while frames wait for it longer than the
deadline is evicted, so a client that stopped reading costs the others nothing
and is noticed without any periodic sweep.

A viewer with a sink (:meth:`Viewer.deliver_to`) has its frames written by the
producer while its task sleeps; see :mod:`.handoff`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from .._device import Frame
from .._errors import ViewerEvicted
from .handoff import Handoff, Sink
from .lifeline import Lifeline


@dataclass(frozen=True, slots=True)
class ViewerStatistics:
    key: int
    delivered: int
    dropped: int
    pending: int
    max_fps: float | None
    closed: bool


class ViewerSlot:
    """The pure part of a viewer: what it has been offered, taken and missed.

    ``stalled_since`` is when the viewer last made progress while a frame was
    waiting for it (None while its slot is empty): the eviction clock.
    """

    __slots__ = (
        "capacity",
        "delivered",
        "dropped",
        "key",
        "last_frame_seq",
        "pending",
        "stalled_since",
    )

    def __init__(self, key: int, capacity: int) -> None:
        if capacity not in (1, 2):
            raise ValueError(f"slot capacity must be 1 or 2, not {capacity}")
        self.key = key
        self.capacity = capacity
        self.pending: deque[Frame] = deque(maxlen=capacity)
        self.stalled_since: float | None = None
        self.delivered = 0
        self.dropped = 0
        self.last_frame_seq = 0

    def offer(self, frame: Frame, now: float) -> None:
        if not self.pending:
            self.stalled_since = now
        elif len(self.pending) == self.capacity:
            self.dropped += 1
        self.pending.append(frame)

    def take(self, now: float) -> Frame | None:
        if not self.pending:
            return None
        frame = self.pending.popleft()
        self.delivered += 1
        self.last_frame_seq = frame.seq
        self.stalled_since = now if self.pending else None
        return frame

    def take_latest(self, now: float) -> Frame | None:
        """Take the newest frame, counting older waiting ones as dropped (rate-capped viewers)."""
        while len(self.pending) > 1:
            self.pending.popleft()
            self.dropped += 1
        return self.take(now)

    def is_stalled(self, now: float, deadline: float) -> bool:
        return self.stalled_since is not None and now - self.stalled_since > deadline


class Viewer:
    """One viewer of a capture: await ``receive()`` (or iterate) to get frames.

    Raises the reason the viewer ended (ViewerEvicted, CaptureFailed,
    CaptureStopped) once it is closed and nothing is left to take.
    """

    def __init__(
        self, fanout: Fanout, slot: ViewerSlot, max_fps: float | None, needs_jpeg: bool = True
    ) -> None:
        self._fanout = fanout
        self._slot = slot
        self.needs_jpeg = needs_jpeg
        self._handoff: Handoff[Frame] = Handoff()
        self.lifeline = Lifeline()
        self.max_fps = max_fps
        # A rate-capped viewer leaves frames waiting on purpose between two takes;
        # that pause is not stalling.
        self.pause_between_frames = 1 / max_fps if max_fps else 0.0
        self._next_allowed = -float("inf")

    @property
    def key(self) -> int:
        return self._slot.key

    def deliver_to(self, sink: Sink[Frame] | None) -> None:
        """Have frames offered while this viewer waits written to ``sink`` at once.

        Only for a viewer without a rate cap: a capped viewer's pacing lives in its task.
        """
        if self.max_fps and sink is not None:
            raise ValueError("a viewer capped at max_fps takes its frames in its own task")
        self._handoff.deliver_to(sink)

    async def receive(self) -> Frame:
        if self.max_fps:
            await trio.sleep_until(self._next_allowed)
        else:
            await trio.lowlevel.checkpoint()
        while True:
            await self._handoff.finish()
            if self.lifeline.reason is not None:
                raise self.lifeline.reason
            now = trio.current_time()
            frame = self._slot.take_latest(now) if self.max_fps else self._slot.take(now)
            if frame is not None:
                if self.max_fps:
                    self._next_allowed = max(self._next_allowed + 1 / self.max_fps, now)
                return frame
            await self._handoff.wait()

    def __aiter__(self) -> Viewer:
        return self

    async def __anext__(self) -> Frame:
        return await self.receive()

    def _wake(self) -> None:
        self._handoff.wake()

    def _offered(self, now: float) -> None:
        self._handoff.offered(self._slot.take, now)

    def close(self, reason: BaseException) -> None:
        self.lifeline.cut(reason)
        self._wake()

    def statistics(self) -> ViewerStatistics:
        slot = self._slot
        return ViewerStatistics(
            key=slot.key,
            delivered=slot.delivered,
            dropped=slot.dropped,
            pending=len(slot.pending),
            max_fps=self.max_fps,
            closed=self.lifeline.cut_already,
        )


@dataclass(frozen=True, slots=True)
class FanoutStatistics:
    viewers: int
    frames_in: int
    frames_offered: int
    frames_delivered: int
    frames_dropped: int
    evicted: int
    per_viewer: tuple[ViewerStatistics, ...]


class Fanout:
    """Hands each published frame to every viewer's slot; never waits for one."""

    def __init__(self, *, capacity: int = 2, deadline: float = 5.0) -> None:
        self.capacity = capacity
        self.deadline = deadline
        self._viewers: dict[int, Viewer] = {}
        self._next_key = 0
        self.jpeg_viewers = 0
        self.frames_in = 0
        self.frames_offered = 0
        self.evicted = 0
        self._delivered_by_gone = 0
        self._dropped_by_gone = 0

    def __len__(self) -> int:
        return len(self._viewers)

    def __iter__(self) -> Iterator[Viewer]:
        return iter(list(self._viewers.values()))

    def add(
        self,
        *,
        max_fps: float | None = None,
        capacity: int | None = None,
        needs_jpeg: bool = True,
    ) -> Viewer:
        """A new viewer. One with ``needs_jpeg=False`` encodes pictures itself and is
        also offered frames that carry only RGB pixels (see :class:`Frame`)."""
        self._next_key += 1
        slot = ViewerSlot(self._next_key, capacity or self.capacity)
        viewer = Viewer(self, slot, max_fps, needs_jpeg)
        self._viewers[slot.key] = viewer
        self.jpeg_viewers += needs_jpeg
        return viewer

    def remove(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.key, None) is not None:
            self.jpeg_viewers -= viewer.needs_jpeg
            self._delivered_by_gone += viewer._slot.delivered
            self._dropped_by_gone += viewer._slot.dropped

    def publish(self, frame: Frame, now: float | None = None) -> None:
        if now is None:
            now = trio.current_time()
        self.frames_in += 1
        for viewer in list(self._viewers.values()):
            slot = viewer._slot
            if slot.is_stalled(now, self.deadline + viewer.pause_between_frames):
                self.evicted += 1
                self.remove(viewer)
                viewer.close(
                    ViewerEvicted(
                        f"viewer stayed behind for more than {self.deadline:g}s "
                        f"(last frame taken: {slot.last_frame_seq}, now at {frame.seq})"
                    )
                )
                continue
            if frame.jpeg is None and viewer.needs_jpeg:
                continue  # joined while the frame was made without a JPEG; the next has one
            slot.offer(frame, now)
            self.frames_offered += 1
            viewer._offered(now)

    def close_all(self, reason: type[BaseException], message: str) -> None:
        """End every viewer, each with its own exception object (each raises it in its own task)."""
        for viewer in list(self._viewers.values()):
            self.remove(viewer)
            viewer.close(reason(message))

    def statistics(self) -> FanoutStatistics:
        per_viewer = tuple(v.statistics() for v in self._viewers.values())
        return FanoutStatistics(
            viewers=len(self._viewers),
            frames_in=self.frames_in,
            frames_offered=self.frames_offered,
            frames_delivered=self._delivered_by_gone + sum(v.delivered for v in per_viewer),
            frames_dropped=self._dropped_by_gone + sum(v.dropped for v in per_viewer),
            evicted=self.evicted,
            per_viewer=per_viewer,
        )
