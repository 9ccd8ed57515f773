"""One HTTP connection, from accept to close: read deadlines and complete responses.

Two things Hypercorn's trio ``TCPServer`` does not do for us on its own:

* **A response that completes must complete the connection too.** Hypercorn closes
  or recycles a connection from inside the app's ``send`` of the final body
  message: ending the stream queues ``http.disconnect`` for the app and then shuts
  the socket (``Connection: close``, HTTP/1.0) or arms the keep-alive timer.
  Quart-Trio runs each request as two tasks in one nursery, one sending the
  response and one reading ``receive()``; the reader gets that ``http.disconnect``
  and cancels the nursery while the sender is still inside the final ``send``, so
  the cancellation lands in Hypercorn's bookkeeping and the connection is left
  neither closed nor timed: it stays open until the client leaves.
  :class:`CompleteResponses` shields the one ``send`` that ends a response. The
  transport write inside it is shielded by Hypercorn already; what the shield adds
  is the bookkeeping after it, which never blocks.
* **An event for the app must never wait forever.** Hypercorn hands each request's
  events to the app through a bounded queue and waits while it is full. A client
  that sends faster than the app reads fills it; when that client then breaks,
  Hypercorn learns it inside the app's own ``send`` and waits there to queue the
  ``disconnect``, behind messages that only this very task would read: the
  handler, its slot and its descriptor stay forever (a "ghost"). In an
  :class:`AppQueue` a disconnect never waits and overtakes what is queued (the
  client is gone: nobody will read answers to its messages), and once the app has
  returned nothing waits for it any more.
* **A client must not hold a connection by sending slowly.** Hypercorn has one
  ``read_timeout`` for every read, which would also cut WebSocket viewers that
  only listen. :class:`ReadDeadline` decides per read, from the HTTP/1.1 parser's
  state, how long the client may take: the headers of a request within
  ``header_timeout`` of its first byte, each part of a body within
  ``body_timeout``; an idle keep-alive connection is Hypercorn's own timer
  (``keep_alive_timeout``), and an upgraded WebSocket has no read deadline.
  HTTP/2 is not spoken (:class:`HTTP11Protocol`): without TLS no browser uses
  it, and Hypercorn's cleartext HTTP/2 would bypass every deadline here.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr
from wsproto.connection import ConnectionState as WebSocketState

from .frame_writer import FRAME_WRITER, FrameWriter
from .json_codec import encode_json

log = logging.getLogger("bridge_actors.server")

__all__ = [
    "AppQueue",
    "AppQueueStatistics",
    "CompleteResponses",
    "Connection",
    "ReadDeadline",
    "ReadPhase",
    "json_response_bytes",
]


def json_response_bytes(
    status: int, body: dict[str, Any], *, head_only: bool = False, close: bool = True
) -> bytes:
    """A whole HTTP/1.1 response with a JSON body, for answers given below the app."""
    payload = encode_json(body, compact=True).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        "cache-control: no-store\r\n"
        f"connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode()
    return head if head_only else head + payload


class CompleteResponses:
    """ASGI middleware: the ``send`` that ends an HTTP response runs shielded."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_to_the_end(message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_to_the_end)


DISCONNECTS = frozenset({"http.disconnect", "websocket.disconnect"})


@dataclass(frozen=True, slots=True)
class AppQueueStatistics:
    queued: int
    max_size: int
    disconnected: bool
    finished: bool
    waiting_to_put: int
    dropped: int


