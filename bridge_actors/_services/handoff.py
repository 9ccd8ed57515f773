"""Where a viewer's task waits for its slot, and how items reach its socket without waking it.

A thousand viewers of one device each wake, take one item from their slot, send it
and sleep again, for every frame: most of the work is the waking. A viewer whose
connection can be written to without waiting needs none of that. Its ``Handoff``
holds a :class:`Sink` the server gave it; when the producer offers an item while
the viewer's task is parked, the item goes to the sink there and then, from the
producer, and the task sleeps on. It is woken only for what the sink could not
take at once, and finishes that before anything else.

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

    def offered(self, take: Callable[[float], T | None], now: float) -> None:
        """An item went into the slot: hand what ``take(now)`` gives to the sink if the
        viewer sleeps and the sink is ready, else wake the viewer."""
        sink = self._sink
        if sink is not None and self._lot and not self._unfinished and sink.ready():
            while (item := take(now)) is not None:
                if not sink.put(item):
                    self._unfinished = True
                    break
            else:
                return
        self._lot.unpark_all()
