"""H.264 a device already encodes, passed to its H.264 viewers without decoding.

Some sources give H.264 themselves (``idb video-stream --format h264``). While a
device has H.264 viewers and no JPEG viewer, its encoder service relays that
stream instead of decoding JPEG and encoding it again: the same access units,
byte for byte. A JPEG viewer needs the device's JPEG capture anyway, and that
capture is what the encoder encodes, so while one watches the service encodes;
when the last one leaves it passes through again.

:class:`JpegDemand` is what tells it: the number of JPEG viewers of each device,
with an event on every change. :class:`Passthrough` is what a service is given
for a device that can pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from .._device import DeviceInfo

__all__ = ["H264Source", "JpegDemand", "Passthrough"]


@runtime_checkable
class H264Source(Protocol):
    """A backend whose devices stream H.264 themselves."""

    async def stream_h264(
        self, device: DeviceInfo, emit: Callable[[bytes], None], *, fps: int
    ) -> None:
        """Call ``emit`` with each Annex B access unit until the stream fails (raise)."""
        ...


class JpegDemand:
    """How many JPEG viewers each device has, and an event when that changes."""

    __slots__ = ("_changed", "_viewers")

    def __init__(self) -> None:
        self._viewers: dict[str, int] = {}
        self._changed: dict[str, trio.Event] = {}

    def viewers(self, udid: str) -> int:
        return self._viewers.get(udid, 0)

    @contextmanager
    def held(self, udid: str) -> Iterator[None]:
        """One JPEG viewer of ``udid`` for the duration of the block."""
        self._viewers[udid] = self._viewers.get(udid, 0) + 1
        self._notify(udid)
        try:
            yield
        finally:
            left = self._viewers[udid] - 1
            if left:
                self._viewers[udid] = left
            else:
                del self._viewers[udid]
            self._notify(udid)

    async def wait_changed(self, udid: str) -> None:
        """Until the number of JPEG viewers of ``udid`` changes next."""
        event = self._changed.get(udid)
        if event is None:
            event = self._changed[udid] = trio.Event()
        await event.wait()

    def _notify(self, udid: str) -> None:
        event = self._changed.pop(udid, None)
        if event is not None:
            event.set()


@dataclass(frozen=True, slots=True)
class Passthrough:
    """What an encoder service needs to pass one device's own H.264 through."""

    udid: str
    stream: Callable[[Callable[[bytes], None]], Awaitable[None]]  # runs until it fails
    demand: JpegDemand
    input_seq: Callable[[], int]  # the device's last applied control, for each packet

    @property
    def jpeg_viewers(self) -> int:
        return self.demand.viewers(self.udid)

    async def wait_changed(self) -> None:
        await self.demand.wait_changed(self.udid)
