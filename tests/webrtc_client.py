"""What the WebRTC tests share: H.264 packets whose pictures carry their frame number,
and an aiortc client (a real WebRTC implementation we did not write) on its own
asyncio thread that offers, answers, connects and decodes."""

from __future__ import annotations

import asyncio
import fractions
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import psutil
import trio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bridge_actors._webrtc import peer as peer_module
from bridge_actors._webrtc.loop import AsyncioThread

WIDTH, HEIGHT = 256, 128
BITS = 8  # the frame number, modulo 256, as eight black or white bars
TIME_BASE = fractions.Fraction(1, 90000)


@dataclass(frozen=True, slots=True)
class Packet:
    data: bytes
    keyframe: bool
    pts: int
    time_base: fractions.Fraction
    frame_number: int


def picture(number: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    bar = WIDTH // BITS
    for bit in range(BITS):
        if number >> bit & 1:
            image[:, bit * bar : (bit + 1) * bar] = 255
    return image


def number_in(frame: av.VideoFrame) -> int:
    gray = frame.to_ndarray(format="gray")
    bar = gray.shape[1] // BITS
    middle = gray[gray.shape[0] // 4 : 3 * gray.shape[0] // 4]
    return sum(
        1 << bit
        for bit in range(BITS)
        if middle[:, bit * bar + 4 : (bit + 1) * bar - 4].mean() > 128
    )


def encode(count: int, *, gop: int = 30, fps: int = 30) -> list[Packet]:
    """``count`` access units of Constrained Baseline H.264, Annex B, an IDR every ``gop``."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.options = {
        "profile": "baseline",
        "tune": "zerolatency",
        "preset": "ultrafast",
        "g": str(gop),
        "bf": "0",
        "repeat-headers": "1",
    }
    packets: list[Packet] = []
    for number in range(count):
        frame = av.VideoFrame.from_ndarray(picture(number), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = number
        for out in codec.encode(frame):
            packets.append(
                Packet(bytes(out), bool(out.is_keyframe), number * 90000 // fps, TIME_BASE, number)
            )
    for out in codec.encode(None):
        n = len(packets)
        packets.append(Packet(bytes(out), bool(out.is_keyframe), n * 90000 // fps, TIME_BASE, n))
    return packets


@dataclass
class Received:
    numbers: list[Any] = field(default_factory=list)  # what the reader read of each frame
    states: list[str] = field(default_factory=list)


class Client:
    """An aiortc peer that receives one video track, on its own asyncio thread."""

    def __init__(self, reader: Callable[[av.VideoFrame], Any] = number_in) -> None:
        self.reader = reader
        self.thread = AsyncioThread("test-webrtc-client")
        self.received = Received()
        self.pc: RTCPeerConnection | None = None
        self._readers: set[asyncio.Task] = set()
        self._token = trio.lowlevel.current_trio_token()
        self._arrived = trio.Event()

    async def offer(self) -> str:
        return await self.thread.run(self._offer)

    async def _offer(self) -> str:
        peer_module._HOST_ADDRESSES.set(("127.0.0.1",))
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            self.received.states.append(self.pc.connectionState)

        @self.pc.on("track")
        def _track(track) -> None:
            task = asyncio.ensure_future(self._read(track))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.received.numbers.append(self.reader(frame))
                self._token.run_sync_soon(self._wake)
        except MediaStreamError:
            pass

    async def accept(self, answer_sdp: str) -> None:
        async def apply() -> None:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

        await self.thread.run(apply)

    async def send_pli(self) -> None:
        async def pli() -> None:
            receiver = self.pc.getReceivers()[0]
            stats = await receiver.getStats()
            ssrcs = [s.ssrc for s in stats.values() if getattr(s, "type", "") == "inbound-rtp"]
            await receiver._send_rtcp_pli(ssrcs[0])

        await self.thread.run(pli)

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_frames(self, count: int) -> list[int]:
        """The frame numbers decoded so far, once there are at least ``count``."""
        while len(self.received.numbers) < count:
            await self._arrived.wait()
        return list(self.received.numbers)

    async def close(self) -> None:
        if self.pc is not None:

            async def close() -> None:
                await self.pc.close()

            with trio.CancelScope(shield=True):
                await self.thread.run(close)
        await self.thread.stop()


class Census:
    """The threads and UDP sockets of this process now, to see what appears after."""

    # Trio's worker threads linger idle for a while after any to_thread call: not ours.
    POOLED = ("Trio thread", "trio.to_thread")

    def __init__(self) -> None:
        self.threads = {t.ident for t in threading.enumerate()}
        self.sockets = udp_sockets()

    def new_threads(self) -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t.ident not in self.threads and not t.name.startswith(self.POOLED)
        ]

    def new_sockets(self) -> set[tuple]:
        return udp_sockets() - self.sockets


def udp_sockets() -> set[tuple]:
    return {tuple(c.laddr) for c in psutil.Process().net_connections(kind="udp")}
