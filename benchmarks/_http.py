"""A tiny HTTP/1.1 client on trio sockets and h11: enough for /health, /stats and sessions.

Each request opens its own connection, as a health probe or a load balancer's
check would, so a measured ``/health`` latency includes accepting the connection
(the part that suffers first when an event loop is busy).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import trio


class HttpError(Exception):
    """A request failed: no connection, a timeout, or a status we did not expect."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(f"HTTP {self.status} body is not JSON: {self.body[:200]!r}") from exc


async def request(
    method: str,
    url: str,
    *,
    form: dict[str, str] | None = None,
    limit: float = 10.0,
) -> Response:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    body = b""
    if form is not None:
        body = urlencode(form).encode()
        headers += [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(body))),
        ]
    started = time.perf_counter()
    try:
        with trio.fail_after(limit):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                data = conn.send(h11.Request(method=method, target=target, headers=headers))
                if body:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                status, chunks = 0, []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
    except trio.TooSlowError as exc:
        raise HttpError(f"{method} {url}: no answer within {limit} s") from exc
    except (OSError, h11.ProtocolError, trio.BrokenResourceError) as exc:
        raise HttpError(f"{method} {url}: {exc}") from exc
    return Response(status, b"".join(chunks), time.perf_counter() - started)


async def get_json(url: str, *, limit: float = 10.0) -> Any:
    response = await request("GET", url, limit=limit)
    if response.status != 200:
        raise HttpError(f"GET {url}: HTTP {response.status}: {response.body[:200]!r}")
    return response.json()
