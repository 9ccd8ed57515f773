"""Shared fixtures: a real server on 127.0.0.1 (port 0) and the clients that talk to it.

``running_server(tmp_path, **settings)`` opens a bridge with those settings,
serves it in a nursery and yields a :class:`RunningServer`; leaving the block
shuts the server down the way an embedding application would (cancellation).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from fakes import FakeTools, gone, helpers_gone

from bridge_actors import Bridge, Settings, open_bridge, serve

# Generous limits, so a test meets only the limit it is about.
TEST_DEFAULTS: dict[str, Any] = {
    "fps": 10,
    "max_connections_per_minute": 1000,
    "max_connections_per_session": 100,
    "create_sessions_per_minute": 100,
    "shutdown_grace": 3.0,
}


@dataclass
class RunningServer:
    bridge: Bridge
    host: str
    port: int
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, session_id: str, kind: str, query: str = "") -> str:
        url = f"ws://{self.host}:{self.port}/ws/{session_id}/{kind}"
        return f"{url}?{query}" if query else url

    @property
    def session_id(self) -> str:
        """The session created at start (settings.initial_session)."""
        return self.bridge.list_sessions()[0].session_id

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get("/stats")
        assert response.status_code == 200
        return response.json()

    async def capture_stats(self, session_id: str | None = None) -> dict[str, Any]:
        udid = self.bridge.get_session(session_id or self.session_id).device.udid
        return (await self.stats())["captures"][udid]


@asynccontextmanager
async def running_server(state_dir: Path, **settings: Any) -> AsyncIterator[RunningServer]:
    values = {**TEST_DEFAULTS, "state_dir": state_dir, **settings}
    async with open_bridge(Settings(**values)) as bridge, trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(serve, bridge, host="127.0.0.1", port=0))
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
            yield RunningServer(bridge, host, port, http)
        nursery.cancel_scope.cancel()
    for backend in bridge.backends.values():
        census = getattr(backend, "census", None)  # the backends that run helper tools
        assert census is None or census.running_pids() == frozenset(), "a child was never reaped"


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def tools(tmp_path, temp_root):
    fake = FakeTools(tmp_path / "tools")
    yield fake
    assert fake.census.running_pids() == frozenset(), "a child process was never reaped"
    assert all(gone(pid) for pid in fake.pids()), "a fake tool is still running"
    assert helpers_gone(fake), "a helper of a fake tool is still running"
    assert list(temp_root.iterdir()) == [], "a temporary file survived"


@pytest.fixture
def ios_tools(tools: FakeTools, monkeypatch) -> FakeTools:
    """The fake tools, first on PATH, so the ios backend runs them."""
    monkeypatch.setenv("PATH", f"{tools.dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tools


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as running:
        yield running


# --- WebSocket helpers ------------------------------------------------------------------------


def open_ws(url: str, **options: Any):
    return trio_websocket.open_websocket_url(url, **options)


async def close_of(ws: trio_websocket.WebSocketConnection) -> tuple[int, str | None]:
    """Read until the server closes; the close code and reason it sent."""
    with trio.fail_after(10):
        while True:
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code, closed.reason.reason


async def next_json(ws: trio_websocket.WebSocketConnection, within: float = 10) -> dict:
    with trio.fail_after(within):
        return json.loads(await ws.get_message())


async def next_of_type(ws, kind: str, within: float = 10) -> dict:
    """The next JSON message whose ``type`` is ``kind``, skipping others (frames, log lines)."""
    with trio.fail_after(within):
        while True:
            message = json.loads(await ws.get_message())
            if message.get("type") == kind:
                return message


@asynccontextmanager
async def stalled_viewer(
    host: str, port: int, path: str, receive_buffer: int = 4096
) -> AsyncIterator[trio.socket.SocketType]:
    """A client that completes the WebSocket handshake and then never reads again."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((host, port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        await sock.send(request)
        response = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in response:
                chunk = await sock.recv(1)  # byte by byte: leave every frame unread
                assert chunk, "connection closed during the handshake"
                response += chunk
        assert response.startswith(b"HTTP/1.1 101"), response
        yield sock
