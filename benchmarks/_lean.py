"""A lean viewer: the WebSocket framing parsed in place, for when the clients must cost little.

On a 2-core machine the viewers compete with the server for CPU. trio-websocket
spends ~130 µs of client CPU per 35 KB frame (a reader task, a memory channel,
wsproto copying the payload, UTF-8 decoding it); this reader receives into one
preallocated buffer, reads the frame header and the few bytes it measures, and
never copies a payload, which leaves the server the CPU the benchmark is about.
It speaks exactly RFC 6455 as a client needs to: unmasked server frames,
answers pings, honours the close handshake.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

import trio

from ._viewer import Verifier, ViewerRecord, Window
from ._wire import (
    BINARY_HEADER_SIZE,
    binary_frame_facts,
    json_frame_facts,
    raw_connect,
    split_ws_url,
    verify_binary_frame,
    verify_json_frame,
)

_BUFFER = 256 * 1024
_TAIL = 400
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask; payloads here are tiny control frames)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class _Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        self.code, self.reason = code, reason


class _Reader:
    """Frames off one socket, parsed in a buffer that is allocated once."""

    def __init__(self, sock: trio.socket.SocketType, leftover: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(max(_BUFFER, len(leftover)))
        self.buf[: len(leftover)] = leftover
        self.filled = len(leftover)
        self.pos = 0

    async def next_frame(self) -> tuple[int, int, int, int]:
        """(fin+opcode byte, payload start, payload end, payload length) of the next frame;
        the payload stays in ``self.buf`` until the following call."""
        buf = self.buf
        while True:
            available = self.filled - self.pos
            if available >= 2:
                pos = self.pos
                length = buf[pos + 1] & 0x7F
                header = 2
                if length == 126 and available >= 4:
                    (length,) = _SHORT.unpack_from(buf, pos + 2)
                    header = 4
                elif length == 127 and available >= 10:
                    (length,) = _LONG.unpack_from(buf, pos + 2)
                    header = 10
                if length < 126 or header > 2:
                    end = pos + header + length
                    if end <= self.filled:
                        self.pos = end
                        return buf[pos], pos + header, end, length
                    if header + length > len(buf):  # larger than the buffer: grow it
                        buf.extend(bytes(header + length - len(buf) + _BUFFER))
            await self._receive()

    async def _receive(self) -> None:
        buf = self.buf
        if self.pos:
            rest = self.filled - self.pos
            buf[:rest] = buf[self.pos : self.filled]
            self.filled, self.pos = rest, 0
        with memoryview(buf) as view:
            received = await self.sock.recv_into(view[self.filled :])
        if not received:
            raise _Closed(None, "TCP connection ended without a close frame")
        self.filled += received


_SHORT, _LONG = struct.Struct(">H"), struct.Struct(">Q")


async def run_lean_viewer(
    url: str,
    record: ViewerRecord,
    window: Window,
    verifier: Verifier,
    *,
    binary: bool,
    connected: trio.Event | None = None,
    stop_after_first_frame: bool = False,
) -> None:
    """Same contract as ``run_viewer``: receive until cancelled or closed, fill ``record``."""
    try:
        sock = await raw_connect(split_ws_url(url))
    except (OSError, trio.TooSlowError) as exc:
        record.error = f"connection failed: {exc or type(exc).__name__}"
        if connected is not None:
            connected.set()
        return
    record.connected_at = time.time()
    if connected is not None:
        connected.set()
    reader = _Reader(sock.sock, bytes(sock.buffer))
    try:
        await _watch(reader, record, window, verifier, binary, stop_after_first_frame)
    except _Closed as closed:
        record.closed_at = time.time()
        record.close_code = closed.code
        record.close_reason = closed.reason
        if closed.code is not None:
            with trio.move_on_after(1), contextlib.suppress(OSError):
                await sock.sock.send(_masked(_OP_CLOSE, _SHORT.pack(closed.code)))
    except OSError as exc:
        record.error = f"connection failed: {exc}"
    finally:
        sock.close()


async def _watch(
    reader: _Reader,
    record: ViewerRecord,
    window: Window,
    verifier: Verifier,
    binary: bool,
    stop_after_first_frame: bool,
) -> None:
    buf = reader.buf
    while True:
        first, start, end, length = await reader.next_frame()
        buf = reader.buf
        opcode = first & 0x0F
        if opcode in (_OP_TEXT, _OP_BINARY):
            received_at = time.time()
            if not first & 0x80 or (opcode == _OP_BINARY) != binary:
                record.error = "unexpected fragmented frame or frame of the wrong type"
                return
            if binary:
                facts = binary_frame_facts(bytes(buf[start : start + BINARY_HEADER_SIZE]))
            else:
                facts = json_frame_facts(buf[max(start, end - _TAIL) : end].decode())
            first_frame = record.first_frame_at is None
            record.on_frame(facts, received_at, length, window)
            if verifier.due(first_frame):
                payload = bytes(buf[start:end])
                verifier.record(
                    verify_binary_frame(payload)
                    if binary
                    else verify_json_frame(payload.decode(), facts)
                )
            if stop_after_first_frame:
                await _close_politely(reader)
                return
        elif opcode == _OP_CLOSE:
            payload = bytes(buf[start:end])
            code = _SHORT.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            raise _Closed(code, payload[2:].decode("utf-8", "replace"))
        elif opcode == _OP_PING:
            await reader.sock.send(_masked(0xA, bytes(buf[start:end])))
        elif opcode == _OP_CONTINUATION:
            record.error = "unexpected continuation frame"
            return


async def _close_politely(reader: _Reader) -> None:
    """Send a close frame and wait (briefly) for the server's, as a browser does."""
    await reader.sock.send(_masked(_OP_CLOSE, _SHORT.pack(1000)))
    with trio.move_on_after(2):
        while True:
            first, *_ = await reader.next_frame()
            if first & 0x0F == _OP_CLOSE:
                return
