"""Stalled viewers: sockets that finish the handshake and then never read.

The server cannot see a stall at once: the kernel's send buffer on its side and
the (deliberately tiny) receive buffer on ours absorb the first frames, and
only then do its writes block. So each stalled socket is watched from the
kernel's side, in ``/proc/net/tcp``: the server end's send queue (``tx_queue``)
growing until it stops (buffers full, the stall now visible to the server),
then the socket leaving ESTABLISHED (the server closed it, or reset it).
The server's own count of evicted viewers (``/stats``) is sampled beside it:
a viewer can be dropped from the fan-out well before its socket goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._wire import RawSocket, Target, raw_connect

PROC_NET_TCP = Path("/proc/net/tcp")
_ESTABLISHED = 0x01
TCP_STATES = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TcpEntry:
    local_port: int
    remote_port: int
    state: int
    tx_queue: int


def parse_proc_net_tcp(text: str) -> list[TcpEntry]:
    """The entries of a ``/proc/net/tcp`` listing (ports, state, bytes queued to send)."""
    entries = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        local, remote, state, queues = parts[1], parts[2], parts[3], parts[4]
        tx_queue = queues.split(":")[0]
        entries.append(
            TcpEntry(
                int(local.rsplit(":", 1)[1], 16),
                int(remote.rsplit(":", 1)[1], 16),
                int(state, 16),
                int(tx_queue, 16),
            )
        )
    return entries


@dataclass
class StallTrace:
    """One stalled socket as seen from the server's end of the connection."""

    client_port: int
    connected_at: float  # epoch seconds, handshake done
    max_tx_queue: int = 0
    buffers_full_at: float | None = None
    closed_at: float | None = None
    final_state: str = "ESTABLISHED"
    samples: list[tuple[float, int]] = field(default_factory=list)

    def observe(self, now: float, entry: TcpEntry | None) -> None:
        if self.closed_at is not None:
            return
        if entry is None or entry.state != _ESTABLISHED:
            self.closed_at = now
            self.final_state = "gone" if entry is None else TCP_STATES.get(entry.state, "?")
            return
        self.samples.append((now, entry.tx_queue))
        if entry.tx_queue > self.max_tx_queue:
            self.max_tx_queue = entry.tx_queue

    def settle(self) -> None:
        """When the queue first reached 90% of its peak: the moment the server's writes blocked."""
        threshold = 0.9 * self.max_tx_queue
        self.buffers_full_at = next(
            (t for t, q in self.samples if self.max_tx_queue and q >= threshold), None
        )

    def to_json(self) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.connected_at, 3)

        return {
            "client_port": self.client_port,
            "max_server_send_queue_bytes": self.max_tx_queue,
            "buffers_full_after_s": since(self.buffers_full_at),
            "socket_closed_after_s": since(self.closed_at),
            "socket_closed_after_buffers_full_s": (
                None
                if self.closed_at is None or self.buffers_full_at is None
                else round(self.closed_at - self.buffers_full_at, 3)
            ),
            "server_socket_state": self.final_state,
        }


class StalledViewers:
    """``count`` raw WebSocket viewers that never read, and their traces."""

    def __init__(self, target: Target, server_port: int, receive_buffer: int = 4096) -> None:
        self.target = target
        self.server_port = server_port
        self.receive_buffer = receive_buffer
        self.sockets: list[RawSocket] = []
        self.traces: list[StallTrace] = []
        self.evicted_at: list[float] = []  # when the server's evicted counter went up

    async def open(self, count: int) -> None:
        for _ in range(count):
            sock = await raw_connect(self.target, receive_buffer=self.receive_buffer)
            self.sockets.append(sock)
            self.traces.append(StallTrace(sock.local_port, time.time()))

    async def open_many(self, count: int, concurrency: int = 16) -> dict[str, int]:
        """Open ``count`` sockets, ``concurrency`` handshakes at a time; the failures by kind."""
        failures: dict[str, int] = {}
        left = [count]

        async def lane() -> None:
            while left[0] > 0:
                left[0] -= 1
                try:
                    sock = await raw_connect(self.target, receive_buffer=self.receive_buffer)
                except (OSError, trio.TooSlowError) as exc:
                    kind = str(exc) if "refused" in str(exc) else type(exc).__name__
                    failures[kind] = failures.get(kind, 0) + 1
                    continue
                self.sockets.append(sock)
                self.traces.append(StallTrace(sock.local_port, time.time()))

        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, count)):
                nursery.start_soon(lane)
        return failures

    async def watch(self, interval: float = 0.05) -> None:
        """Sample /proc/net/tcp until every stalled socket has been closed by the server."""
        while any(t.closed_at is None for t in self.traces):
            text = await trio.to_thread.run_sync(PROC_NET_TCP.read_text)
            now = time.time()
            server_side = {
                e.remote_port: e
                for e in parse_proc_net_tcp(text)
                if e.local_port == self.server_port
            }
            for trace in self.traces:
                trace.observe(now, server_side.get(trace.client_port))
            await trio.sleep(interval)

    async def watch_evictions(self, evicted_count, interval: float = 0.2) -> None:
        """Sample the server's evicted-viewer counter; note when it passes each stalled one."""
        base = await evicted_count()
        if base is None:
            return
        while len(self.evicted_at) < len(self.traces):
            count = await evicted_count()
            now = time.time()
            while count is not None and base + len(self.evicted_at) < count:
                self.evicted_at.append(now)
            await trio.sleep(interval)

    def evicted_after(self) -> list[float]:
        """Seconds from the stalled sockets' connection to each eviction the server counted."""
        start = min((t.connected_at for t in self.traces), default=0.0)
        return [round(t - start, 3) for t in self.evicted_at]

    async def close_codes(self, limit: float = 10.0) -> list[int | str]:
        """Start reading at last: what each socket got at its end (the close code, or how the
        connection ended without one)."""
        codes: list[int | str] = ["open"] * len(self.sockets)

        async def drain(i: int, sock: RawSocket) -> None:
            with trio.move_on_after(limit):
                try:
                    code = (await sock.read_until_close())[0]
                except ConnectionResetError:
                    code = None
                codes[i] = "reset or no close frame" if code is None else code

        async with trio.open_nursery() as nursery:
            for i, sock in enumerate(self.sockets):
                nursery.start_soon(drain, i, sock)
        return codes

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def summaries(self) -> list[dict[str, Any]]:
        for trace in self.traces:
            trace.settle()
        return [trace.to_json() for trace in self.traces]
