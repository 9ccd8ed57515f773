"""The WebSocket endpoints: video, control, screenshot, logs and WebRTC signalling.

Every endpoint accepts first and then asks the bridge for admission, so a
refused client always learns why from a close code instead of a silent socket.
What a socket does after admission runs inside the connection's lifeline:
deleting the session, evicting the viewer or stopping the capture ends it with
a plain exception, which :func:`close_for` turns into the close code of
docs/protocol.md. The decisions (close codes, frame text, log filters, rates) are
plain functions and classes; the handlers only move bytes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio
from quart import websocket

from .._bridge import Bridge
from .._controls import parse_control
from .._device import DeviceInfo, Frame, LogLine
from .._errors import (
    BadInput,
    BridgeError,
    CaptureFailed,
    CaptureStopped,
    DeviceError,
    RateLimited,
    ServerBusy,
    SessionFull,
    SessionNotFound,
    ViewerEvicted,
)
from .._services.lifeline import Lifeline
from .._services.meter import RateMeter
from .._video.encoder import EncodedPacket, H264Feed
from ..wire import (
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL,
    NOT_FOUND,
    POLICY,
    RATE_LIMITED,
    SESSION_FULL,
    TRY_AGAIN_LATER,
    binary_frame,
    binary_message,
    h264_message,
    screenshot_message,
    video_frame_text,
)
from .abort import StuckSockets
from .forwarded import connection_client
from .frame_writer import FRAME_WRITER, FrameWriter, WrittenAtOnce, websocket_frame
from .json_codec import decode_json, encode_json
from .latencies import Latencies, ViewerClock
from .webrtc import WebRTCViewers, serve_signalling

log = logging.getLogger("bridge_actors.ws")

__all__ = [
    "BadMessages",
    "Close",
    "LogFilter",
    "OpenSockets",
    "SocketHandlers",
    "close_for",
    "normalize_control",
    "video_frame_text",
]

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
MAX_BAD_MESSAGES = 50  # in a row; a client that only sends garbage is let go with 1008
CLOSE_TIMEOUT = 1.0  # how long a cancelled handler may spend telling the client goodbye
LOG_LEVELS = ("debug", "info", "warning", "error")


# --- pure decisions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Close:
    """How a socket ends. ``expected`` is False for errors that are our bug, worth a traceback."""

    code: int
    reason: str
    expected: bool = True


def close_for(exc: BaseException) -> Close | None:
    """The close frame for the exception that ended a socket, looking inside groups.

    None means "not ours to handle" (cancellation, KeyboardInterrupt): re-raise it.
    """
    if isinstance(exc, BaseExceptionGroup):
        if exc.split(trio.Cancelled)[0] is not None:
            return None
        for inner in exc.exceptions:
            close = close_for(inner)
            if close is not None:
                return close
        return None
    if isinstance(exc, SessionNotFound):
        return Close(NOT_FOUND, "session deleted" if exc.deleted else "Session not found")
    if isinstance(exc, RateLimited):
        return Close(RATE_LIMITED, f"retry_after={max(1, math.ceil(exc.retry_after))}")
    if isinstance(exc, SessionFull):
        return Close(SESSION_FULL, str(exc))
    if isinstance(exc, ServerBusy):
        return Close(TRY_AGAIN_LATER, str(exc) or "server busy")
    if isinstance(exc, ViewerEvicted):
        return Close(POLICY, str(exc))
    if isinstance(exc, CaptureFailed):
        return Close(INTERNAL_ERROR, str(exc) or "capture failed")
    if isinstance(exc, CaptureStopped):
        return Close(GOING_AWAY, str(exc) or "capture stopped")
    if isinstance(exc, BadInput):
        return Close(POLICY, str(exc))
    if isinstance(exc, DeviceError | BridgeError):
        return Close(INTERNAL_ERROR, f"device error: {exc}")
    if isinstance(exc, Exception):
        return Close(INTERNAL_ERROR, "internal error", expected=False)
    return None


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def close_reason(text: str) -> str:
    """``text`` cut to what fits in a close frame, on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


