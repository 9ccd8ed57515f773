"""``webrtc``: how many WebRTC peers of one device the server keeps at >= 95% of frames.

Peers are real aiortc clients in the harness process (the server runs apart, so
its CPU is measured alone). Each signals on ``/ws/{id}/webrtc`` as ios-bridge's
viewers do, connects over loopback, and counts the complete H.264 frames its
receiver reassembles; the harness's receivers count instead of decoding, so that
the clients' CPU does not cap what is measured (tests/test_webrtc_server.py shows
the same stream decodes). A step's figure: each peer's frames in the window
against the frames the device's capture produced in it; the steps stop at the
first that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import trio
import trio_websocket
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtcrtpreceiver

from ._load import Context
from ._server import ProcessMeter
from ._targets import at_least

HELD = 0.95
CONNECT_SECONDS = 60  # a loaded machine may take a while to connect a peer


class ClientLoop:
    """The clients' asyncio loop, in a thread of its own; ``await run(fn, *args)`` from Trio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-webrtc")
        self.thread.start()

    async def run(self, fn, *args):
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        return await trio.to_thread.run_sync(future.result)

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self.thread.join)
        self.loop.close()


@contextlib.contextmanager
def loopback_candidates():
    """The clients gather ICE host candidates on 127.0.0.1 only (aioice leaves it out)."""
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


class CountingDecoder:
    """Stands in for aiortc's H.264 decoder on the benchmark's receivers: counts frames."""

    def __init__(self) -> None:
        self.frames = 0

    def decode(self, encoded_frame: Any) -> list:
        self.frames += 1
        return []


@dataclass
class Decoders:
    made: list[CountingDecoder] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make(self, codec: Any) -> CountingDecoder:
        decoder = CountingDecoder()
        with self.lock:
            self.made.append(decoder)
        return decoder


@contextlib.contextmanager
def counting_decoders():
    decoders = Decoders()
    original = rtcrtpreceiver.get_decoder
    rtcrtpreceiver.get_decoder = decoders.make
    try:
        yield decoders
    finally:
        rtcrtpreceiver.get_decoder = original


async def _offer(pcs: list) -> tuple[Any, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")

    @pc.on("track")
    def _track(track) -> None:
        pass  # frames are counted where the receiver reassembles them

    pcs.append(pc)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def _accept(pc: Any, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))


async def _close_all(pcs: list) -> None:
    for pc in pcs:
        await pc.close()


async def _peer(url: str, thread: ClientLoop, pcs: list, task_status) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()  # the ready status
        pc, offer = await thread.run(_offer, pcs)
        await ws.send_message(json.dumps({"type": "offer", "sdp": offer}))
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "answer":
                await thread.run(_accept, pc, message["sdp"])
            elif message["type"] == "connection-state" and message["state"] == "connected":
                break
            elif message["type"] == "error":
                raise RuntimeError(f"signalling: {message['message']}")
        task_status.started()
        while True:
            await ws.get_message()  # state changes; the socket's end is the peer's end


async def _capture_frames(client: Any, udid: str) -> int:
    stats = (await client.get("/stats")).json()
    return stats["captures"][udid]["fanout"]["frames_in"]


async def webrtc(ctx: Context, *, peers: list[int], duration: float) -> None:
    import httpx

    settings = {
        "max_connections_per_session": max(peers) + 10,
        "max_connections_per_minute": 100_000,
        "webrtc_connect_timeout": CONNECT_SECONDS,
    }
    async with ctx.server("webrtc", settings) as server:
        session, udid = server.sessions[0], server.udids[0]
        url = f"{server.ws_base}/ws/{session}/webrtc"
        meter = ProcessMeter(server.pid)
        best = 0
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            for count in peers:
                figures = await _step(ctx, client, url, udid, meter, count, duration)
                await ctx.results.add_figures("webrtc", f"{count} peers", figures)
                if figures["peers_holding_95"] == count:
                    best = max(best, count)
                else:
                    break
        await ctx.results.add_figures("webrtc", "largest", {"peers_at_95_percent": best})
        await ctx.results.add_targets(
            at_least("webrtc", "peers of one encoder at >= 95% of frames", best, 50, "")
        )


async def _step(ctx, client, url, udid, meter, count, duration) -> dict[str, Any]:
    thread = ClientLoop()
    harness = ProcessMeter(os.getpid())
    pcs: list = []
    with (
        counting_decoders() as decoders,
        loopback_candidates(),
        ctx.reporter.task(f"webrtc: {count} peers"),
    ):
        limit = CONNECT_SECONDS + 2 * count + 2.0 + duration + 30
        try:
            # Outside the nursery, so that running late is a TooSlowError the harness reports.
            with trio.fail_after(limit):
                async with trio.open_nursery() as nursery:
                    for _ in range(count):
                        await nursery.start(_peer, url, thread, pcs)
                    await ctx.pause(2.0)  # past the first keyframe and the join burst
                    before = {id(d): d.frames for d in decoders.made}
                    frames_before = await _capture_frames(client, udid)
                    cpu_before = meter.cpu_seconds() or 0.0
                    clients_before = harness.cpu_seconds() or 0.0
                    await trio.sleep(duration)
                    cpu = (meter.cpu_seconds() or 0.0) - cpu_before
                    clients_cpu = (harness.cpu_seconds() or 0.0) - clients_before
                    frames = await _capture_frames(client, udid) - frames_before
                    got = [d.frames - before.get(id(d), 0) for d in decoders.made]
                    got += [0] * (count - len(got))  # a peer whose first frame never came
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await thread.run(_close_all, pcs)
                await thread.stop()
    shares = sorted(g / frames for g in got) if frames else [0.0]
    return {
        "peers": count,
        "capture_frames": frames,
        "peers_holding_95": sum(s >= HELD for s in shares),
        "worst_share": round(shares[0], 3),
        "median_share": round(shares[len(shares) // 2], 3),
        # All peers get the same packets: a best share below 1 is frames the encoder skipped
        # (it keeps up with the capture only while it gets the CPU), not delivery.
        "best_share": round(shares[-1], 3),
        "server_cpu_percent": round(100 * cpu / duration, 1),
        "server_cpu_ms_per_peer_second": round(1000 * cpu / duration / count, 2),
        "clients_cpu_percent": round(100 * clients_cpu / duration, 1),
    }
