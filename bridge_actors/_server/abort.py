"""Ending TCP connections that a blocked send holds open.

Hypercorn's trio worker sends inside a shielded cancel scope, so a handler whose
client stopped reading cannot be cancelled out of its send. Shutting the socket
down underneath it (through a duplicate descriptor, so the owner still closes its
own) makes that send fail at once and lets the handler finish.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import dataclass

import psutil
import trio

log = logging.getLogger("bridge_actors.server")


def abort_connections(port: int, peer: tuple[str, int] | None = None) -> int:
    """Reset every connection this process accepted on ``port`` (only the one from
    ``peer`` when given); returns how many. Blocking (it reads /proc): call it in a
    thread."""
    aborted = 0
    for connection in psutil.Process().net_connections(kind="tcp"):
        if (
            connection.fd < 0
            or not connection.raddr
            or not connection.laddr
            or connection.laddr.port != port
            or (peer is not None and (connection.raddr.ip, connection.raddr.port) != peer)
        ):
            continue
        try:
            duplicate = socket.socket(fileno=os.dup(connection.fd))
        except OSError:
            continue  # closed since it was listed
        with duplicate:
            try:
                if duplicate.getsockname()[1] != port:
                    continue  # the descriptor was reused since it was listed
                if peer is not None and duplicate.getpeername()[:2] != peer:
                    continue
                duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                duplicate.shutdown(socket.SHUT_RDWR)
                aborted += 1
            except OSError:
                continue
    return aborted


@dataclass(frozen=True, slots=True)
class StuckSocketStatistics:
    watched: int
    reset: int


class StuckSockets:
    """The actor that resets a connection whose handler was told to end (evicted,
    session deleted) but is still blocked in a send ``grace`` seconds later: the
    client stopped reading, so no close frame can reach it anyway."""

    def __init__(self, *, grace: float = 1.0) -> None:
        self.grace = grace
        self._nursery: trio.Nursery | None = None
        self._port: int | None = None
        self.watched = 0
        self.reset = 0

    async def run(self, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery, self._port = nursery, port
            task_status.started()
            await trio.sleep_forever()

    def watch(self, peer: tuple[str, int] | None, finished: trio.Event) -> None:
        """Reset ``peer``'s connection unless ``finished`` is set within the grace."""
        if self._nursery is None or peer is None or finished.is_set():
            return
        self.watched += 1
        self._nursery.start_soon(self._reset_if_stuck, peer, finished)

    async def _reset_if_stuck(self, peer: tuple[str, int], finished: trio.Event) -> None:
        with trio.move_on_after(self.grace) as waiting:
            await finished.wait()
        if not waiting.cancelled_caught or self._port is None:
            return
        if await trio.to_thread.run_sync(abort_connections, self._port, peer):
            self.reset += 1
            log.info("reset the connection of %s:%d, stuck in a send", *peer)

    def statistics(self) -> StuckSocketStatistics:
        return StuckSocketStatistics(watched=self.watched, reset=self.reset)