class LogFilter:
    """Which log lines a logs socket wants: a case-insensitive substring and a level."""

    __slots__ = ("level", "text")

    def __init__(self) -> None:
        self.text = ""
        self.level = "all"

    def update(self, message: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``{"type":"filter"}`` message; returns the reply. Raises BadInput."""
        text = message.get("filter", "")
        level = message.get("level", "all")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise BadInput("filter", f"must be a string, not {type(text).__name__}")
        if len(text) > 1000:
            raise BadInput("filter", "must be at most 1000 characters")
        if level is None or level == "":
            level = "all"
        if not isinstance(level, str) or level.lower() not in ("all", *LOG_LEVELS):
            raise BadInput("level", f"must be one of all, {', '.join(LOG_LEVELS)}")
        self.text = text
        self.level = level.lower()
        return {"type": "filter_applied", "filter": self.text, "level": self.level}

    def matches(self, line: LogLine) -> bool:
        if self.level != "all" and line.level != self.level:
            return False
        if not self.text:
            return True
        needle = self.text.lower()
        return any(needle in part.lower() for part in (line.message, line.process, line.raw_line))


def decode_message(message: str | bytes | None) -> dict[str, Any]:
    """A client's JSON object message. Raises BadInput naming what was wrong."""
    if message is None:
        # Quart hands over an empty binary message as None (``bytes or text``).
        message = b""
    decoded = decode_json(message, "message")
    if not isinstance(decoded, dict):
        raise BadInput("message", "must be a JSON object")
    return decoded


class BadMessages:
    """How many bad messages a client sent in a row; ``MAX_BAD_MESSAGES`` of them end its socket.

    Every bad message is answered (so a client can correct itself), but a client
    that only ever sends garbage holds a socket for nothing and is let go with 1008.
    """

    __slots__ = ("in_a_row",)

    def __init__(self) -> None:
        self.in_a_row = 0

    def good(self) -> None:
        self.in_a_row = 0

    def bad(self) -> None:
        """Count one more bad message; raises BadInput once there were too many in a row."""
        self.in_a_row += 1
        if self.in_a_row >= MAX_BAD_MESSAGES:
            raise BadInput("message", f"{self.in_a_row} bad messages in a row")


def error_text(error: BadInput | DeviceError | str) -> str:
    return encode_json({"type": "error", "message": str(error)})


def _refusal_text(reason: str, message_id: Any) -> str:
    """A refused control: an error that says so, with the message's ``id`` if it had one."""
    reply: dict[str, Any] = {"type": "error", "message": reason, "refused": True}
    if message_id is not None:
        reply["id"] = message_id
    return encode_json(reply)


# The compatible desktop viewer sends a swipe's corners in camelCase.
_SWIPE_ALIASES = {"start_x": "startX", "start_y": "startY", "end_x": "endX", "end_y": "endY"}


def normalize_control(message: dict[str, Any]) -> dict[str, Any]:
    """A control message in the spelling :func:`parse_control` reads.

    The desktop viewer of the compatible clients sends a swipe's corners as
    ``startX``/``startY``/``endX``/``endY``. Anything else is returned unchanged, for
    ``parse_control`` to judge; keys given as HID usage codes it reads itself
    (:func:`~bridge_actors._controls.resolve_key`), on every path alike.
    """
    kind = message.get("t", message.get("type"))
    if kind == "swipe" and any(camel in message for camel in _SWIPE_ALIASES.values()):
        message = dict(message)
        for snake, camel in _SWIPE_ALIASES.items():
            if snake not in message and camel in message:
                message[snake] = message.pop(camel)
    return message


# --- shutdown bookkeeping ---------------------------------------------------------------------


class OpenSockets:
    """Every WebSocket being served, so a shutdown can close them all with 1001."""

    def __init__(self) -> None:
        self._scopes: dict[trio.CancelScope, str] = {}
        self.closing = False
        self.opened: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._scopes)

    @contextmanager
    def track(self, kind: str) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        if self.closing:
            scope.cancel()
        self._scopes[scope] = kind
        self.opened[kind] += 1
        try:
            with scope:
                yield scope
        finally:
            del self._scopes[scope]

    def close_all(self) -> None:
        """Make every socket (and any that opens from now on) close with 1001."""
        self.closing = True
        for scope in list(self._scopes):
            scope.cancel()

    def statistics(self) -> dict[str, Any]:
        return {
            "open": dict(Counter(self._scopes.values())),
            "opened": dict(self.opened),
            "closing": self.closing,
        }


