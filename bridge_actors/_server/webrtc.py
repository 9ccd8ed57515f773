"""``/ws/{id}/webrtc``: ios-bridge's signalling, answered with a peer fed the shared H.264.

Each socket is one viewer. After admission the server says it is ready
(``{"type": "status", ...}``); the client's offer is answered with a peer
connection whose one video track sends the device's H.264 access units as the
encoder made them, the same packets for every peer. The peer lives in a task of
the socket: when the socket ends (the client left, the session was deleted, the
server is shutting down) that task is cancelled and the peer connection closed.

A quality or fps message changes nothing for anyone else: ios-bridge restarted
its single shared stream for it, cutting every other viewer off. Here it is this
viewer's recorded preference, acknowledged as ios-bridge acknowledges it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import trio

from .._bridge import Bridge
from .._errors import BadInput
from .._settings import Settings
from .._webrtc.loop import AsyncioThread
from .._webrtc.peer import Peer, PeerOptions, ice_servers_from, open_peer
from .._webrtc.signalling import (
    QUALITY_PRESETS,
    Candidate,
    Offer,
    Preference,
    StatusRequest,
    parse_signal,
)
from .json_codec import encode_json

log = logging.getLogger("bridge_actors.webrtc")

__all__ = ["WebRTCViewers", "serve_signalling"]

OUTBOX_SIZE = 64
# The error codes ios-bridge's signalling sends, for the failure of each message type.
ERROR_CODES = {
    "offer": "OFFER_FAILED",
    "ice-candidate": "ICE_CANDIDATE_FAILED",
    "quality-change": "QUALITY_CHANGE_FAILED",
    "start-stream": "QUALITY_CHANGE_FAILED",
    "status-request": "STATUS_REQUEST_FAILED",
}


@dataclass(frozen=True, slots=True)
class WebRTCStatistics:
    peers: int  # open now
    peers_opened: int
    peers_connected: int  # ever reached "connected"
    peers_failed: int  # ended "failed" or timed out connecting
    keyframe_requests: int  # PLI/FIR passed to the encoder
    loop_running: bool
    loop_tasks: int  # asyncio tasks alive on the WebRTC loop


class WebRTCViewers:
    """The WebRTC peers of one app and the asyncio thread they live on.

    The thread starts with the first peer and stops with :meth:`stop` (at server
    shutdown, once every socket has ended)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.thread = AsyncioThread("bridge-webrtc")
        self.options = PeerOptions(
            ice_servers=ice_servers_from(
                settings.webrtc_ice_servers,
                settings.webrtc_turn_username,
                settings.webrtc_turn_credential.get_secret_value(),
            ),
            host_addresses=settings.webrtc_host_addresses,
        )
        self.peers = self.peers_opened = self.peers_connected = self.peers_failed = 0
        self.keyframe_requests = 0

    @asynccontextmanager
    async def peer(self, request_keyframe: Callable[[], object]) -> AsyncIterator[Peer]:
        def requested() -> None:
            self.keyframe_requests += 1
            request_keyframe()

        self.peers += 1
        self.peers_opened += 1
        try:
            async with open_peer(self.thread, self.options, requested) as peer:
                yield peer
        finally:
            self.peers -= 1

    async def stop(self) -> None:
        await self.thread.stop()

    async def statistics(self) -> WebRTCStatistics:
        tasks = 0
        if self.thread.running:
            with trio.move_on_after(2):
                tasks = await self.thread.run(_count_tasks)
        return WebRTCStatistics(
            peers=self.peers,
            peers_opened=self.peers_opened,
            peers_connected=self.peers_connected,
            peers_failed=self.peers_failed,
            keyframe_requests=self.keyframe_requests,
            loop_running=self.thread.running,
            loop_tasks=tasks,
        )

    async def statistics_document(self) -> dict[str, Any]:
        return asdict(await self.statistics())


async def _count_tasks() -> int:
    current = asyncio.current_task()
    return sum(1 for task in asyncio.all_tasks() if task is not current)


def error_message(error: BadInput | str, code: str) -> str:
    """ios-bridge's error shape (``error``, ``code``) with ours (``message``) beside it."""
    text = f"webrtc: {error}"
    return encode_json({"type": "error", "message": text, "error": text, "code": code})