class AppQueue:
    """The events Hypercorn passes to one ASGI app call, bounded, with disconnects first.

    ``put`` waits while ``max_size`` events are queued, which is what slows a
    client down to the pace its app reads at; a disconnect is never made to wait,
    and from the moment it is queued ``receive`` returns it before anything else.
    After :meth:`finish` (the app returned) ``put`` drops what it is given.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._events: deque[dict[str, Any]] = deque()
        self._disconnect: dict[str, Any] | None = None
        self._finished = False
        self._dropped = 0
        self._can_put = trio.lowlevel.ParkingLot()
        self._can_receive = trio.lowlevel.ParkingLot()

    async def put(self, event: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if event["type"] in DISCONNECTS:
            self._dropped += len(self._events)
            self._events.clear()
            self._disconnect = event
            self._can_receive.unpark_all()
            self._can_put.unpark_all()
        else:
            while self._is_full():
                await self._can_put.park()
            if self._finished or self._disconnect is not None:
                self._dropped += 1
            else:
                self._events.append(event)
                self._can_receive.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _is_full(self) -> bool:
        accepting = not self._finished and self._disconnect is None
        return accepting and len(self._events) >= self.max_size

    async def receive(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._events and self._disconnect is None:
            await self._can_receive.park()
        if self._disconnect is not None:
            event = self._disconnect
        else:
            event = self._events.popleft()
            self._can_put.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    def finish(self) -> None:
        """The app returned: nothing it was given will be read, and nothing may wait on it."""
        self._finished = True
        self._dropped += len(self._events)
        self._events.clear()
        self._can_put.unpark_all()

    def statistics(self) -> AppQueueStatistics:
        return AppQueueStatistics(
            queued=len(self._events),
            max_size=self.max_size,
            disconnected=self._disconnect is not None,
            finished=self._finished,
            waiting_to_put=len(self._can_put),
            dropped=self._dropped,
        )


class _AppTaskGroup(TaskGroup):
    """Hypercorn's task group, with an :class:`AppQueue` between each app and its events,
    and a WebSocket app's :class:`FrameWriter` in its scope."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection

    async def spawn_app(self, app, config, scope, send):
        queue = AppQueue(config.max_app_queue_size)
        stream = getattr(send, "__self__", None)
        if scope["type"] == "websocket" and isinstance(stream, WSStream):
            writer = self._connection.frame_writer_for(stream)
            scope.setdefault("extensions", {})[FRAME_WRITER] = writer

        async def run_app() -> None:
            try:
                await _handle(
                    app,
                    config,
                    scope,
                    queue.receive,
                    send,
                    trio.to_thread.run_sync,
                    trio.from_thread.run,
                )
            finally:
                queue.finish()

        self.spawn(run_app)
        return queue.put


class ReadPhase(enum.Enum):
    IDLE = "idle"  # between requests: the keep-alive timer's business
    HEADERS = "headers"  # part of a request's head has arrived
    BODY = "body"  # the head is complete, its body is not
    BUSY = "busy"  # the request is whole; the app is answering it
    STREAM = "stream"  # an upgraded (WebSocket) or HTTP/2 connection


def read_phase(protocol: Any) -> ReadPhase:
    """Where the client is in sending its current request, read off Hypercorn's protocol."""
    if not isinstance(protocol, H11Protocol) or not isinstance(protocol.connection, h11.Connection):
        return ReadPhase.STREAM
    connection = protocol.connection
    if connection.their_state is h11.IDLE:
        return ReadPhase.HEADERS if connection.trailing_data[0] else ReadPhase.IDLE
    if connection.their_state is h11.SEND_BODY:
        return ReadPhase.BODY
    return ReadPhase.BUSY


@dataclass(slots=True)
class ReadDeadline:
    """How long the next read may wait; pure, driven by the time and the read phase.

    The header deadline runs from the first byte of a request's head, so that a
    client dribbling one byte at a time gains nothing; the body deadline runs
    from the last part of the body received, so that a large upload that keeps
    moving is never cut.
    """

    header_timeout: float
    body_timeout: float
    phase: ReadPhase = ReadPhase.IDLE
    head_started_at: float = math.inf
    body_moved_at: float = math.inf

    def observe(self, phase: ReadPhase, now: float) -> None:
        """Record the phase after a read (or at start) at time ``now``."""
        if phase is ReadPhase.HEADERS and self.phase is not ReadPhase.HEADERS:
            self.head_started_at = now
        if phase is ReadPhase.BODY:
            self.body_moved_at = now
        self.phase = phase

    def deadline(self) -> float:
        if self.phase is ReadPhase.HEADERS:
            return self.head_started_at + self.header_timeout
        if self.phase is ReadPhase.BODY:
            return self.body_moved_at + self.body_timeout
        return math.inf

    def timeout_detail(self) -> str:
        if self.phase is ReadPhase.HEADERS:
            return f"request headers not received within {self.header_timeout:g} s"
        return f"request body stalled for {self.body_timeout:g} s"


