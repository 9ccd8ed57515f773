"""Close WebSockets with the code RFC 6455 asks for when a client breaks the protocol.

When wsproto cannot parse what a client sent (text that is not UTF-8, an unknown
opcode, reserved bits set, an unmasked client frame, a bad close code), it
reports the failure as a ``CloseConnection`` event carrying the right code
(1002 protocol error, 1007 invalid data) and leaves sending the close frame to
its user. Hypercorn 0.17/0.18 answers a ``CloseConnection`` only when the peer
closed first, so on a protocol error it dropped the TCP connection without
any close frame, and the client could not tell a protocol error from a
network failure (RFC 6455 §7.1.7: "Fail the WebSocket Connection" sends a close
frame first).

Hypercorn also stopped reading a connection's events after refusing a message
as too big (1009), so the client's answering close frame, queued behind the
rest of that message, was never read: client and handler waited on each other
for ever. :class:`ClosingWSStream` is Hypercorn's ``WSStream`` with both fixed;
:func:`install` makes Hypercorn's HTTP/1.1 and HTTP/2 protocols create it. The
change is the one an upstream fix would make, so it is safe for any other
Hypercorn server in the same process.
"""

from __future__ import annotations

from hypercorn.protocol import h2, h11
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

__all__ = ["ClosingWSStream", "install", "messages_refused_too_big"]

# How long a client may take to answer the close frame of a refused message (RFC 6455
# §7.1.1 leaves it to the server; browsers answer at once).
CLOSE_HANDSHAKE_TIMEOUT = 5.0

# The modules whose ``WSStream`` name Hypercorn's protocols construct streams from.
_CREATORS = (h11, h2)


def messages_refused_too_big() -> int:
    """WebSocket messages refused as too big (1009) in this process, over every server."""
    return ClosingWSStream.refused_too_big


class ClosingWSStream(WSStream):
    """Hypercorn's WebSocket stream, sending the close frame of a protocol error too."""

    _closing_too_big = False
    refused_too_big = 0  # counted on the class: every stream of the process

    async def _handle_events(self) -> None:
        # Hypercorn 0.18's loop, with two changes marked below.
        for event in self.connection.events():
            if isinstance(event, Message):
                if self._closing_too_big:
                    continue  # the rest of a message we already refused (RFC 6455 §7.1.1)
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    ClosingWSStream.refused_too_big += 1
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                    )
                    # Changed: upstream stops reading events here, so the client's answering
                    # close frame, queued behind the message's remaining data, was never
                    # read and the connection hung. Keep reading, discarding data frames.
                    self._closing_too_big = True
                    self.buffer.clear()
                    self.task_group.spawn(self._end_unless_answered)
                    continue
                if event.message_finished:
                    assert self.app_put is not None
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                elif self.connection.state == ConnectionState.OPEN:
                    # Changed: nobody sent a close frame, wsproto failed to parse the
                    # client's data and tells us the code to fail the connection with.
                    await self._send_wsproto_event(
                        CloseConnection(code=event.code, reason=event.reason)
                    )
                await self.send(StreamClosed(stream_id=self.stream_id))

    async def _end_unless_answered(self) -> None:
        """A client that never answers our close frame does not keep the connection."""
        await self.context.sleep(CLOSE_HANDSHAKE_TIMEOUT)
        if not self.closed:
            await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Make Hypercorn's HTTP/1.1 and HTTP/2 protocols create :class:`ClosingWSStream`.

    Idempotent. Raises RuntimeError if Hypercorn no longer constructs its
    streams the way this relies on, rather than silently doing nothing.
    """
    for module in _CREATORS:
        current = getattr(module, "WSStream", None)
        if current is ClosingWSStream:
            continue
        if current is not WSStream:
            raise RuntimeError(
                f"{module.__name__}.WSStream is {current!r}, not Hypercorn's WSStream: "
                "the protocol-error close frame cannot be installed"
            )
        module.WSStream = ClosingWSStream  # type: ignore[misc]
