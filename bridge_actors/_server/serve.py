"""``serve``: the HTTP and WebSocket server of a bridge, on Hypercorn's trio worker.

The command line and an embedding application share this one code path: open a
bridge, then ``await nursery.start(serve, bridge)`` in a nursery inside it.

Two things Hypercorn cannot do for us:

* A client that stops reading must not hold a send forever. Hypercorn's trio
  worker writes inside a shielded cancel scope, so not even shutdown can
  interrupt it. We create the listening socket ourselves with
  ``TCP_USER_TIMEOUT`` (inherited by every accepted socket), which makes the
  kernel abort a connection whose data has gone unacknowledged that long, and
  hand it to Hypercorn as ``fd://N``.
* Shutdown must finish within a bound. It closes every WebSocket with 1001 and
  lets Hypercorn wait for connections to finish; whatever still hangs past the
  grace (a stalled client, before its TCP timeout) is shut down at the socket.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from quart_trio import QuartTrio

from .._bridge import Bridge
from .._checks import one_exception
from .._settings import Settings
from .app import create_app
from .authz import effective_mode
from .cluster import start_cluster_node
from .probes import ProbeFastPath
from .state import app_state
from .tokens import TokenStore
from .worker import worker_serve
from .wsclose import install as install_ws_close

log = logging.getLogger("bridge_actors.server")

__all__ = ["BACKLOG", "open_listening_socket", "serve"]

BACKLOG = 2048
# Shares of the shutdown grace: Hypercorn's own wait for open connections, then
# the moment we shut down at the socket whatever still hangs. The rest is left
# for the bridge to stop its captures and save its sessions.
HYPERCORN_GRACE_SHARE = 0.4
ABORT_SHARE = 0.6


async def open_listening_socket(
    host: str, port: int, *, tcp_user_timeout: float, backlog: int = BACKLOG
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket whose connections time out unacknowledged
    sends after ``tcp_user_timeout`` seconds. Raises OSError (address in use, bad host)."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            milliseconds = max(1, round(tcp_user_timeout * 1000))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        else:
            log.warning("TCP_USER_TIMEOUT is not available here: stalled clients time out slower")
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.backlog = BACKLOG
    config.accesslog = logging.getLogger("hypercorn.access") if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.websocket_max_message_size = settings.max_message_bytes
    config.graceful_timeout = settings.shutdown_grace * HYPERCORN_GRACE_SHARE
    config.include_server_header = False
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.h11_max_incomplete_size = settings.max_header_bytes  # the request line and headers
    return config


async def ensure_initial_session(bridge: Bridge) -> None:
    """Create one simulated session when there is none, so a new user sees a device at once."""
    if not bridge.settings.initial_session or bridge.list_sessions():
        await trio.lowlevel.checkpoint()
        return
    backend = bridge.backends.get("simulated")
    if backend is None:
        await trio.lowlevel.checkpoint()
        return
    config = await backend.configurations()
    if not config.device_types or not config.ios_versions:
        return
    version = max(config.ios_versions, key=_version_key)
    session = await bridge.create_session(config.device_types[0], version)
    log.info("created the initial session %s (%s)", session.session_id, config.device_types[0])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


class _Server:
    """One running server: its app, its socket, and the shutdown sequence."""

    def __init__(self, bridge: Bridge, app: QuartTrio, listener: socket.socket) -> None:
        self.bridge = bridge
        self.app = app
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.stop = trio.Event()
        self.served = trio.Event()
        self.abort_at: float | None = None

    def begin_shutdown(self) -> None:
        if self.abort_at is not None:
            return
        grace = self.bridge.settings.shutdown_grace
        self.abort_at = trio.current_time() + grace * ABORT_SHARE
        log.info("shutting down: closing %d WebSocket(s)", len(app_state(self.app).sockets))
        self.bridge.begin_drain()
        app_state(self.app).sockets.close_all()
        self.stop.set()

    async def run_hypercorn(self, config: Config, *, task_status) -> None:
        probes = app_state(self.app).probes
        try:
            await worker_serve(
                ProbeFastPath(self.app, probes),
                config,
                [self.listener],
                probes,
                shutdown_trigger=self.stop.wait,
                header_timeout=self.bridge.settings.header_timeout,
                body_timeout=self.bridge.settings.body_timeout,
                connections=app_state(self.app).stuck.connections,
                task_status=task_status,
            )
        finally:
            self.served.set()

    async def reap(self) -> None:
        """After shutdown began (or we were cancelled), abort what still hangs at the deadline."""
        try:
            await self.stop.wait()
        finally:
            with trio.CancelScope(shield=True):
                self.begin_shutdown()
                assert self.abort_at is not None
                with trio.move_on_at(self.abort_at):
                    await self.served.wait()
                if not self.served.is_set():
                    aborted = app_state(self.app).stuck.connections.reset_all()
                    log.warning("aborted %d connection(s) still open after the grace", aborted)


async def serve(
    bridge: Bridge,
    *,
    host: str | None = None,
    port: int | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    listener: socket.socket | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``bridge`` over HTTP and WebSockets until ``shutdown_trigger`` returns or we are
    cancelled; either way shut down gracefully within ``settings.shutdown_grace``.

    ``host`` and ``port`` default to the settings (port 0 picks a free port);
    ``task_status.started((host, port))`` reports the address actually bound.
    Start it with ``await nursery.start(serve, bridge)`` inside ``open_bridge``.
    ``listener``, from :func:`open_listening_socket`, is a socket bound before the
    bridge opened (so that a port in use is reported before sessions are restored);
    ``host`` and ``port`` are then ignored, and serve closes it when it stops.
    """
    settings = bridge.settings
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    install_ws_close()
    if listener is None:  # refuse an exposed address without auth before binding it
        effective_mode(settings.auth, [host], allow_unauthenticated=settings.allow_unauthenticated)
    if listener is not None:
        sock = listener
    else:
        sock = await open_listening_socket(host, port, tcp_user_timeout=settings.tcp_user_timeout)
    try:
        await ensure_initial_session(bridge)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        app = create_app(bridge)
        app_state(app).gate.bind(bound_host)  # no server without auth on an exposed address
    except BaseException:
        sock.close()
        raise
    server = _Server(bridge, app, sock)  # closed when the server stops listening
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.reap)
            await nursery.start(app_state(app).stuck.run)
            nursery.start_soon(reload_tokens_on_sighup, app_state(app).gate.tokens)
            await nursery.start(app_state(app).loop_lag.run)
            await nursery.start(partial(server.run_hypercorn, hypercorn_config(settings)))
            url = f"http://{_url_host(bound_host)}:{bound_port}"
            await start_cluster_node(nursery, app_state(app), url)
            log.debug("listening on http://%s:%d", _url_host(bound_host), bound_port)
            task_status.started((bound_host, bound_port))
            try:
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                else:
                    await shutdown_trigger()
            finally:
                server.begin_shutdown()
            await server.served.wait()  # Hypercorn is done; what hung was aborted by reap
            nursery.cancel_scope.cancel()  # the stuck-socket watcher has nothing left to watch
    except BaseExceptionGroup as group:
        # One plain exception out of the public API, as open_bridge does; a
        # cancellation from outside stays a cancellation.
        error = one_exception(group, "server")
        raise error from error.__cause__  # its own cause, not the group around it
    finally:
        # Every socket has ended, and closed its WebRTC peer on the way: the loop goes too.
        with trio.CancelScope(shield=True):
            await app_state(app).handlers.webrtc_viewers.stop()
    log.info("server stopped")


async def reload_tokens_on_sighup(tokens: TokenStore) -> None:
    """Re-read the token file on SIGHUP; open connections keep what they were admitted with."""
    if tokens.path is None or threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread; an embedding app reloads itself
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            tokens.reload()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