class Connection(TCPServer):
    """Hypercorn's TCPServer (plain TCP) with app queues and read deadlines.

    It differs from Hypercorn's in three places: the task group gives every app an
    :class:`AppQueue`; before each read the loop asks the deadline how long the
    client may take, and when that runs out it answers 408 (the client is still
    sending, so it is still there to read it) and closes; and a WebSocket gets a
    :class:`FrameWriter`, whose leftover bytes every send puts on the wire first.
    """

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float) -> None:
        super().__init__(*args)
        self.read_deadline = ReadDeadline(header_timeout, body_timeout)
        self.frame_writer: FrameWriter | None = None

    def frame_writer_for(self, stream: WSStream) -> FrameWriter:
        def is_open() -> bool:
            return (
                stream.state == ASGIWebsocketState.CONNECTED
                and not stream.closed
                and stream.connection.state is WebSocketState.OPEN
            )

        self.frame_writer = FrameWriter(self.stream, self.send_lock, is_open)
        return self.frame_writer

    async def protocol_send(self, event: Any) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    if self.frame_writer is not None:
                        await self.frame_writer.flush_locked()
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    async def run(self) -> None:
        socket = self.stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with _AppTaskGroup(self) as task_group:
                self._task_group = task_group
                self.protocol = HTTP11Only(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except (OSError, _HTTP2Refused):
            pass
        except Exception:
            # A client can drive Hypercorn's protocol code into errors of its own (say, WebSocket
            # data before the handshake is answered): that ends this connection, not the server.
            log.warning("connection from %s ended by an error", self._peer(), exc_info=True)
        finally:
            await self._close()

    def _peer(self) -> str:
        try:
            host, port = self.stream.socket.getpeername()[:2]
        except OSError:
            return "a client that left"
        return f"{host}:{port}"

    async def _read_data(self) -> None:
        protocol = self.protocol.protocol
        self.read_deadline.observe(read_phase(protocol), trio.current_time())
        while True:
            try:
                with trio.move_on_at(self.read_deadline.deadline()) as timer:
                    data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if timer.cancelled_caught:
                await self._refuse_slow_request()
                return
            was_in_headers = self.read_deadline.phase is ReadPhase.HEADERS
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
            protocol = self.protocol.protocol
            self.read_deadline.observe(read_phase(protocol), trio.current_time())
            if not was_in_headers and self.read_deadline.phase is ReadPhase.HEADERS:
                # A request has begun: from here the header deadline governs, not keep-alive.
                await self.idle_task.stop()
        await self.protocol.handle(Closed())

    async def _refuse_slow_request(self) -> None:
        """Answer 408 if no response has begun (else just close), and close, all under
        the send lock: no byte of the app's may follow ours onto the wire."""
        detail = self.read_deadline.timeout_detail()
        await self.protocol.handle(Closed())  # the app, if it has the request, gives up on it
        response = json_response_bytes(408, {"success": False, "detail": detail})
        with trio.move_on_after(1):
            async with self.send_lock:
                if _no_response_begun(self.protocol.protocol):
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.stream.send_all(response)
                await self.stream.aclose()


def _no_response_begun(protocol: Any) -> bool:
    return isinstance(protocol, H11Protocol) and (
        isinstance(protocol.connection, h11.Connection)
        and protocol.connection.our_state in (h11.IDLE, h11.SEND_RESPONSE)
    )


class _HTTP2Refused(Exception):
    """The client spoke HTTP/2 with prior knowledge; it was answered 505."""


class HTTP11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol that never turns into HTTP/2.

    Browsers speak HTTP/2 only over TLS, which this server does not terminate,
    and Hypercorn's cleartext HTTP/2 has none of the read deadlines above. An
    ``Upgrade: h2c`` is ignored (RFC 9110 lets a server serve the request as it
    came); the HTTP/2 connection preface (``PRI * HTTP/2.0``) is answered 505.
    """

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*":
            await self._send_error_response(505)
            raise _HTTP2Refused()

    async def _create_stream(self, request: h11.Request) -> None:
        await super()._create_stream(_without_websocket_extensions(request))


def _without_websocket_extensions(request: h11.Request) -> h11.Request:
    """The request without its WebSocket extension offers, so none is negotiated.

    Hypercorn accepts ``permessage-deflate`` whenever it is offered, and browsers
    always offer it. Our messages are JPEG and H.264, which do not deflate, and a
    deflated stream is compressed separately for each viewer: a frame's cost would
    grow with its viewers. RFC 7692 lets a server decline, and clients then send
    and receive plain frames.
    """
    if not any(name == b"sec-websocket-extensions" for name, _ in request.headers):
        return request
    return h11.Request(
        method=request.method,
        target=request.target,
        headers=[(n, v) for n, v in request.headers if n != b"sec-websocket-extensions"],
        http_version=request.http_version,
    )


class HTTP11Only(ProtocolWrapper):
    """Hypercorn's protocol wrapper, always on :class:`HTTP11Protocol`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = HTTP11Protocol(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.state,
            self.ssl,
            self.client,
            self.server,
            self.send,
        )
