"""Ending TCP connections that a blocked send holds open.

Hypercorn's trio worker sends inside a shielded cancel scope, so a handler whose
client stopped reading cannot be cancelled out of its send. Resetting the socket
underneath it (``SO_LINGER`` 0, then ``shutdown``) makes that send fail at once
and lets the handler finish; the connection's owner still closes its descriptor.

The accept loop registers every connection it hands to Hypercorn in
:class:`OpenConnections` under its peer address, so that a reset is a dictionary
lookup and two system calls on the event loop: no listing of the process's
sockets, no worker thread, however many viewers are evicted at once.
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass

import trio

log = logging.getLogger("bridge_actors.server")

__all__ = ["OpenConnections", "StuckSocketStatistics", "StuckSockets"]

Peer = tuple[str, int]
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, drop unsent data


class OpenConnections:
    """The sockets of the connections being served, by peer address."""

    def __init__(self) -> None:
        self._sockets: dict[Peer, trio.socket.SocketType] = {}

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, sock: trio.socket.SocketType) -> Peer | None:
        try:
            peer = sock.getpeername()[:2]
        except OSError:
            return None  # gone already
        self._sockets[peer] = sock
        return peer

    def discard(self, peer: Peer | None, sock: trio.socket.SocketType) -> None:
        if peer is not None and self._sockets.get(peer) is sock:
            del self._sockets[peer]

    def reset(self, peer: Peer) -> bool:
        """Reset ``peer``'s connection; False if it is not (or no longer) open."""
        sock = self._sockets.get(peer)
        if sock is None:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False  # the client left meanwhile
        return True

    def reset_all(self) -> int:
        return sum(self.reset(peer) for peer in list(self._sockets))


@dataclass(frozen=True, slots=True)
class StuckSocketStatistics:
    watched: int
    reset: int
    open_connections: int


class StuckSockets:
    """The actor that resets a connection whose handler was told to end (evicted,
    session deleted) but is still blocked in a send ``grace`` seconds later: the
    client stopped reading, so no close frame can reach it anyway."""

    def __init__(self, *, grace: float = 1.0) -> None:
        self.grace = grace
        self.connections = OpenConnections()
        self._nursery: trio.Nursery | None = None
        self.watched = 0
        self.reset = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def watch(self, peer: Peer | None, finished: trio.Event) -> None:
        """Reset ``peer``'s connection unless ``finished`` is set within the grace."""
        if self._nursery is None or peer is None or finished.is_set():
            return
        self.watched += 1
        self._nursery.start_soon(self._reset_if_stuck, peer, finished)

    async def _reset_if_stuck(self, peer: Peer, finished: trio.Event) -> None:
        with trio.move_on_after(self.grace) as waiting:
            await finished.wait()
        if waiting.cancelled_caught and self.connections.reset(peer):
            self.reset += 1
            log.info("reset the connection of %s:%d, stuck in a send", *peer)

    def statistics(self) -> StuckSocketStatistics:
        return StuckSocketStatistics(
            watched=self.watched, reset=self.reset, open_connections=len(self.connections)
        )