# --- the handlers -----------------------------------------------------------------------------

Guard = Callable[[Lifeline], None]
Body = Callable[[Any, str, Guard], Awaitable[None]]


class H264Messages:
    """The binary message of each recent H.264 packet, made once for all its viewers,
    and the same as one whole WebSocket frame for the viewers written to at once.

    Packets are kept with their messages (so no id is reused while cached); the
    oldest go first. ``capacity`` covers any backlog a feed may have.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._messages: dict[int, list[Any]] = {}  # id -> [packet, message, frame or None]
        self.made = 0

    def message(self, packet: EncodedPacket, device: DeviceInfo) -> bytes:
        return self._entry(packet, device)[1]

    def frame(self, packet: EncodedPacket, device: DeviceInfo) -> bytes:
        entry = self._entry(packet, device)
        if entry[2] is None:
            entry[2] = websocket_frame(entry[1])
        return entry[2]

    def _entry(self, packet: EncodedPacket, device: DeviceInfo) -> list[Any]:
        cached = self._messages.get(id(packet))
        if cached is not None and cached[0] is packet:
            return cached
        message = h264_message(
            packet.data,
            keyframe=packet.keyframe,
            seq=packet.frame_number,
            timestamp=packet.timestamp,
            pixel_width=device.pixel_width,
            pixel_height=device.pixel_height,
            point_width=device.point_width,
            point_height=device.point_height,
            input_seq=packet.input_seq,
        )
        self.made += 1
        if len(self._messages) >= self._capacity:
            del self._messages[next(iter(self._messages))]
        entry = self._messages[id(packet)] = [packet, message, None]
        return entry


class _Sent(Protocol):
    @property
    def captured_at(self) -> float: ...
    @property
    def input_seq(self) -> int: ...


Item = TypeVar("Item", bound=_Sent)


def framed_binary_frame(frame: Frame) -> bytes:
    """:func:`binary_frame` as one whole WebSocket frame: made once, shared by every viewer."""
    return frame.shared(_framed_binary_frame)


def _framed_binary_frame(frame: Frame) -> bytes:
    # Not from binary_frame(): that would keep the unframed message alive as well.
    return websocket_frame(binary_message(frame))


class SocketSink(Generic[Item]):
    """A viewer's frames or packets written at once to its idle connection (a handoff Sink)."""

    __slots__ = ("_clock", "_framed", "_totals", "_unsent", "_writer")

    def __init__(
        self,
        writer: FrameWriter,
        framed: Callable[[Item], bytes],
        clock: ViewerClock,
        totals: WrittenAtOnce,
    ) -> None:
        self._writer = writer
        self._framed = framed
        self._clock = clock
        self._totals = totals
        # (captured_at, input_seq) of the message written in part: sent once finished.
        self._unsent: tuple[float, int] | None = None

    def ready(self) -> bool:
        return self._writer.ready()

    def put(self, item: Item) -> bool:
        done = self._writer.write_now(self._framed(item))
        if self._writer.broken:
            return True  # the client is gone; the connection's reader ends the viewer
        if done:
            self._totals.whole += 1
            self._clock.sent(item.captured_at, item.input_seq)
        else:
            self._totals.in_part += 1
            self._unsent = (item.captured_at, item.input_seq)
        return done

    async def finish(self) -> None:
        unsent, self._unsent = self._unsent, None
        await self._writer.finish()
        if unsent is not None and not self._writer.broken:
            self._clock.sent(*unsent)


