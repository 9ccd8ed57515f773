"""What the clients need of the wire format, done as cheaply as measuring allows.

A JSON frame is ~60-80 KB of base64 with the figures we need in its last ~150
characters, so a viewer finds ``"timestamp":`` and ``"seq":`` from the end
instead of decoding the whole message (``json.loads`` of every frame would cost
the clients more CPU than the server spends sending it). ``verify_json_frame``
decodes a message fully, for the sample of frames a viewer checks. The binary
header is the one of :mod:`bridge_actors.wire`.

The raw WebSocket handshake is for sockets trio-websocket cannot make: one
that never reads (a stalled viewer, with a tiny receive buffer), and refused
ones whose close we time to the microsecond.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from bridge_actors.wire import BINARY_HEADER, BINARY_HEADER_SIZE, BINARY_MAGIC, CODEC_H264

_TAIL = 400  # the keys after "data" fit in far fewer characters than this


@dataclass(frozen=True, slots=True)
class FrameFacts:
    """What a viewer keeps of a frame: its capture seq, capture time and input_seq."""

    seq: int
    timestamp: float
    input_seq: int


def _number_after(message: str, key: str, start: int) -> str | None:
    at = message.find(key, start)
    if at < 0:
        return None
    begin = at + len(key)
    end = begin
    length = len(message)
    while end < length and message[end] not in ",}":
        end += 1
    return message[begin:end]


def json_frame_facts(message: str) -> FrameFacts:
    """seq, timestamp and input_seq of a ``video_frame`` text message, read from its tail.

    Without the ``seq`` extension the per-connection ``frame`` counter stands in.
    Raises ValueError when the keys are not there.
    """
    start = max(0, len(message) - _TAIL)
    timestamp = _number_after(message, '"timestamp":', start)
    if timestamp is None:
        raise ValueError("video_frame message has no timestamp near its end")
    seq = _number_after(message, '"seq":', start)
    if seq is None:
        seq = _number_after(message, '"frame":', start)
    if seq is None:
        raise ValueError("video_frame message has neither seq nor frame near its end")
    input_seq = _number_after(message, '"input_seq":', start)
    return FrameFacts(int(seq), float(timestamp), int(input_seq) if input_seq else 0)


def binary_frame_facts(message: bytes) -> FrameFacts:
    if len(message) < BINARY_HEADER_SIZE:
        raise ValueError(f"binary frame of {len(message)} bytes is shorter than its header")
    magic, seq, timestamp, _pw, _ph, _ptw, _pth, input_seq, _codec, _flags = (
        BINARY_HEADER.unpack_from(message)
    )
    if magic != BINARY_MAGIC:
        raise ValueError(f"binary frame has bad magic {magic!r}")
    return FrameFacts(seq, timestamp, input_seq)


def verify_json_frame(message: str, facts: FrameFacts) -> str | None:
    """Decode the whole message and compare it with the cheap reading; None when they agree."""
    try:
        decoded = json.loads(message)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if decoded.get("type") != "video_frame":
        return f"type is {decoded.get('type')!r}, not 'video_frame'"
    seq = decoded.get("seq", decoded.get("frame"))
    if seq != facts.seq or decoded.get("timestamp") != facts.timestamp:
        return f"tail reading {facts} disagrees with the decoded frame"
    if decoded.get("input_seq", 0) != facts.input_seq:
        return f"tail input_seq {facts.input_seq} != decoded {decoded.get('input_seq')}"
    try:
        jpeg = base64.b64decode(decoded["data"], validate=True)
    except (KeyError, ValueError) as exc:
        return f"data is not base64: {exc}"
    if not jpeg.startswith(b"\xff\xd8"):
        return "data is not a JPEG"
    return None


def verify_binary_frame(message: bytes) -> str | None:
    """None when the payload is what the header's codec field says: a JPEG, or an H.264
    access unit in Annex B (starting with a start code)."""
    codec = BINARY_HEADER.unpack_from(message)[8] if len(message) >= BINARY_HEADER_SIZE else None
    payload = message[BINARY_HEADER_SIZE:]
    if codec == CODEC_H264:
        if not payload.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")):
            return "H.264 payload after the header does not start with an Annex B start code"
        return None
    if not payload.startswith(b"\xff\xd8"):
        return "payload after the header is not a JPEG"
    return None


# --- raw sockets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str


def split_ws_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "http"):
        raise ValueError(f"{url!r}: only ws:// (or http://) URLs are supported")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.hostname or "127.0.0.1", parts.port or 80, path)


class RawSocket:
    """A WebSocket client socket with no library in between: handshake, then bytes."""

    def __init__(self, sock: trio.socket.SocketType, leftover: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(leftover)

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    async def _fill(self, at_least: int) -> None:
        while len(self.buffer) < at_least:
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the TCP connection")
            self.buffer += chunk

    async def read_frame(self) -> tuple[int, bytes]:
        """Next server frame: (opcode, payload). Server frames are never masked."""
        await self._fill(2)
        opcode = self.buffer[0] & 0x0F
        length = self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            await self._fill(4)
            (length,) = struct.unpack_from(">H", self.buffer, 2)
            offset = 4
        elif length == 127:
            await self._fill(10)
            (length,) = struct.unpack_from(">Q", self.buffer, 2)
            offset = 10
        await self._fill(offset + length)
        payload = bytes(self.buffer[offset : offset + length])
        del self.buffer[: offset + length]
        return opcode, payload

    async def read_until_close(self) -> tuple[int | None, str, int]:
        """Read frames until the close frame: (code, reason, data frames before it).
        The code is None when the TCP connection ended without a close frame."""
        frames = 0
        while True:
            try:
                opcode, payload = await self.read_frame()
            except (EOFError, OSError):
                return None, "", frames
            if opcode == 0x8:
                code = struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode("utf-8", "replace"), frames
            frames += 1

    def close(self) -> None:
        self.sock.close()


async def raw_connect(
    target: Target,
    *,
    receive_buffer: int | None = None,
    source_address: str | None = None,
    limit: float = 10.0,
) -> RawSocket:
    """Open a TCP connection and complete the WebSocket handshake; raise OSError if refused.

    ``receive_buffer`` is set before connecting, so the window the server sees is
    small from the first byte (a client that stops reading fills it at once).
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source_address is not None:
            await sock.bind((source_address, 0))
        with trio.fail_after(limit):
            await sock.connect((target.host, target.port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            await sock.send(request)
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = await sock.recv(4096)
                if not chunk:
                    raise OSError("server closed the connection during the handshake")
                response += chunk
                if len(response) > 65536:
                    raise OSError("handshake response is too long")
    except BaseException:
        sock.close()
        raise
    head, _, leftover = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        sock.close()
        raise OSError(f"handshake refused: {status.decode('latin-1')}")
    return RawSocket(sock, leftover)
