"""A video track that hands aiortc already-encoded H.264, so nothing is encoded per peer.

aiortc's RTCRtpSender only packetizes when its track yields ``av.Packet`` objects
with a ``pts`` and a ``time_base``; it encodes when the track yields frames. Every
peer of a device gets the access units the device's one encoder made.

The track runs on the asyncio loop; the Trio side pushes packets in with
``AsyncioThread.call_soon(track.put, packet)``. Until aiortc starts reading (the
peer is still connecting) the track keeps only the newest group of pictures, so
the first thing sent is an IDR; if aiortc falls behind by more than ``max_queued``
packets the track skips to the next keyframe rather than send a GOP with a hole,
which would decode to grey.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["EncodedVideoTrack", "PacketLike", "TrackStatistics"]

DEFAULT_MAX_QUEUED = 90  # three seconds at 30 fps


class PacketLike(Protocol):
    """What the track reads of an ``EncodedPacket``."""

    @property
    def data(self) -> bytes: ...
    @property
    def keyframe(self) -> bool: ...
    @property
    def pts(self) -> int: ...
    @property
    def time_base(self) -> Fraction: ...


@dataclass(frozen=True, slots=True)
class TrackStatistics:
    received: int  # packets pushed in
    sent: int  # packets handed to aiortc
    skipped: int  # packets dropped to resume at a keyframe
    queued: int


class EncodedVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.max_queued = max_queued
        self._queue: deque[PacketLike] = deque()
        self._available = asyncio.Event()
        self._reading = False
        self._need_keyframe = True
        self._on_first_read = on_first_read
        self.received = self.sent = self.skipped = 0

    def put(self, packet: PacketLike) -> None:
        """Queue one access unit (on the loop's thread)."""
        if self.readyState != "live":
            return
        self.received += 1
        if packet.keyframe:
            if not self._reading or self._need_keyframe:
                # Nobody reads yet, or we resume after a skip: start from this IDR.
                self.skipped += len(self._queue)
                self._queue.clear()
            self._need_keyframe = False
        elif self._need_keyframe:
            self.skipped += 1
            return
        elif len(self._queue) >= self.max_queued:
            self.skipped += len(self._queue) + 1
            self._queue.clear()
            self._need_keyframe = True
            return
        self._queue.append(packet)
        self._available.set()

    async def recv(self) -> av.Packet:
        if not self._reading:
            self._reading = True
            if self._on_first_read is not None:
                self._on_first_read()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._available.clear()
            await self._available.wait()
        if self.readyState != "live":
            raise MediaStreamError
        encoded = self._queue.popleft()
        packet = av.Packet(encoded.data)
        packet.pts = encoded.pts
        packet.time_base = encoded.time_base
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._available.set()  # wake a waiting recv so it sees the track ended

    def statistics(self) -> TrackStatistics:
        return TrackStatistics(
            received=self.received, sent=self.sent, skipped=self.skipped, queued=len(self._queue)
        )
