"""WebSocket protocol errors end with the close frame RFC 6455 asks for, over raw sockets.

The frames are built by hand so that each breaks exactly one rule; a client
library would refuse to send them.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
from conftest import open_ws
from test_server_ws import wait_until

from bridge_actors._server.views import connection_manager

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009


def client_frame(first_byte: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One frame with the given FIN/RSV/opcode byte, masked as a client must (unless not)."""
    length = len(payload)
    if length < 126:
        header = bytes([first_byte, (0x80 if masked else 0) | length])
    else:
        header = bytes([first_byte, (0x80 if masked else 0) | 126]) + struct.pack("!H", length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(opcode, payload)`` of each whole unmasked frame in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


async def handshake(host: str, port: int, path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect((host, port))
    await sock.send(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in response:
            chunk = await sock.recv(1)
            assert chunk, "closed during the handshake"
            response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def read_until_closed(sock: trio.socket.SocketType) -> bytes:
    """What the server sends until its close frame (after which it may wait for ours) or EOF."""
    data = b""
    with trio.fail_after(10):
        while not any(opcode == 0x8 for opcode, _ in server_frames(data)):
            try:
                chunk = await sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


async def close_code_after(server, frame: bytes) -> int | None:
    """Send ``frame`` on a control socket; the code of the server's close frame (None: none)."""
    sock = await handshake(server.host, server.port, f"/ws/{server.session_id}/control")
    with sock:
        await sock.send(frame)
        received = await read_until_closed(sock)
    closes = [payload for opcode, payload in server_frames(received) if opcode == 0x8]
    if not closes:
        return None
    return struct.unpack("!H", closes[0][:2])[0]


PROTOCOL_ERRORS = [
    ("invalid UTF-8 text", client_frame(0x81, b'{"t":"\xff\xfe"}'), INVALID_DATA),
    ("reserved opcode 3", client_frame(0x83, b"x"), PROTOCOL_ERROR),
    ("reserved control opcode 0xB", client_frame(0x8B, b""), PROTOCOL_ERROR),
    ("RSV1 without an extension", client_frame(0xC1, b"{}"), PROTOCOL_ERROR),
    ("RSV3 set", client_frame(0x91, b"{}"), PROTOCOL_ERROR),
    ("unmasked client frame", client_frame(0x81, b"{}", masked=False), PROTOCOL_ERROR),
    ("continuation without a start", client_frame(0x80, b"x"), PROTOCOL_ERROR),
    ("fragmented ping", client_frame(0x09, b""), PROTOCOL_ERROR),
    ("close code 999", client_frame(0x88, struct.pack("!H", 999)), PROTOCOL_ERROR),
]


@pytest.mark.parametrize(
    ("frame", "code"), [pytest.param(f, c, id=n) for n, f, c in PROTOCOL_ERRORS]
)
async def test_protocol_error_gets_its_close_frame(server, frame, code):
    """Each breaks one rule of RFC 6455 §5; the server fails the connection with its code."""
    assert await close_code_after(server, frame) == code
    # The server is unharmed: a well-behaved client is still served.
    async with open_ws(server.ws_url(server.session_id, "control")) as ws:
        await ws.send_message('{"t":"tap","x":1,"y":1,"id":1}')
        with trio.fail_after(10):
            assert '"ack"' in await ws.get_message()


async def test_a_clean_close_is_still_answered_with_the_clients_code(server):
    assert await close_code_after(server, client_frame(0x88, struct.pack("!H", 1000))) == 1000


async def test_a_message_too_big_still_closes_with_1009(tmp_path):
    from conftest import running_server

    async with running_server(tmp_path, max_message_bytes=4096) as server:
        frame = client_frame(0x81, b'"' + b"x" * 5000 + b'"')
        assert await close_code_after(server, frame) == MESSAGE_TOO_BIG


def test_install_refuses_a_hypercorn_it_does_not_know(monkeypatch):
    from hypercorn.protocol import h11

    from bridge_actors._server import wsclose as _wsclose

    monkeypatch.setattr(h11, "WSStream", object)
    with pytest.raises(RuntimeError, match="cannot be installed"):
        _wsclose.install()


async def test_a_message_too_big_ends_the_connection_and_the_handler(tmp_path):
    """After the 1009 the client's data and its answering close are still read: the
    connection ends, though the rest of the refused message and another message came first."""
    from conftest import running_server

    async with running_server(tmp_path, max_message_bytes=4096) as server:
        sock = await handshake(server.host, server.port, f"/ws/{server.session_id}/control")
        with sock:
            big = client_frame(0x81, b"x" * 20_000)
            await sock.send(big[:8000])  # enough to be refused, the rest still to come
            received = await read_until_closed(sock)
            closes = [payload for opcode, payload in server_frames(received) if opcode == 0x8]
            assert struct.unpack("!H", closes[0][:2])[0] == MESSAGE_TOO_BIG
            await sock.send(
                big[8000:] + client_frame(0x81, b"{}") + client_frame(0x88, struct.pack("!H", 1000))
            )
            with trio.fail_after(10):
                while await sock.recv(65536):
                    pass  # until the server closes the connection
        # The handler ended too: its connection slot is free.
        await wait_until(
            lambda: (
                connection_manager(server.bridge.connection_statistics())["total_connections"] == 0
            )
        )


async def test_a_client_that_never_answers_the_1009_does_not_keep_the_connection(
    tmp_path, monkeypatch
):
    from conftest import running_server

    from bridge_actors._server import wsclose

    monkeypatch.setattr(wsclose, "CLOSE_HANDSHAKE_TIMEOUT", 0.3)
    async with running_server(tmp_path, max_message_bytes=4096) as server:
        sock = await handshake(server.host, server.port, f"/ws/{server.session_id}/control")
        with sock:
            await sock.send(client_frame(0x81, b"x" * 20_000)[:8000])  # refused; then silence
            received = b""
            with trio.fail_after(10):
                while chunk := await sock.recv(65536):
                    received += chunk  # the close frame, then the end of the connection
        closes = [payload for opcode, payload in server_frames(received) if opcode == 0x8]
        assert struct.unpack("!H", closes[0][:2])[0] == MESSAGE_TOO_BIG
        await wait_until(lambda: server.bridge.limiter.statistics().active_connections == 0)
