"""One WebRTC viewer: an aiortc RTCPeerConnection on the asyncio thread, owned from Trio.

:func:`open_peer` is the only way to make one. It yields a :class:`Peer` whose
connection lives exactly as long as the ``async with`` block: leaving the block
for any reason, cancellation included, closes the connection in a shielded,
bounded call on the asyncio loop. So a viewer whose socket goes away, whose
session is deleted or whose server shuts down never leaves a peer connection,
a UDP socket or an asyncio task behind.

The peer sends the packets it is given (:meth:`Peer.send`) as they are; a
PLI or FIR from the browser, which aiortc only honours when it encodes itself,
is passed to ``on_keyframe_request`` (the shared encoder's ``request_keyframe``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioice.ice
import trio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpsender import RTCRtpSender as _Sender
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket
from aiortc.sdp import candidate_from_sdp

from .._errors import BadInput
from .loop import AsyncioThread
from .signalling import Candidate, usable_candidate, usable_offer_sdp
from .track import EncodedVideoTrack, PacketLike, TrackStatistics

log = logging.getLogger("bridge_actors.webrtc")

__all__ = ["IceServer", "Peer", "PeerOptions", "PeerStatistics", "open_peer"]

CLOSE_TIMEOUT = 5.0
# What aiortc raises for a description or candidate it cannot use.
_REFUSALS = (
    ValueError,
    TypeError,
    LookupError,
    AssertionError,
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
)


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class PeerOptions:
    ice_servers: tuple[IceServer, ...] = ()
    # The local addresses host candidates are gathered on; empty means every
    # interface but loopback (aioice's own choice).
    host_addresses: tuple[str, ...] = ("127.0.0.1",)
    max_queued: int = 90


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    connection_state: str
    ice_connection_state: str
    keyframe_requests: int
    track: TrackStatistics


# --- which addresses ICE gathers on ---------------------------------------------------------
#
# aioice gathers host candidates on every interface except 127.0.0.1 and offers no
# way to say otherwise through aiortc. Its module-level helper is replaced once by
# one that answers with the addresses of the peer being answered (a context
# variable, set in that peer's own asyncio task) and defers to aioice elsewhere.

_HOST_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "bridge_webrtc_host_addresses", default=None
)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _HOST_ADDRESSES.get()
    if not chosen:
        return _aioice_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


aioice.ice.get_host_addresses = _host_addresses


# --- the asyncio side -----------------------------------------------------------------------


class _AsyncioPeer:
    """What lives on the loop: the connection, its track, and the RTCP hook."""

    def __init__(
        self,
        options: PeerOptions,
        on_keyframe_request: Callable[[], None],
        on_state: Callable[[str], None],
    ) -> None:
        servers = [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in options.ice_servers
        ]
        # An explicit empty list: aiortc's default is a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.options = options
        self.track = EncodedVideoTrack(
            max_queued=options.max_queued, on_first_read=on_keyframe_request
        )
        self.keyframe_requests = 0
        self._on_keyframe_request = on_keyframe_request

        @self.pc.on("connectionstatechange")
        def _changed() -> None:
            on_state(self.pc.connectionState)

    async def answer(self, offer_sdp: str) -> str:
        _HOST_ADDRESSES.set(self.options.host_addresses)
        # The transceiver exists before the offer is applied, so that its codec
        # preferences (H.264 only: that is what the encoder makes) are what the
        # offer is matched against; applying the offer adopts it for the video m-line.
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        self._hook_rtcp(transceiver.sender)
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType.lower() in ("video/h264", "video/rtx")]
        )
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=usable_offer_sdp(offer_sdp), type="offer")
        )
        if transceiver.mid is None:
            raise BadInput("sdp", "offers no video m-line we can send on")
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _hook_rtcp(self, sender: _Sender) -> None:
        handle = sender._handle_rtcp_packet

        async def handle_rtcp_packet(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.keyframe_requests += 1
                self._on_keyframe_request()
            await handle(packet)

        sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]

    async def add_candidate(self, candidate: Candidate) -> None:
        if candidate.candidate is None:
            await self.pc.addIceCandidate(None)
            return
        if not usable_candidate(candidate):
            return
        try:
            parsed = candidate_from_sdp(candidate.candidate)
        except (ValueError, IndexError):
            raise BadInput("candidate", "is not an ICE candidate line (RFC 8839)") from None
        parsed.sdpMid = candidate.sdp_mid
        parsed.sdpMLineIndex = candidate.sdp_mline_index
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        await self.pc.addIceCandidate(parsed)

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            connection_state=self.pc.connectionState,
            ice_connection_state=self.pc.iceConnectionState,
            keyframe_requests=self.keyframe_requests,
            track=self.track.statistics(),
        )


async def _create(
    options: PeerOptions, on_keyframe_request: Callable[[], None], on_state: Callable[[str], None]
) -> _AsyncioPeer:
    return _AsyncioPeer(options, on_keyframe_request, on_state)


async def _statistics(peer: _AsyncioPeer) -> PeerStatistics:
    return peer.statistics()


# --- the Trio side --------------------------------------------------------------------------


class Peer:
    """The Trio handle of one peer connection; see :func:`open_peer`."""

    def __init__(self, thread: AsyncioThread) -> None:
        self._thread = thread
        self._inner: _AsyncioPeer | None = None
        self.state = "new"
        self._changed = trio.Event()

    def _set_state(self, state: str) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    async def answer(self, offer_sdp: str) -> str:
        """Apply the browser's offer; returns our answer's SDP, with all our candidates
        (aiortc gathers before it answers, so no candidate of ours trickles later)."""
        assert self._inner is not None
        try:
            return await self._thread.run(self._inner.answer, offer_sdp)
        except BadInput:
            raise
        except _REFUSALS as exc:
            # aiortc's word for an offer it cannot use (a malformed SDP, no common codec).
            raise BadInput("sdp", f"cannot be answered: {exc or type(exc).__name__}") from None

    async def add_candidate(self, candidate: Candidate) -> None:
        assert self._inner is not None
        try:
            await self._thread.run(self._inner.add_candidate, candidate)
        except BadInput:
            raise
        except _REFUSALS as exc:
            raise BadInput("candidate", f"was refused: {exc or type(exc).__name__}") from None

    def send(self, packet: PacketLike) -> None:
        """Queue one access unit for this peer (it is sent as it is, never re-encoded)."""
        assert self._inner is not None
        self._thread.call_soon(self._inner.track.put, packet)

    async def changed(self) -> None:
        """Wait for the connection state to change."""
        await self._changed.wait()

    async def wait_state(self, *states: str) -> str:
        """Wait until the connection state is one of ``states``; returns it."""
        while self.state not in states:
            await self._changed.wait()
        return self.state

    async def statistics(self) -> PeerStatistics:
        assert self._inner is not None
        return await self._thread.run(_statistics, self._inner)


@asynccontextmanager
async def open_peer(
    thread: AsyncioThread,
    options: PeerOptions,
    on_keyframe_request: Callable[[], None],
) -> AsyncIterator[Peer]:
    """A peer connection for the duration of the block; always closed on the way out.

    ``on_keyframe_request`` is called in this Trio thread when the browser asks
    for a keyframe (PLI/FIR), and when the peer starts sending."""
    token = trio.lowlevel.current_trio_token()
    peer = Peer(thread)

    def from_asyncio(fn: Callable[..., object], *args: Any) -> Callable[..., None]:
        def call(*more: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn, *args, *more)

        return call

    # Shielded: a peer made on the loop while we were being cancelled would be lost.
    with trio.CancelScope(shield=True):
        peer._inner = await thread.run(
            _create, options, from_asyncio(on_keyframe_request), from_asyncio(peer._set_state)
        )
    try:
        yield peer
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT) as late:
            await thread.run(peer._inner.close)
        if late.cancelled_caught:
            log.warning("a WebRTC peer connection took over %ss to close", CLOSE_TIMEOUT)


def ice_servers_from(
    urls: Sequence[str], username: str | None, credential: str | None
) -> tuple[IceServer, ...]:
    """The configured ICE servers: STUN URLs alone, TURN URLs with the credentials."""
    servers = []
    for url in urls:
        if url.lower().startswith(("turn:", "turns:")):
            servers.append(IceServer((url,), username or None, credential or None))
        else:
            servers.append(IceServer((url,)))
    return tuple(servers)
