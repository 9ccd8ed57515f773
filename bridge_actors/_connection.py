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
* **A client must not hold a connection by sending slowly.** Hypercorn has one
  ``read_timeout`` for every read, which would also cut WebSocket viewers that
  only listen. :class:`ReadDeadline` decides per read, from the HTTP/1.1 parser's
  state, how long the client may take: the headers of a request within
  ``header_timeout`` of its first byte, each part of a body within
  ``body_timeout``; an idle keep-alive connection is Hypercorn's own timer
  (``keep_alive_timeout``), and an upgraded WebSocket has no read deadline.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

__all__ = [
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
    payload = json.dumps(body, separators=(",", ":")).encode()
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
    """Hypercorn's TCPServer with the read deadlines above.

    Only the read loop differs from Hypercorn's: before each read it asks the
    deadline how long the client may take, and when that runs out it answers 408
    (the client is still sending, so it is still there to read it) and closes.
    """

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float) -> None:
        super().__init__(*args)
        self.read_deadline = ReadDeadline(header_timeout, body_timeout)

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
            was_idle = self.read_deadline.phase is ReadPhase.IDLE
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
            protocol = self.protocol.protocol
            self.read_deadline.observe(read_phase(protocol), trio.current_time())
            if was_idle and self.read_deadline.phase is ReadPhase.HEADERS:
                # A request has begun: from here the header deadline governs, not keep-alive.
                await self.idle_task.stop()
        await self.protocol.handle(Closed())

    async def _refuse_slow_request(self) -> None:
        detail = self.read_deadline.timeout_detail()
        await self.protocol.handle(Closed())  # the app, if it has the request, gives up on it
        response = json_response_bytes(408, {"success": False, "detail": detail})
        with trio.move_on_after(1):
            async with self.send_lock:
                try:
                    await self.stream.send_all(response)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