class SocketHandlers:
    """The session WebSockets of one app, sharing its bridge and its OpenSockets."""

    def __init__(self, bridge: Bridge, sockets: OpenSockets, stuck: StuckSockets) -> None:
        self.bridge = bridge
        self.sockets = sockets
        self.stuck = stuck
        # Asked before each control is applied: None, or why the connection may not.
        self.admit_control: Callable[[str, object], str | None] = lambda _sid, _event: None
        self.h264_messages = H264Messages()
        self.written_at_once = {"binary": WrittenAtOnce(), "h264": WrittenAtOnce()}
        self.latencies = Latencies()
        self.webrtc_viewers = WebRTCViewers(bridge.settings)
        # In a cluster: why a session this instance does not hold is not here (owned by
        # another instance, or lost with it), for the 4004's reason; None if unknown.
        self.whereabouts: Callable[[str], Awaitable[str | None]] | None = None

    async def _serve(self, kind: str, session_id: str, body: Body) -> None:
        ws = websocket._get_current_object()
        await ws.accept()
        finished = trio.Event()
        peer = _peer(ws)

        def guard(lifeline: Lifeline) -> None:
            lifeline.on_cut(lambda: self.stuck.watch(peer, finished))

        try:
            close = Close(NORMAL, "")
            with self.sockets.track(kind) as shutdown:
                try:
                    client = connection_client(ws, self.bridge.settings.trusted_proxies)
                    async with self.bridge.connect(session_id, kind, client) as connection:
                        guard(connection.lifeline)
                        await body(ws, session_id, guard)
                except BaseException as exc:
                    mapped = close_for(exc)
                    if mapped is None:
                        raise
                    if mapped.code == NOT_FOUND and self.whereabouts is not None:
                        mapped = await self._located(session_id, mapped)
                    if not mapped.expected:
                        log.exception("%s socket of session %s failed", kind, session_id)
                    close = mapped
            if shutdown.cancelled_caught:
                close = Close(GOING_AWAY, "server shutting down")
        except BaseException as exc:
            if _is_cancellation(exc):
                # Torn down from outside (the server's nursery, or the client left): say
                # goodbye if anyone still listens, but never wait long for it.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                    await _close(ws, Close(GOING_AWAY, "server shutting down"))
            raise
        finally:
            finished.set()
        await _close(ws, close)

    async def _located(self, session_id: str, close: Close) -> Close:
        assert self.whereabouts is not None
        with trio.move_on_after(CLOSE_TIMEOUT):
            reason = await self.whereabouts(session_id)
            if reason is not None:
                return Close(NOT_FOUND, close_reason(reason))
        return close

    # -- video --

    async def video(self, session_id: str) -> None:
        try:
            binary, max_fps = _video_options(websocket.args)
            h264 = _h264_option(websocket.args, binary, max_fps)
        except BadInput as error:
            await _refuse_bad_input(error)
            return
        fmt = "h264" if h264 else "binary" if binary else "json"
        clock = self.latencies.viewer(session_id, fmt)
        if h264:
            await self._serve("video", session_id, functools.partial(self._h264_body, clock))
            return

        async def body(ws, sid: str, guard: Guard) -> None:
            async with (
                self.bridge.watch(sid, max_fps=max_fps) as viewer,
                trio.open_nursery() as nursery,
            ):
                guard(viewer.lifeline)
                nursery.start_soon(_discard_incoming, ws)
                # Each loop lets go of its frame before waiting for the next: a viewer
                # capped at 1 fps would otherwise keep a whole frame alive for a second.
                if binary:
                    writer = _frame_writer(ws)
                    if writer is not None and not max_fps:
                        totals = self.written_at_once["binary"]
                        viewer.deliver_to(SocketSink(writer, framed_binary_frame, clock, totals))
                    async for frame in viewer:
                        captured_at, input_seq = frame.captured_at, frame.input_seq
                        message = binary_frame(frame)
                        del frame
                        await ws.send(message)
                        del message
                        clock.sent(captured_at, input_seq)
                else:
                    rate = RateMeter()
                    number = 0
                    async for frame in viewer:
                        number += 1
                        now = trio.current_time()
                        rate.add(now)
                        captured_at, input_seq = frame.captured_at, frame.input_seq
                        text = video_frame_text(frame, number, round(rate.rate(now)))
                        del frame
                        await ws.send(text)
                        del text
                        clock.sent(captured_at, input_seq)

        await self._serve("video", session_id, body)

    async def _h264_body(self, clock: ViewerClock, ws, sid: str, guard: Guard) -> None:
        device = self.bridge.get_session(sid).device
        async with self.bridge.h264_feed(sid) as feed, trio.open_nursery() as nursery:
            guard(feed.lifeline)
            nursery.start_soon(_keyframe_requests, ws, feed)
            writer = _frame_writer(ws)
            if writer is not None:
                framed = functools.partial(self.h264_messages.frame, device=device)
                feed.deliver_to(SocketSink(writer, framed, clock, self.written_at_once["h264"]))
            async for packet in feed:
                captured_at, input_seq = packet.captured_at, packet.input_seq
                message = self.h264_messages.message(packet, device)
                del packet
                await ws.send(message)
                del message
                clock.sent(captured_at, input_seq)

    # -- control --

    async def control(self, session_id: str) -> None:
        async def body(ws, sid: str, _guard: Guard) -> None:
            bad = BadMessages()
            while True:
                message = await ws.receive()
                reply, ok = await self._control_one(sid, message, trio.current_time())
                if reply is not None:
                    await ws.send(reply)
                if ok:
                    bad.good()
                else:
                    bad.bad()

        await self._serve("control", session_id, body)

    async def _control_one(
        self, session_id: str, message: str | bytes, received_at: float
    ) -> tuple[str | None, bool]:
        """Apply one control message, received at ``received_at``; returns the reply to send
        (if any) and whether it was good."""
        try:
            decoded = decode_message(message)
            event = parse_control(normalize_control(decoded), self.bridge.settings.max_text_length)
            refusal = self.admit_control(session_id, event)
            if refusal is not None:
                return _refusal_text(refusal, decoded.get("id")), True
            input_seq = await self.bridge.control(session_id, event)
        except (BadInput, DeviceError) as error:
            return error_text(error), False
        self.latencies.control_to_frame.received(session_id, input_seq, received_at)
        if "id" in decoded:
            return encode_json({"type": "ack", "id": decoded["id"], "input_seq": input_seq}), True
        return None, True

    # -- screenshot --

    async def screenshot(self, session_id: str) -> None:
        async def body(ws, sid: str, _guard: Guard) -> None:
            await ws.send(await self._screenshot_text(sid))
            bad = BadMessages()
            while True:
                message = await ws.receive()
                received_at = trio.current_time()
                try:
                    decoded = decode_message(message)
                    if decoded.get("t", decoded.get("type")) != "refresh":
                        # Taps, and whatever else a compatible page sends here (swipes).
                        event = parse_control(
                            normalize_control(decoded), self.bridge.settings.max_text_length
                        )
                        refusal = self.admit_control(sid, event)
                        if refusal is not None:
                            await ws.send(_refusal_text(refusal, decoded.get("id")))
                            continue
                        input_seq = await self.bridge.control(sid, event)
                        self.latencies.control_to_frame.received(sid, input_seq, received_at)
                except (BadInput, DeviceError) as error:
                    bad.bad()
                    await ws.send(error_text(error))
                    continue
                bad.good()
                await ws.send(await self._screenshot_text(sid))

        await self._serve("screenshot", session_id, body)

    async def _screenshot_text(self, session_id: str) -> str:
        try:
            shot = await self.bridge.screenshot(session_id)
        except DeviceError as error:
            return error_text(f"screenshot failed: {error}")
        return encode_json(screenshot_message(shot))

    # -- webrtc --

    async def webrtc(self, session_id: str) -> None:
        """ios-bridge's WebRTC signalling; the peer sends the device's shared H.264."""

        async def body(ws, sid: str, guard: Guard) -> None:
            await serve_signalling(
                self.bridge, self.webrtc_viewers, ws, sid, guard, decode_message, BadMessages
            )

        await self._serve("webrtc", session_id, body)

    # -- logs --

    async def logs(self, session_id: str) -> None:
        async def body(ws, sid: str, _guard: Guard) -> None:
            wanted = LogFilter()
            async with self.bridge.logs(sid) as subscription, trio.open_nursery() as nursery:
                nursery.start_soon(_log_requests, ws, wanted)
                async for line in subscription:
                    if wanted.matches(line):
                        await ws.send(encode_json(line.to_message()))

        await self._serve("logs", session_id, body)


