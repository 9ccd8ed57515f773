"""Raw-socket clients: they read to EOF, send slowly, pipeline, flood and break, as
clients we did not write do. No HTTP library: those stop at Content-Length and
would hide a server that never closes."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager

import trio

# How long a test waits for something that should happen at once: a bound against
# hanging, not a measurement.
PATIENCE = 10.0


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(condition: Callable[[], bool], *, within: float = PATIENCE) -> None:
    """Poll ``condition``: descriptor counts and kernel state have no event to wait on."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def is_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def connect(
    port: int, *, receive_buffer: int | None = None, source: str | None = None
) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:``port``, from the loopback address ``source``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_to_eof(stream: trio.SocketStream, *, within: float = PATIENCE) -> bytes:
    """Everything the server sends until it closes; fails if it never closes."""
    data = b""
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def read_response(stream: trio.SocketStream, buffered: bytearray) -> tuple[bytes, bytes]:
    """One response (head, body) by its Content-Length, leaving the connection open."""
    with trio.fail_after(PATIENCE):
        while b"\r\n\r\n" not in buffered:
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed before a whole response head"
            buffered += chunk
        end = buffered.index(b"\r\n\r\n") + 4
        head = bytes(buffered[:end])
        length = content_length(head)
        while len(buffered) < end + length:
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed inside a response body"
            buffered += chunk
        body = bytes(buffered[end : end + length])
        del buffered[: end + length]
    return head, body


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def responses_in(data: bytes) -> int:
    return data.count(b"HTTP/1.1 ")


def ws_frame(payload: bytes, *, opcode: int = 0x1, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return bytes([first]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def ws_handshake(stream: trio.SocketStream, path: str, headers: str = "") -> bytes:
    """Open a WebSocket on ``stream``; returns the 101 response's head, no frame read."""
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        ).encode()
    )
    response = b""
    with trio.fail_after(PATIENCE):
        while b"\r\n\r\n" not in response:
            chunk = await stream.receive_some(1)  # byte by byte: leave every frame unread
            assert chunk, "connection closed during the handshake"
            response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return response


@asynccontextmanager
async def raw_websocket(
    port: int,
    path: str,
    *,
    receive_buffer: int | None = None,
    source: str | None = None,
    headers: str = "",
):
    stream = await connect(port, receive_buffer=receive_buffer, source=source)
    try:
        await ws_handshake(stream, path, headers)
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


async def flood(stream: trio.SocketStream, message: bytes, count: int) -> int:
    """Send up to ``count`` frames without reading, as many as the kernel takes at once
    (the last one perhaps in part: a client that breaks mid-frame)."""
    frame = ws_frame(message)
    sent = 0
    with socket.socket(fileno=os.dup(stream.socket.fileno())) as raw:
        raw.setblocking(False)
        for _ in range(count):
            try:
                if raw.send(frame) < len(frame):
                    break
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                break  # the server ended the connection under the flood
            sent += 1
    await trio.lowlevel.checkpoint()
    return sent


async def read_frame(stream: trio.SocketStream, buffered: bytearray) -> tuple[int, bytes]:
    """One server frame (opcode, payload); servers do not mask."""

    async def need(count: int) -> None:
        while len(buffered) < count:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError("the server closed without a close frame")
            buffered.extend(chunk)

    with trio.fail_after(PATIENCE):
        await need(2)
        opcode, length, offset = buffered[0] & 0x0F, buffered[1] & 0x7F, 2
        if length == 126:
            await need(4)
            length, offset = int.from_bytes(buffered[2:4], "big"), 4
        elif length == 127:
            await need(10)
            length, offset = int.from_bytes(buffered[2:10], "big"), 10
        await need(offset + length)
        payload = bytes(buffered[offset : offset + length])
        del buffered[: offset + length]
    return opcode, payload


async def close_code(stream: trio.SocketStream) -> tuple[int, str]:
    """Skip frames until the server's close frame; its code and reason."""
    buffered = bytearray()
    while True:
        opcode, payload = await read_frame(stream, buffered)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()
