"""One H.264 encoder per device, shared by every H.264 viewer of it.

An :class:`EncoderService` is started by its device's first H.264 feed. While
it has feeds it watches the device's capture like any viewer, through a
one-frame slot, so it always encodes the newest frame and never holds the
capture back: when the encoder is slower than the capture, frames are skipped
before encoding, not queued. Encoding runs in a worker thread under a CapacityLimiter shared by all
encoders, so the event loop never waits on the codec and the machine is not
oversubscribed. When the last feed leaves the service stops watching the
capture at once (so the capture may go idle) and lives ``idle_timeout``
longer, then cancels itself.

Every packet is handed to every feed's :class:`FeedSlot` without waiting. A
feed that falls ``backlog`` packets behind drops what it has and resumes at
the next keyframe (a P-frame without the frames before it decodes to grey),
which it asks for as a joiner does, so its picture freezes for a frame rather
than up to an interval when the gate allows; one that takes nothing past the
deadline is evicted, as JPEG viewers are.

A joining feed must not wait for the next natural keyframe: either an IDR is
forced for it (``join="idr"``; the :class:`KeyframeGate` allows one forced IDR
per keyframe interval, so a crowd joining costs one, and the rest of the crowd
waits for the next keyframe), or it is sent the current GOP from its IDR
(``join="gop"``), or an IDR is forced when the gate allows and the GOP replayed
when it does not (``join="idr_or_gop"``: the replay is then short, as the GOP
began at a forced IDR less than an interval ago).

A device that streams H.264 itself (``passthrough``) is not encoded while it
has no JPEG viewer: the service relays that stream's access units as they are,
under a Supervisor of its own, and switches to encoding the JPEG capture the
moment a JPEG viewer arrives (and back when the last one leaves). Each switch
starts the new stream at an IDR, so no feed ever gets a frame of one stream
after the other's. A relayed stream's IDRs cannot be forced: a joining feed is
sent the current GOP from its IDR, if it was short enough to keep
(``replay_max_frames``, ``replay_max_bytes``), else it waits for the next IDR.

The codec itself is given (``make_encoder``): this module never imports PyAV.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, Protocol

import trio

from .._device import Frame
from .._errors import CaptureFailed, CaptureStopped, ServerBusy, ViewerEvicted
from .._services.handoff import Handoff, Sink
from .._services.lifeline import Lifeline
from .._services.supervision import Supervisor
from .h264 import (
    TIME_BASE,
    H264Error,
    NalType,
    join_annexb,
    parse_sps,
    split_annexb,
    with_parameter_sets,
)
from .passthrough import Passthrough

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("bridge_actors.h264")

__all__ = [
    "EncodedPacket",
    "EncoderConfig",
    "EncoderPool",
    "EncoderService",
    "EncoderStatistics",
    "FeedSlot",
    "FrameEncoder",
    "H264Feed",
    "KeyframeGate",
]

JoinPolicy = Literal["idr", "gop", "idr_or_gop"]


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    data: bytes  # one access unit, Annex B; an IDR carries SPS/PPS in front
    keyframe: bool
    pts: int  # in time_base units
    time_base: Fraction  # Fraction(1, 90000)
    frame_number: int  # the capture's frame number it was encoded from
    captured_at: float  # trio.current_time() of the capture
    timestamp: float = 0.0  # wall clock of the capture, epoch seconds
    input_seq: int = 0  # the last control applied before the capture


class FrameEncoder(Protocol):
    """A codec for one picture size, used from one worker thread at a time."""

    def encode(
        self, picture: bytes | np.ndarray, pts: int, keyframe: bool
    ) -> list[tuple[bytes, int]]:
        """Encode one frame's picture (a JPEG, or RGB pixels: see :attr:`Frame.picture`);
        returns ``(Annex B access unit, pts)`` per packet."""
        ...

    def close(self) -> None: ...


EncoderFactory = Callable[[int, int], FrameEncoder]
FrameSource = Callable[[], AbstractAsyncContextManager]


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    keyframe_interval: float = 2.0
    join: JoinPolicy = "idr"
    backlog: int = 10
    feed_deadline: float = 5.0
    idle_timeout: float = 300.0
    # The GOP kept for joiners; a longer one (a relayed stream's) is not kept.
    replay_max_frames: int = 300
    replay_max_bytes: int = 8_000_000
    # Restart intensity of a relayed stream; past it the service encodes instead.
    restart_max: int = 5
    restart_period: float = 30.0
    restart_backoff_initial: float = 0.1
    restart_backoff_max: float = 5.0


class KeyframeGate:
    """When the next frame must be an IDR: once per interval, or sooner on request.

    Pure. Requests are granted at most once per ``interval`` (counted from the
    last granted one), so any number of joins or decoder errors within an
    interval cost one extra IDR.
    """

    __slots__ = ("_last_forced", "_last_keyframe", "_requested", "granted", "interval", "refused")

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"keyframe interval must be positive, not {interval!r}")
        self.interval = float(interval)
        self._last_keyframe: float | None = None
        self._last_forced: float | None = None
        self._requested = False
        self.granted = 0
        self.refused = 0

    def request(self, now: float, *, counted: bool = True) -> bool:
        """Ask for an IDR at the next frame; True if one will come (granted or already due).

        ``counted=False`` for the encoder's own asking (a feed that skipped): a refusal
        of it is not a viewer's or joiner's refusal, and is not counted as one.
        """
        if self._requested or self.due(now):
            return True
        if self._last_forced is not None and now - self._last_forced < self.interval:
            self.refused += counted
            return False
        self._requested = True
        self._last_forced = now
        self.granted += 1
        return True

    def restart(self) -> None:
        """The stream starts afresh (new codec, nobody saw the GOP): the next frame is an IDR."""
        self._last_keyframe = None

    def due(self, now: float) -> bool:
        return (
            self._requested
            or self._last_keyframe is None
            or now - self._last_keyframe >= self.interval
        )

    def keyframe_made(self, now: float) -> None:
        self._last_keyframe = now
        self._requested = False


class FeedSlot:
    """The pure part of one H.264 feed: the packets waiting for it, and where it may start.

    A feed starts, and after falling ``backlog`` packets behind restarts, at a
    keyframe; until then packets are dropped. ``stalled_since`` is the eviction
    clock, as in :class:`~bridge_actors._services.fanout.ViewerSlot`: when the feed
    last made progress while something was waiting for it. Packets replayed on
    join do not count against the backlog.
    """

    __slots__ = (
        "backlog",
        "delivered",
        "dropped",
        "key",
        "last_frame_number",
        "pending",
        "replayed_pending",
        "skips",
        "stalled_since",
        "waiting_for_keyframe",
    )

    def __init__(self, key: int, backlog: int) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {backlog}")
        self.key = key
        self.backlog = backlog
        self.pending: deque[EncodedPacket] = deque()
        self.replayed_pending = 0
        self.stalled_since: float | None = None
        self.waiting_for_keyframe = True
        self.delivered = 0
        self.dropped = 0
        self.skips = 0
        self.last_frame_number = 0

    def replay(self, gop: list[EncodedPacket], now: float) -> None:
        """Start with the current GOP (from its IDR) instead of waiting for the next keyframe."""
        if not gop or not gop[0].keyframe or self.pending:
            return
        self.pending.extend(gop)
        self.replayed_pending = len(gop)
        self.waiting_for_keyframe = False
        self.stalled_since = now

    def offer(self, packet: EncodedPacket, now: float) -> None:
        if self.waiting_for_keyframe and not packet.keyframe:
            self.dropped += 1
            return
        if len(self.pending) - self.replayed_pending >= self.backlog:
            # Behind: what waits is worthless without what was dropped before it.
            self.dropped += len(self.pending)
            self.pending.clear()
            self.replayed_pending = 0
            self.skips += 1
            if not packet.keyframe:
                self.dropped += 1
                self.waiting_for_keyframe = True
                return
        self.waiting_for_keyframe = False
        if not self.pending and self.stalled_since is None:
            self.stalled_since = now
        self.pending.append(packet)

    def take(self, now: float) -> EncodedPacket | None:
        if not self.pending:
            # Asking with nothing waiting is progress: a feed waiting for a keyframe
            # after a skip is not stalled.
            self.stalled_since = None
            return None
        packet = self.pending.popleft()
        if self.replayed_pending:
            self.replayed_pending -= 1
        self.delivered += 1
        self.last_frame_number = packet.frame_number
        self.stalled_since = now if self.pending else None
        return packet

    def is_stalled(self, now: float, deadline: float) -> bool:
        return self.stalled_since is not None and now - self.stalled_since > deadline


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    key: int
    delivered: int
    dropped: int
    skips: int
    pending: int


class H264Feed:
    """One viewer of a device's H.264 stream: ``await feed.receive()`` for each access unit.

    The first packet is always a keyframe. Raises why the feed ended
    (ViewerEvicted, CaptureStopped, CaptureFailed) once nothing is left to take.

    With a sink (:meth:`deliver_to`, see :mod:`.._services.handoff`), a packet
    published while the viewer's task waits in :meth:`receive` goes to the sink
    there and then, and the task sleeps on.
    """

    def __init__(self, service: EncoderService, slot: FeedSlot) -> None:
        self._service = service
        self._slot = slot
        self._handoff: Handoff[EncodedPacket] = Handoff()
        self.lifeline = Lifeline()

    def deliver_to(self, sink: Sink[EncodedPacket] | None) -> None:
        self._handoff.deliver_to(sink)

    @property
    def key(self) -> int:
        return self._slot.key

    @property
    def codec(self) -> str | None:
        """The ``avc1.PPCCLL`` codec string, once the first keyframe was encoded."""
        return self._service.codec

    def request_keyframe(self) -> bool:
        """Ask for an IDR soon (a decoder lost sync); rate-limited, True if one will come."""
        return self._service.request_keyframe()

    async def receive(self) -> EncodedPacket:
        await trio.lowlevel.checkpoint()
        while True:
            await self._handoff.finish()
            if self.lifeline.reason is not None:
                raise self.lifeline.reason
            now = trio.current_time()
            # A joiner's replayed GOP, or what came while the socket was full, goes out
            # at once: sent a packet at a time under a crowd of joiners, a replay fell
            # behind the live packets and skipped. (A JPEG viewer has two frames at most
            # waiting and sends them itself: handing them over measured slower there.)
            if self._handoff.can_hand_over():
                if self._handoff.hand_over(self._slot.take, now):
                    await self._handoff.wait()
                continue
            packet = self._slot.take(now)
            if packet is not None:
                return packet
            await self._handoff.wait()

    def __aiter__(self) -> H264Feed:
        return self

    async def __anext__(self) -> EncodedPacket:
        return await self.receive()

    def _wake(self) -> None:
        self._handoff.wake()

    def _offered(self, now: float) -> None:
        self._handoff.offered(self._slot.take, now)

    def close(self, reason: BaseException) -> None:
        self.lifeline.cut(reason)
        self._wake()

    def statistics(self) -> FeedStatistics:
        slot = self._slot
        return FeedStatistics(slot.key, slot.delivered, slot.dropped, slot.skips, len(slot.pending))


@dataclass(frozen=True, slots=True)
class EncoderStatistics:
    udid: str
    state: str
    codec: str | None
    feeds: int
    frames_encoded: int
    keyframes: int
    forced_keyframes: int
    keyframe_requests_refused: int
    bytes_encoded: int
    encode_seconds: float
    evicted: int
    per_feed: tuple[FeedStatistics, ...]
    h264_source: str = "encoder"  # "passthrough": the device's own H.264, relayed
    frames_passed_through: int = 0
    passthrough_dropped: int = 0  # relayed access units before the stream's first IDR
    passthrough_restarts: int = 0
    passthrough_failure: str | None = None  # why it encodes for good, if it gave up
    source_switches: int = 0


class EncoderService:
    """The actor encoding one device's frames to H.264 for its feeds."""

    def __init__(
        self,
        udid: str,
        frames: FrameSource,
        make_encoder: EncoderFactory,
        config: EncoderConfig,
        limiter: trio.CapacityLimiter,
        run_in_worker=trio.to_thread.run_sync,
        passthrough: Passthrough | None = None,
    ) -> None:
        self.udid = udid
        self._passthrough = passthrough
        self.source = "passthrough" if passthrough is not None else "encoder"
        self._source_ran = False
        self.frames_passed_through = 0
        self.passthrough_dropped = 0
        self.passthrough_failure: str | None = None
        self.source_switches = 0
        self._synced = False
        self._frame_number = 0
        self._gop_bytes = 0
        self.passthrough_supervisor = Supervisor(
            name=f"H.264 stream {udid}",
            max_restarts=config.restart_max,
            period=config.restart_period,
            backoff_initial=config.restart_backoff_initial,
            backoff_max=config.restart_backoff_max,
        )
        self._run_in_worker = run_in_worker
        self._frames = frames
        self._make_encoder = make_encoder
        self.config = config
        self._limiter = limiter
        self.gate = KeyframeGate(config.keyframe_interval)
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.state = "starting"
        self.stop_reason: str | None = None
        self.codec: str | None = None
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.last_used = trio.current_time()
        self._feeds: dict[int, H264Feed] = {}
        self._next_key = 0
        self._gop: list[EncodedPacket] = []
        self._feeds_changed = trio.Event()
        self._encoder: FrameEncoder | None = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._epoch: float | None = None
        self.frames_encoded = 0
        self.keyframes = 0
        self.bytes_encoded = 0
        self.encode_seconds = 0.0
        self.evicted = 0

    # -- feeds -------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.state in ("starting", "running") and not self.scope.cancel_called

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    def attach(self) -> H264Feed:
        self._next_key += 1
        slot = FeedSlot(self._next_key, self.config.backlog)
        now = trio.current_time()
        join = self.config.join
        if self.source == "passthrough":
            slot.replay(self._gop, now)  # a relayed stream's IDRs cannot be forced
        elif join == "gop" or (join == "idr_or_gop" and not self.gate.request(now)):
            slot.replay(self._gop, now)
        elif join == "idr":
            self.gate.request(now)
        feed = H264Feed(self, slot)
        self._feeds[slot.key] = feed
        self._notify()
        return feed

    def detach(self, feed: H264Feed) -> None:
        if self._feeds.pop(feed.key, None) is not None:
            self.last_used = trio.current_time()
            self._notify()

    def request_keyframe(self) -> bool:
        return self._request_keyframe(counted=True)

    def _request_keyframe(self, *, counted: bool) -> bool:
        if self.source == "passthrough":
            return False
        return self.gate.request(trio.current_time(), counted=counted)

    def _notify(self) -> None:
        self._feeds_changed.set()
        self._feeds_changed = trio.Event()

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()

    def _close_all(self, reason: type[BaseException], message: str) -> None:
        for feed in list(self._feeds.values()):
            self.detach(feed)
            feed.close(reason(message))

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                task_status.started()
                self.state = "running"
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._stop_when_idle)
                        if self._passthrough is not None:
                            nursery.start_soon(self._relay_demand, self._passthrough)
                        await self._produce()
                except* Exception as group:
                    failure = group.exceptions[0]
                    if not isinstance(failure, CaptureStopped | CaptureFailed):
                        log.error("H.264 encoder of %s failed", self.udid, exc_info=failure)
                        failure = CaptureFailed(f"H.264 encoder failed: {failure!r}")
                    if isinstance(failure, CaptureFailed):
                        self.state = "failed"
                    elif self.stop_reason is None:
                        self.stop_reason = str(failure)
                    self._close_all(type(failure), str(failure))
        finally:
            if self.state != "failed":
                self.state = "stopped"
            self._close_all(
                CaptureStopped, f"H.264 encoder stopped: {self.stop_reason or 'shutting down'}"
            )
            if self._encoder is not None:
                self._encoder.close()
                self._encoder = None
            self.done.set()

    async def _relay_demand(self, passthrough: Passthrough) -> None:
        """Wake whatever waits on the feeds when the device's JPEG viewers change too."""
        while True:
            await passthrough.wait_changed()
            self._notify()

    def _passthrough_wanted(self) -> bool:
        return (
            self._passthrough is not None
            and self.passthrough_failure is None
            and self._passthrough.jpeg_viewers == 0
        )

    async def _produce(self) -> None:
        while True:
            # Watching a source only while someone watches us: an idle encoder must
            # not keep its capture (or idb) from going idle too.
            while not self._feeds:
                await self._feeds_changed.wait()
            source = "passthrough" if self._passthrough_wanted() else "encoder"
            if source != self.source and self._source_ran:
                self.source_switches += 1
            self.source, self._source_ran = source, True
            async with trio.open_nursery() as nursery:
                wanted = source == "passthrough"
                nursery.start_soon(self._end_when_switching, nursery.cancel_scope, wanted)
                if wanted:
                    await self._pass_through()
                else:
                    await self._encode_capture()
                nursery.cancel_scope.cancel()
            # Whoever comes next, on whichever source, starts at a fresh IDR.
            self.gate.restart()
            self._gop = []
            self._gop_bytes = 0
            self.sps = self.pps = None

    async def _end_when_switching(self, scope: trio.CancelScope, passing_through: bool) -> None:
        while self._feeds and self._passthrough_wanted() == passing_through:
            await self._feeds_changed.wait()
        scope.cancel()

    async def _encode_capture(self) -> None:
        try:
            async with self._frames() as viewer:
                async for frame in viewer:
                    if not self._feeds:
                        break
                    await self._encode(frame)
        except ViewerEvicted as evicted:
            # The codec was slower than the deadline for a while; start again from
            # the capture's newest frame rather than give up on every feed.
            log.warning("H.264 encoder of %s fell behind its capture: %s", self.udid, evicted)

    async def _pass_through(self) -> None:
        assert self._passthrough is not None
        stream = self._passthrough.stream

        async def relay_once() -> None:
            self._synced = False  # a new stream: relay nothing before its first IDR
            await stream(self._relay)

        try:
            await self.passthrough_supervisor.run(relay_once)
        except CaptureFailed as failure:
            log.error("%s; encoding the JPEG capture instead", failure)
            self.passthrough_failure = str(failure)

    def _relay(self, access_unit: bytes) -> None:
        """One access unit of the device's own stream, to every feed as it is."""
        now = trio.current_time()
        units = split_annexb(access_unit)
        self._adopt_parameter_sets(units)
        keyframe = any(unit[0] & 0x1F == NalType.SLICE_IDR for unit in units)
        if keyframe and (self.sps is None or self.pps is None):
            keyframe = False  # cannot be started from: not a sync point for us
        if not self._synced and not keyframe:
            self.passthrough_dropped += 1
            return
        self._synced = True
        if keyframe:
            access_unit = self._with_parameter_sets(access_unit, units)
        self._frame_number += 1
        self.frames_passed_through += 1
        assert self._passthrough is not None
        self._publish(
            EncodedPacket(
                data=access_unit,
                keyframe=keyframe,
                pts=self._pts_for(now),
                time_base=TIME_BASE,
                frame_number=self._frame_number,
                captured_at=now,
                timestamp=time.time(),
                input_seq=self._passthrough.input_seq(),
            )
        )

    async def _encode(self, frame: Frame) -> None:
        size = (frame.pixel_width, frame.pixel_height)
        if self._encoder is None or size != self._size:
            if self._encoder is not None:
                self._encoder.close()
            self._encoder = await self._run_in_worker(
                self._make_encoder, *size, limiter=self._limiter
            )
            self._size = size
            self.gate.restart()
        keyframe = self.gate.due(frame.captured_at)
        pts = self._pts_for(frame.captured_at)
        encoder = self._encoder
        started = trio.current_time()
        encoded = await self._run_in_worker(
            encoder.encode, frame.picture, pts, keyframe, limiter=self._limiter
        )
        self.encode_seconds += trio.current_time() - started
        self.frames_encoded += 1
        self._frame_number = frame.seq
        for data, packet_pts in encoded:
            self._publish(self._packet(data, packet_pts, frame))

    def _pts_for(self, captured_at: float) -> int:
        if self._epoch is None:
            self._epoch = captured_at
        pts = max(round((captured_at - self._epoch) * TIME_BASE.denominator), self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _packet(self, data: bytes, pts: int, frame: Frame) -> EncodedPacket:
        units = split_annexb(data)
        keyframe = any(unit[0] & 0x1F == NalType.SLICE_IDR for unit in units)
        if keyframe:
            self._adopt_parameter_sets(units)
            if self.sps is None or self.pps is None:
                raise H264Error("the encoder's first IDR came without SPS and PPS")
            data = self._with_parameter_sets(data, units)
        return EncodedPacket(
            data=data,
            keyframe=keyframe,
            pts=pts,
            time_base=TIME_BASE,
            frame_number=frame.seq,
            captured_at=frame.captured_at,
            timestamp=frame.timestamp,
            input_seq=frame.input_seq,
        )

    def _adopt_parameter_sets(self, units: list[bytes]) -> None:
        for unit in units:
            kind = unit[0] & 0x1F
            if kind == NalType.SPS:
                self._adopt_sps(unit)
            elif kind == NalType.PPS:
                self.pps = unit

    def _with_parameter_sets(self, data: bytes, units: list[bytes]) -> bytes:
        """An IDR's access unit with the latest SPS and PPS in front, if it lacks them."""
        assert self.sps is not None and self.pps is not None
        fixed = with_parameter_sets(units, self.sps, self.pps)
        return data if fixed is units else join_annexb(fixed)

    def _adopt_sps(self, unit: bytes) -> None:
        if unit != self.sps:
            self.codec = parse_sps(unit).codec
            self.sps = unit

    def _publish(self, packet: EncodedPacket) -> None:
        now = trio.current_time()
        self.bytes_encoded += len(packet.data)
        if packet.keyframe:
            self.keyframes += 1
            self.gate.keyframe_made(packet.captured_at)
            self._gop = []
            self._gop_bytes = 0
        if self._gop or packet.keyframe:
            self._gop.append(packet)
            self._gop_bytes += len(packet.data)
            if (
                len(self._gop) > self.config.replay_max_frames
                or self._gop_bytes > self.config.replay_max_bytes
            ):
                # Too long to replay: joiners wait for the next IDR instead.
                self._gop = []
                self._gop_bytes = 0
        for feed in list(self._feeds.values()):
            slot = feed._slot
            if slot.is_stalled(now, self.config.feed_deadline):
                self.evicted += 1
                self.detach(feed)
                feed.close(
                    ViewerEvicted(
                        f"H.264 viewer stayed behind for more than {self.config.feed_deadline:g}s "
                        f"(last frame taken: {slot.last_frame_number}, "
                        f"now at {packet.frame_number})"
                    )
                )
                continue
            skips = slot.skips
            slot.offer(packet, now)
            if slot.skips != skips and slot.waiting_for_keyframe:
                # Its picture is frozen until the next IDR: bring one forward, within
                # the gate's one forced IDR per interval.
                self._request_keyframe(counted=False)
            feed._offered(now)

    async def _stop_when_idle(self) -> None:
        while True:
            while self._feeds:
                await self._feeds_changed.wait()
            with trio.move_on_after(self.config.idle_timeout):
                while not self._feeds:
                    await self._feeds_changed.wait()
                continue
            self.stop(f"idle for {self.config.idle_timeout:g}s")
            return

    def statistics(self) -> EncoderStatistics:
        return EncoderStatistics(
            udid=self.udid,
            state=self.state,
            codec=self.codec,
            feeds=len(self._feeds),
            frames_encoded=self.frames_encoded,
            keyframes=self.keyframes,
            forced_keyframes=self.gate.granted,
            keyframe_requests_refused=self.gate.refused,
            bytes_encoded=self.bytes_encoded,
            encode_seconds=self.encode_seconds,
            evicted=self.evicted,
            per_feed=tuple(feed.statistics() for feed in self._feeds.values()),
            h264_source=self.source,
            frames_passed_through=self.frames_passed_through,
            passthrough_dropped=self.passthrough_dropped,
            passthrough_restarts=self.passthrough_supervisor.statistics().restarts,
            passthrough_failure=self.passthrough_failure,
            source_switches=self.source_switches,
        )


class EncoderPool:
    """The actor owning every EncoderService, one per device; a memory-warden target."""

    def __init__(
        self,
        config: EncoderConfig,
        make_encoder: EncoderFactory,
        limiter: trio.CapacityLimiter,
        run_in_worker=trio.to_thread.run_sync,
    ) -> None:
        """``run_in_worker`` runs the codec; tests under MockClock run it inline."""
        self.config = config
        self._make_encoder = make_encoder
        self._limiter = limiter
        self._run_in_worker = run_in_worker
        self._services: dict[str, EncoderService] = {}
        self._nursery: trio.Nursery | None = None
        self._admission = True
        self.services_created = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def get(self, udid: str) -> EncoderService | None:
        return self._services.get(udid)

    def services(self) -> list[EncoderService]:
        return list(self._services.values())

    def _service_for(
        self, udid: str, frames: FrameSource, passthrough: Passthrough | None
    ) -> EncoderService:
        """The device's running encoder or a new one; never awaits (see CapturePool)."""
        current = self._services.get(udid)
        if current is not None and current.accepting:
            return current
        if not self._admission:
            raise ServerBusy("memory is critical: no new H.264 encoder may start")
        assert self._nursery is not None, "EncoderPool is not running"
        service = EncoderService(
            udid,
            frames,
            self._make_encoder,
            self.config,
            self._limiter,
            self._run_in_worker,
            passthrough=passthrough,
        )
        self._services[udid] = service
        self.services_created += 1
        self._nursery.start_soon(self._run_service, service)
        return service

    async def _run_service(self, service: EncoderService) -> None:
        try:
            await service.run()
        finally:
            if self._services.get(service.udid) is service:
                del self._services[service.udid]

    @asynccontextmanager
    async def subscribe(
        self, udid: str, frames: FrameSource, passthrough: Passthrough | None = None
    ) -> AsyncIterator[H264Feed]:
        """One feed of the device's encoder, starting it (watching ``frames()``) if needed.

        With ``passthrough`` a new service relays the device's own H.264 while the
        device has no JPEG viewer.
        """
        await trio.lowlevel.checkpoint()
        service = self._service_for(udid, frames, passthrough)
        feed = service.attach()
        try:
            with feed.lifeline.held():
                yield feed
        finally:
            service.detach(feed)

    def stop_device(self, udid: str, reason: str) -> trio.Event | None:
        service = self._services.get(udid)
        if service is None:
            return None
        service.stop(reason)
        return service.done

    # -- what the MemoryWarden drives --------------------------------------------------------

    def idle_services(self) -> list[tuple[str, float]]:
        return [
            (udid, service.last_used)
            for udid, service in self._services.items()
            if not service.feeds and service.accepting
        ]

    def stop_service(self, key: str, reason: str) -> bool:
        service = self._services.get(key)
        if service is None or service.feeds or not service.accepting:
            return False
        service.stop(reason)
        return True

    def set_capture_admission(self, allowed: bool) -> None:
        self._admission = allowed