async def _log_requests(ws, wanted: LogFilter) -> None:
    bad = BadMessages()
    while True:
        message = await ws.receive()
        try:
            decoded = decode_message(message)
            kind = decoded.get("type", decoded.get("t"))
            if kind == "filter":
                reply = wanted.update(decoded)
            elif kind == "clear":
                reply = {"type": "clear"}
            else:
                raise BadInput("type", f"must be 'filter' or 'clear', not {kind!r}")
        except BadInput as error:
            bad.bad()
            await ws.send(error_text(error))
            continue
        bad.good()
        await ws.send(encode_json(reply))


async def _discard_incoming(ws) -> None:
    """A video client's messages mean nothing, but reading them is how a disconnect is seen."""
    while True:
        await ws.receive()


MIN_VIEWER_FPS = 0.1


def _video_options(args) -> tuple[bool, float | None]:
    """``?format=`` and ``?fps=`` of a video socket."""
    fmt = args.get("format", "json")
    if fmt not in ("json", "binary"):
        raise BadInput("format", f"must be 'json' or 'binary', not {fmt!r}")
    raw_fps = args.get("fps")
    max_fps = None
    if raw_fps not in (None, ""):
        try:
            max_fps = float(raw_fps)
        except ValueError:
            raise BadInput("fps", f"must be a number, not {raw_fps!r}") from None
        if not math.isfinite(max_fps) or not MIN_VIEWER_FPS <= max_fps <= 1000:
            raise BadInput("fps", f"must be from {MIN_VIEWER_FPS:g} to 1000, not {raw_fps}")
    return fmt == "binary", max_fps


