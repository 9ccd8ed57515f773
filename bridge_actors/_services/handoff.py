"""Where a viewer's task waits for its slot, and how items reach its socket without waking it.

A thousand viewers of one device each wake, take one item from their slot, send it
and sleep again, for every frame: most of the work is the waking. A viewer whose
connection can be written to without waiting needs none of that. Its ``Handoff``
holds a :class:`Sink` the server gave it; when the producer offers an item while
the viewer's task is parked, the item goes to the sink there and then, from the
producer, and the task sleeps on. It is woken only for what the sink could not
take at once, and finishes that before anything else. A task with many items
waiting (an H.264 joiner's replayed GOP) may hand them to the sink itself, all at
once, instead of sending them one by one (:meth:`Handoff.hand_over`).

Flow control stays with the slot: the sink takes only what the slot hands out, so
a viewer written to at once skips, drops and is evicted exactly as one that is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Sink(Protocol[T_contra]):
    """Where a viewer's items can go at once, while its task sleeps."""

    def ready(self) -> bool:
        """Whether :meth:`put` may be called now."""
        ...

    def put(self, item: T_contra) -> bool:
        """Deliver at once; False if part is left over for the viewer's task to :meth:`finish`."""
        ...

    async def finish(self) -> None: ...


class Handoff(Generic[T]):
    """A viewer's parking lot, and the sink items go to while the viewer is parked in it."""

    __slots__ = ("_lot", "_sink", "_unfinished")

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        self._sink: Sink[T] | None = None
        self._unfinished = False

    def deliver_to(self, sink: Sink[T] | None) -> None:
        if self._unfinished:
            raise RuntimeError(
                "the current sink has an item to finish: change sinks only between items"
            )
        self._sink = sink

    async def finish(self) -> None:
        """Complete what the sink left over; the viewer's task calls this before it takes."""
        if self._unfinished and self._sink is not None:
            self._unfinished = False
            await self._sink.finish()
            # A socket finishes its message shielded (half a message corrupts the
            # stream), so a cut that came meanwhile is raised here, as the cancellation
            # its owner's scope expects, and not later as a bare reason.
            await trio.lowlevel.checkpoint_if_cancelled()

    async def wait(self) -> None:
        await self._lot.park()

    def wake(self) -> None:
        self._lot.unpark_all()

    def can_hand_over(self) -> bool:
        """A sink is set, ready, and has no item to finish."""
        sink = self._sink
        return sink is not None and not self._unfinished and sink.ready()

    def hand_over(self, take: Callable[[float], T | None], now: float) -> bool:
        """Put what ``take(now)`` gives into the sink (check :meth:`can_hand_over`
        first). True if the slot was emptied into it; False if the sink left part of an
        item over, which the viewer's task must :meth:`finish` before anything else."""
        assert self._sink is not None
        while (item := take(now)) is not None:
            if not self._sink.put(item):
                self._unfinished = True
                return False
        return True

    def offered(self, take: Callable[[float], T | None], now: float) -> None:
        """An item went into the slot: hand what ``take(now)`` gives to the sink if the
        viewer sleeps and the sink is ready, else wake the viewer."""
        if self._lot and self.can_hand_over() and self.hand_over(take, now):
            return
        self._lot.unpark_all()
