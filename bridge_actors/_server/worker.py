"""Hypercorn's trio worker, with an accept loop that keeps probes out of the queue.

Hypercorn's own worker accepts one connection per round of the scheduler and
every request then takes its turn with everything else: behind a burst of
hundreds of connection attempts, a health probe waits for the whole burst. Here
each round drains the accept queue, and a complete ``GET /health`` (``/livez``,
``/readyz``) already waiting on a new connection is answered on the spot, before
the connection would join the round-robin. Everything else goes to a
:class:`~bridge_actors._server.connection.Connection` (Hypercorn's TCPServer with read
deadlines) exactly as Hypercorn's worker would hand it over.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Container
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from .abort import OpenConnections
from .connection import CompleteResponses, Connection, json_response_bytes

if TYPE_CHECKING:
    from .probes import Probes

log = logging.getLogger("bridge_actors.server")

_IGNORABLE_ACCEPT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_PEEK_BYTES = 2048
# Connections taken off the accept queue per scheduling round: enough to drain a
# burst in a few rounds, few enough that a flood of probes cannot starve the
# requests already being served.
ACCEPT_BATCH = 256


def probe_request(data: bytes, probes: Container[str]) -> tuple[str, str, int] | None:
    """``(method, path, header length)`` if ``data`` holds one whole request for a path in
    ``probes``."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    request_line = data[: data.find(b"\r\n")].split(b" ")
    if len(request_line) != 3 or request_line[0] not in (b"GET", b"HEAD"):
        return None
    path = request_line[1].decode("latin-1")
    if path not in probes or not request_line[2].startswith(b"HTTP/1."):
        return None
    if b"content-length" in data[:end].lower() or b"transfer-encoding" in data[:end].lower():
        return None  # a body we would have to read: leave it to Hypercorn
    if len(data) > end + 4:
        return None  # pipelined requests behind it: closing would reset them
    return request_line[0].decode(), path, end + 4


def probe_response(method: str, body: dict[str, Any], status: int) -> bytes:
    return json_response_bytes(status, body, head_only=method == "HEAD")


def _answer_probe_at_once(conn: socket.socket, probes: Probes) -> bool:
    """Answer a probe request already waiting on ``conn``; False leaves ``conn`` untouched."""
    try:
        data = conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
    except OSError:
        return False
    request = probe_request(data, probes)
    if request is None:
        return False
    method, path, length = request
    body, status = probes.answer(path)
    try:
        conn.recv(length)  # consume the request, so that closing sends FIN, not RST
        conn.send(probe_response(method, body, status))  # a new socket takes it whole
    except OSError:
        pass  # the client left already
    conn.close()
    return True


async def _accept_loop(
    listener: socket.socket,
    start_connection: Callable[[socket.socket], None],
    probes: Probes,
) -> None:
    while True:
        await trio.lowlevel.wait_readable(listener)  # a scheduling round between batches
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _IGNORABLE_ACCEPT_ERRORS:
                    continue
                if exc.errno in _RESOURCE_ERRORS:
                    log.error("accept failed (%s); pausing 100 ms", errno.errorcode[exc.errno])
                    await trio.sleep(0.1)
                    break
                raise
            conn.setblocking(False)
            if not _answer_probe_at_once(conn, probes):
                start_connection(conn)


async def worker_serve(
    app: Any,
    config: Config,
    listeners: list[socket.socket],
    probes: Probes,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    header_timeout: float,
    body_timeout: float,
    connections: OpenConnections,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listeners`` (bound, listening, non-blocking) the way
    ``hypercorn.trio.serve`` does, with the accept loop above; every connection is
    in ``connections`` while it is served."""
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(CompleteResponses(app), config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:

            async def handle(conn: socket.socket) -> None:
                sock = trio.socket.from_stdlib_socket(conn)
                stream = trio.SocketStream(sock)
                peer = connections.add(sock)
                try:
                    server = Connection(
                        wrapped,
                        config,
                        context,
                        ConnectionState(lifespan_state.copy()),
                        stream,
                        header_timeout=header_timeout,
                        body_timeout=body_timeout,
                    )
                    await server.run()
                finally:
                    connections.discard(peer, sock)
                    await trio.aclose_forcefully(stream)

            def start_connection(conn: socket.socket) -> None:
                server_nursery.start_soon(handle, conn)

            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(_accept_loop, listener, start_connection, probes)
                    task_status.started()
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    listener.close()
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