def _h264_option(args, binary: bool, max_fps: float | None) -> bool:
    """``?codec=``: ``jpeg`` (the default) or ``h264``, which needs ``format=binary``."""
    codec = args.get("codec", "jpeg")
    if codec not in ("jpeg", "h264"):
        raise BadInput("codec", f"must be 'jpeg' or 'h264', not {codec!r}")
    if codec == "h264" and not binary:
        raise BadInput("codec", "h264 is sent only as binary messages: add format=binary")
    if codec == "h264" and max_fps is not None:
        raise BadInput("fps", "an H.264 stream cannot be capped: its frames depend on each other")
    return codec == "h264"


async def _keyframe_requests(ws, feed: H264Feed) -> None:
    """An H.264 client may ask for a keyframe (its decoder lost sync); all else is ignored."""
    while True:
        message = await ws.receive()
        if isinstance(message, str) and '"keyframe"' in message:
            try:
                request = decode_json(message, "message")
            except BadInput:
                continue
            if isinstance(request, dict) and request.get("type") == "keyframe":
                feed.request_keyframe()


async def _refuse_bad_input(error: BadInput) -> None:
    ws = websocket._get_current_object()
    await ws.accept()
    await ws.send(error_text(error))
    await _close(ws, Close(POLICY, str(error)))


# What saying goodbye may meet when the connection is already ending: Quart's "already
# closed", or the transport gone or being shut (Hypercorn sends its EOF outside the lock
# its other sends take, so a close frame racing the client's own close meets it busy).
_GONE = (RuntimeError, trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError)


async def _close(ws, close: Close) -> None:
    with contextlib.suppress(*_GONE):
        await ws.close(close.code, close_reason(close.reason))
    await trio.lowlevel.checkpoint()


def _frame_writer(ws) -> FrameWriter | None:
    """The connection's writer for frames sent at once, if the server gives one (ours does)."""
    return ws.scope.get("extensions", {}).get(FRAME_WRITER)


def _peer(ws) -> tuple[str, int] | None:
    client = ws.scope.get("client")
    return (client[0], client[1]) if client else None