class _Signalling:
    """The state of one signalling socket: its peer (if any), its preference."""

    def __init__(
        self, bridge: Bridge, viewers: WebRTCViewers, session_id: str, outbox, nursery, guard
    ) -> None:
        self.bridge = bridge
        self.viewers = viewers
        self.session_id = session_id
        self.outbox = outbox
        self.nursery = nursery
        self.guard = guard
        self.peer: Peer | None = None
        self.connection_id: str | None = None
        self.quality = "high"
        self.fps: float | None = None

    def status(self, kind: str = "status") -> dict[str, Any]:
        session = self.bridge.get_session(self.session_id)
        return {
            "type": kind,
            "message": "WebRTC ready: send an offer" if self.peer is None else "WebRTC peer open",
            "stream_active": True,
            "webrtc_active": self.peer is not None,
            "connection_id": self.connection_id,
            "connection_state": self.peer.state if self.peer is not None else None,
            "quality": self.quality,
            "quality_settings": dict(QUALITY_PRESETS[self.quality]),
            "codec": "H264",
            "udid": session.device.udid,
            "ready_for_connection": self.peer is None,
        }

    async def handle(self, signal: Offer | Candidate | Preference | StatusRequest) -> dict | None:
        if isinstance(signal, Offer):
            return await self.offer(signal.sdp)
        if isinstance(signal, Candidate):
            if self.peer is None:
                raise BadInput("candidate", "no peer connection yet: send the offer first")
            await self.peer.add_candidate(signal)
            return {
                "type": "ice-candidate-processed",
                "connection_id": self.connection_id,
                "connection_state": self.peer.state,
            }
        if isinstance(signal, Preference):
            if signal.quality is not None:
                self.quality = signal.quality
            if signal.fps is not None:
                self.fps = signal.fps
            return {
                "type": "quality-changed" if signal.kind == "quality-change" else "stream-started",
                "success": True,
                "quality": self.quality,
                "settings": dict(QUALITY_PRESETS[self.quality]),
                "fps": self.fps,
                # One H.264 stream serves every viewer of the device; it is not restarted.
                "applies_to": "this viewer",
            }
        return self.status("status-response")

    async def offer(self, sdp: str) -> dict[str, Any]:
        if self.peer is not None:
            raise BadInput(
                "type", "this socket has a peer already; open a new socket to renegotiate"
            )
        answer = await self.nursery.start(self._run_peer, sdp)
        return {
            "type": "answer",
            "sdp": answer,
            "connection_id": self.connection_id,
            "stream_info": {"udid": self.bridge.get_session(self.session_id).device.udid},
        }

    async def _run_peer(self, sdp: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        viewers = self.viewers
        try:
            async with self.bridge.h264_feed(self.session_id) as feed:
                self.guard(feed.lifeline)
                async with viewers.peer(feed.request_keyframe) as peer:
                    answer = await peer.answer(sdp)
                    self.peer, self.connection_id = peer, uuid.uuid4().hex
                    task_status.started(answer)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, feed, peer)
                        state = await self._watch(peer)
                        nursery.cancel_scope.cancel()
                    if state != "closed":
                        await self.outbox.send(
                            error_message(f"peer connection {state}", "CONNECTION_FAILED")
                        )
        finally:
            self.peer = None
            self.connection_id = None

    async def _watch(self, peer: Peer) -> str:
        """Tell the client each state of its peer until the peer fails or closes (or does
        not connect in time); returns how it ended."""
        timeout = self.bridge.settings.webrtc_connect_timeout
        deadline = trio.current_time() + timeout
        reported = None
        while True:
            if peer.state != reported:
                reported = peer.state
                await self.outbox.send(encode_json({"type": "connection-state", "state": reported}))
                if reported == "connected":
                    self.viewers.peers_connected += 1
                    deadline = math.inf
            if peer.state in ("failed", "closed"):
                self.viewers.peers_failed += peer.state == "failed"
                return peer.state
            with trio.move_on_at(deadline):
                await peer.changed()
            if trio.current_time() >= deadline:
                self.viewers.peers_failed += 1
                return f"not connected within {timeout:g}s"


async def _pump(feed, peer: Peer) -> None:
    """Every access unit of the device's encoder, to this peer, as it was encoded."""
    while True:
        peer.send(await feed.receive())


async def _send_all(ws, outbox: trio.MemoryReceiveChannel[str]) -> None:
    async for message in outbox:
        await ws.send(message)


async def serve_signalling(
    bridge: Bridge,
    viewers: WebRTCViewers,
    ws,
    session_id: str,
    guard,
    decode_message: Callable[[Any], dict[str, Any]],
    bad_messages: Callable[[], Any],
) -> None:
    """The body of one admitted WebRTC signalling socket."""
    send, outbox = trio.open_memory_channel[str](OUTBOX_SIZE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_all, ws, outbox)
        signalling = _Signalling(bridge, viewers, session_id, send, nursery, guard)
        await send.send(encode_json(signalling.status()))
        bad = bad_messages()
        while True:
            message = await ws.receive()
            kind = "message"
            try:
                decoded = decode_message(message)
                kind = decoded.get("type") if isinstance(decoded.get("type"), str) else "message"
                reply = await signalling.handle(parse_signal(decoded))
            except BadInput as error:
                bad.bad()
                await send.send(error_message(error, ERROR_CODES.get(kind, "BAD_MESSAGE")))
                continue
            bad.good()
            if reply is not None:
                await send.send(encode_json(reply))
