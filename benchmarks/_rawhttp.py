"""HTTP/1.1 clients on raw trio sockets, for the ``http`` scenario's worker.

No HTTP library: h11 (like most clients) stops reading at Content-Length, so a
server that never closes a ``Connection: close`` connection would look healthy.
A close-mode client here reads until the server closes; a keep-alive client
reads by Content-Length and sends its next request on the same connection. Each
request has its own deadline, so a server that never answers or never closes
shows up as a timeout, never as a hang.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from ._stats import Histogram

MAX_HEAD = 65536


class ProtocolFailure(Exception):
    """The server's bytes were not an HTTP/1.1 response we could read."""


def request_bytes(host: str, port: int, path: str, *, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{connection}\r\n".encode()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body_bytes: int
    reusable: bool  # the server keeps the connection open for the next request


class RawHttpConnection:
    """One TCP connection to the server: requests out, responses read off the raw bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.heads = 0  # response heads read

    @classmethod
    async def open(cls, host: str, port: int) -> RawHttpConnection:
        return cls(await trio.open_tcp_stream(host, port))

    async def _more(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolFailure("response head is too long")
            if not await self._more():
                raise EOFError("the server closed the connection before a response")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        self.heads += 1
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolFailure(f"bad status line {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        return int(parts[1]), headers

    async def read_to_eof(self) -> Reply:
        """A response on a ``Connection: close`` request: everything until the server closes."""
        status, _ = await self._head()
        while await self._more():
            if len(self.buffer) > 16 * MAX_HEAD:
                raise ProtocolFailure("response body is far longer than expected")
        return Reply(status, len(self.buffer), reusable=False)

    async def read_by_length(self) -> Reply:
        """A response on a keep-alive request: its Content-Length bytes, nothing more."""
        status, headers = await self._head()
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            # No length: the body ends when the connection does (RFC 9112 §6.3).
            while await self._more():
                pass
            return Reply(status, len(self.buffer), reusable=False)
        size = int(length)
        while len(self.buffer) < size:
            if not await self._more():
                raise EOFError("the server closed the connection inside a body")
        del self.buffer[:size]
        return Reply(status, size, reusable=b"close" not in headers.get(b"connection", b""))

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class RequestTally:
    """What a client's requests came to: counts by outcome, latencies of the answered ones."""

    latency: Histogram = field(default_factory=Histogram)
    outcomes: dict[str, int] = field(default_factory=dict)
    first_sent_at: float | None = None  # epoch seconds
    last_response_at: float | None = None

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def answered(self, started: float) -> None:
        now = time.perf_counter()
        self.latency.add((now - started) * 1000)
        self.last_response_at = time.time()
        self.count("ok")

    def started(self) -> float:
        if self.first_sent_at is None:
            self.first_sent_at = time.time()
        return time.perf_counter()

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    def to_json(self) -> dict:
        span = (
            None
            if self.first_sent_at is None or self.last_response_at is None
            else self.last_response_at - self.first_sent_at
        )
        ok = self.outcomes.get("ok", 0)
        return {
            "outcomes": dict(self.outcomes),
            "requests_per_s": round(ok / span, 1) if span else None,
            "latency_ms": self.latency.summary(),
            "first_sent_at": self.first_sent_at,
            "last_response_at": self.last_response_at,
        }


# What a request can fail with short of its time limit; ``_failure`` names each.
_TRANSPORT_FAILURES = (OSError, EOFError, ProtocolFailure, trio.BrokenResourceError)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "closed_early"
    if isinstance(exc, ProtocolFailure):
        return "bad_response"
    return "connection_error"


def _tally_reply(tally: RequestTally, status: int, started: float) -> None:
    if status == 200:
        tally.answered(started)
    else:
        tally.count(f"http_{status}")


async def keep_alive_client(
    host: str,
    port: int,
    path: str,
    remaining: list[int],
    tally: RequestTally,
    request_limit: float,
    held: list[RawHttpConnection],
) -> None:
    """Requests on one connection while ``remaining`` lasts; reconnects only when it must.

    A request that takes longer than ``request_limit`` counts as a timeout and its connection
    is dropped. The last connection is left open in ``held``: a client that never closes.
    """
    request = request_bytes(host, port, path, close=False)
    conn: RawHttpConnection | None = None
    while remaining[0] > 0:
        remaining[0] -= 1
        started = tally.started()
        try:
            with trio.fail_after(request_limit):
                if conn is None:
                    conn = await RawHttpConnection.open(host, port)
                await conn.stream.send_all(request)
                reply = await conn.read_by_length()
        except trio.TooSlowError:
            tally.count("timeout")
        except _TRANSPORT_FAILURES as exc:
            tally.count(_failure(exc))
        else:
            _tally_reply(tally, reply.status, started)
            if reply.reusable:
                continue
            tally.count("closed_by_server")
        if conn is not None:
            await conn.aclose()
            conn = None
    if conn is not None:
        held.append(conn)


async def close_mode_client(
    host: str, port: int, path: str, remaining: list[int], tally: RequestTally, request_limit: float
) -> None:
    """One ``Connection: close`` request per connection, each read until the server closes."""
    request = request_bytes(host, port, path, close=True)
    while remaining[0] > 0:
        remaining[0] -= 1
        started = tally.started()
        conn: RawHttpConnection | None = None
        try:
            with trio.fail_after(request_limit):
                conn = await RawHttpConnection.open(host, port)
                await conn.stream.send_all(request)
                reply = await conn.read_to_eof()
        except trio.TooSlowError:
            # Typically: the answer came, and the server never closed the connection.
            tally.count("answered_never_closed" if conn and conn.heads else "timeout")
        except _TRANSPORT_FAILURES as exc:
            tally.count(_failure(exc))
        else:
            _tally_reply(tally, reply.status, started)
        finally:
            if conn is not None:
                await conn.aclose()
