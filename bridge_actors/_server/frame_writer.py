"""A viewer's WebSocket frames written straight to its socket by whoever has them.

At a thousand viewers of one device, the cost of a frame is the path each copy takes
to its viewer: the viewer's task is woken, and its message goes through Quart,
Hypercorn's WebSocket stream, wsproto and trio's stream, each an ``await``. Most
viewers keep up, and their connection is idle when a frame arrives: nothing is being
sent, nothing is left over. For those, the publisher of the frame writes it, framed
once for everybody, with one system call and no task switch (:meth:`FrameWriter.write_now`).

What the socket does not take at once is kept, and is written before any other byte
of the connection: the connection's own sends flush it first, under the same lock
(:class:`~bridge_actors._server.connection.Connection`), and the viewer's task
finishes it when told (:meth:`FrameWriter.finish`). A connection that is sending, has
something left over, or is no longer open is not written to at once; its viewer is
woken and sends the ordinary way, so a slow viewer gets exactly the flow control it
had before.

Our server frames are whole binary messages without extensions (permessage-deflate
is declined), which is all :func:`websocket_frame` needs to make; wsproto keeps no
state about whole messages it did not frame.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = [
    "FRAME_WRITER",
    "FrameWriter",
    "FrameWriterStatistics",
    "WrittenAtOnce",
    "websocket_frame",
]

# The ASGI scope extension under which a WebSocket's FrameWriter is found.
FRAME_WRITER = "bridge.frame_writer"

BINARY = 0x2
TEXT = 0x1
_FIN = 0x80


def websocket_frame(payload: bytes, opcode: int = BINARY) -> bytes:
    """One whole, unmasked WebSocket frame (RFC 6455 §5.2), as a server sends it."""
    if opcode not in (BINARY, TEXT):
        raise ValueError(f"only data frames are made here, not opcode {opcode:#x}")
    size = len(payload)
    if size < 126:
        head = bytes((_FIN | opcode, size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", _FIN | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", _FIN | opcode, 127, size)
    return head + payload


@dataclass(frozen=True, slots=True)
class FrameWriterStatistics:
    written_now: int  # frames the socket took whole, at once
    partial: int  # frames whose rest was left for the connection to finish
    finished: int  # of those, finished by the viewer's task
    broken: bool
    backlog_bytes: int


@dataclass(slots=True)
class WrittenAtOnce:
    """Frames of one stream format that their publisher wrote to a viewer's socket:
    ``whole``, or ``in_part`` (the rest finished by the viewer's task)."""

    whole: int = 0
    in_part: int = 0


class FrameWriter:
    """The immediate path to one WebSocket connection's socket.

    ``open`` says whether the WebSocket may still carry data frames (accepted,
    no close sent or received); ``send_lock`` is the connection's, held by every
    send that goes the ordinary way.
    """

    def __init__(
        self, stream: trio.SocketStream, send_lock: trio.Lock, open: Callable[[], bool]
    ) -> None:
        self._stream = stream
        self._send_lock = send_lock
        self._open = open
        self._backlog: memoryview | None = None
        self.broken = False
        self._written_now = 0
        self._partial = 0
        self._finished = 0

    def ready(self) -> bool:
        """Whether a frame may be written at once: nothing sending, nothing left over."""
        return (
            self._backlog is None
            and not self.broken
            and not self._send_lock.locked()
            and self._open()
        )

    def write_now(self, frame: bytes) -> bool:
        """Write ``frame`` without waiting (only when :meth:`ready`).

        True if nothing is left to do: the socket took all of it, or the
        connection is gone (the connection's reader learns that by itself). False
        if part of it waits for :meth:`finish`.
        """
        fd = self._stream.socket.fileno()
        if fd < 0:
            self.broken = True
            return True
        try:
            sent = os.write(fd, frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            return True
        if sent == len(frame):
            self._written_now += 1
            return True
        self._backlog = memoryview(frame)[sent:]
        self._partial += 1
        return False

    async def finish(self) -> None:
        """Send what :meth:`write_now` left over, ahead of anything else."""
        await trio.lowlevel.checkpoint()
        if self._backlog is None:
            return
        async with self._send_lock:
            try:
                await self.flush_locked()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True
            else:
                self._finished += 1

    async def flush_locked(self) -> None:
        """Send the backlog; the caller holds the send lock. Shielded: half a frame
        on the wire would corrupt every frame after it."""
        backlog, self._backlog = self._backlog, None
        if backlog is not None:
            with trio.CancelScope(shield=True):
                await self._stream.send_all(backlog)

    def statistics(self) -> FrameWriterStatistics:
        return FrameWriterStatistics(
            written_now=self._written_now,
            partial=self._partial,
            finished=self._finished,
            broken=self.broken,
            backlog_bytes=0 if self._backlog is None else len(self._backlog),
        )
