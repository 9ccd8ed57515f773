"""Shutdown: the embedding path (trigger or cancellation) and the real process under SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest
import trio
import trio_websocket
from conftest import TEST_DEFAULTS, close_of, next_of_type, open_ws, stalled_viewer

from bridge_actors import Settings, open_bridge, serve
from bridge_actors._cli import build_parser, main, settings_from_args

GRACE = 3.0
LISTENING = re.compile(r"bridge_actors listening on (http://[\w.\[\]:]+)")


async def test_a_shutdown_trigger_closes_every_socket_with_1001(tmp_path):
    settings = Settings(**{**TEST_DEFAULTS, "state_dir": tmp_path})
    stop = trio.Event()
    async with open_bridge(settings) as bridge, trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(serve, bridge, host="127.0.0.1", port=0, shutdown_trigger=stop.wait)
        )
        sid = bridge.list_sessions()[0].session_id
        base = f"ws://{host}:{port}/ws/{sid}"
        async with (
            open_ws(f"{base}/video") as video,
            open_ws(f"{base}/logs") as logs,
            open_ws(f"{base}/control") as control,
        ):
            await next_of_type(video, "video_frame")
            await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": 1}))
            await next_of_type(control, "ack")
            stop.set()
            for ws in (video, logs, control):
                assert await close_of(ws) == (1001, "server shutting down")
        assert bridge.draining and not bridge.ready
    # serve() returned on its own once the trigger fired: the nursery could close.


async def test_cancelling_serve_still_says_goodbye_with_1001(tmp_path):
    settings = Settings(**{**TEST_DEFAULTS, "state_dir": tmp_path})
    async with open_bridge(settings) as bridge:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, bridge, host="127.0.0.1", port=0))
            sid = bridge.list_sessions()[0].session_id
            async with open_ws(f"ws://{host}:{port}/ws/{sid}/video") as video:
                await next_of_type(video, "video_frame")
                nursery.cancel_scope.cancel()
                code, _ = await close_of(video)
                assert code == 1001
        with pytest.raises(OSError):
            with trio.fail_after(5):
                await trio.open_tcp_stream(host, port)  # nobody listens any more


async def read_lines(stream: trio.abc.ReceiveStream, lines: list[str], seen: trio.Event) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in complete)
        if any(LISTENING.search(line) for line in lines):
            seen.set()


async def read_until_closed(ws, counts: list[int], codes: list[int], index: int) -> None:
    while True:
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            codes[index] = closed.reason.code
            return
        counts[index] += 1


async def test_sigterm_with_fifty_viewers_exits_cleanly_within_the_grace(tmp_path: Path):
    env = {
        **os.environ,
        "BRIDGE_FPS": "30",
        "BRIDGE_JPEG_QUALITY": "95",
        "BRIDGE_VIEWER_DEADLINE": "1.0",
        "BRIDGE_SHUTDOWN_GRACE": str(GRACE),
        "MAX_CONNECTIONS_PER_SESSION": "100",
        "MAX_CONNECTIONS_PER_MINUTE": "1000",
    }
    command = [
        sys.executable, "-m", "bridge_actors", "serve",
        "--port", "0", "--state-dir", str(tmp_path), "--log-format", "json",
    ]  # fmt: skip
    lines: list[str] = []
    listening = trio.Event()
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(trio.run_process, command, env=env, stderr=subprocess.PIPE, check=False)
        )
        try:
            nursery.start_soon(read_lines, process.stderr, lines, listening)
            with trio.fail_after(30):
                await listening.wait()
            url = next(m.group(1) for m in map(LISTENING.search, lines) if m)
            await _fifty_viewers_then_sigterm(url, process)
        finally:
            if process.returncode is None:
                process.kill()

    assert process.returncode == 0, "\n".join(lines)
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    messages = [record["message"] for record in records]
    assert any(m.startswith("received SIGTERM") for m in messages)
    assert any(m.startswith("final statistics") for m in messages)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    saved = json.loads((tmp_path / "sessions.json").read_text())
    assert len(saved["sessions"]) == 2


async def _fifty_viewers_then_sigterm(url: str, process: trio.Process) -> None:
    ws_base = url.replace("http://", "ws://")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        phone = (await http.get("/api/sessions/")).json()["sessions"][0]["session_id"]
        created = await http.post(
            "/api/sessions/create", data={"device_type": "iPad (simulated)", "ios_version": "18.0"}
        )
        tablet = created.json()["session_id"]

        async def stats() -> dict:
            return (await http.get("/stats")).json()

        count = 49
        counts, codes = [0] * count, [0] * count
        async with trio.open_nursery() as readers, AsyncExitStack() as stack:
            for index in range(count):
                ws = await stack.enter_async_context(
                    open_ws(f"{ws_base}/ws/{phone}/video?format=binary&fps=4")
                )
                readers.start_soon(read_until_closed, ws, counts, codes, index)
            await stack.enter_async_context(
                stalled_viewer(host, int(port), f"/ws/{tablet}/video?format=binary")
            )
            with trio.fail_after(30):
                while True:
                    current = await stats()
                    evicted = sum(c["evicted"] for c in current["captures"].values())
                    open_now = current["rate_limiter"]["active_connections"]
                    if evicted >= 1 and open_now == 50 and all(counts):
                        break  # the stalled viewer's send is stuck; everyone else streams
                    await trio.sleep(0.05)
            children = psutil.Process(process.pid).children(recursive=True)

            process.send_signal(signal.SIGTERM)
            with trio.fail_after(GRACE + 1.5):
                await process.wait()
        # Leaving the block waited for every reader, each of which saw its socket close.
        assert codes == [1001] * count
    assert not [child for child in children if child.is_running()]


# --- the command line -------------------------------------------------------------------------


def test_flags_map_onto_settings(tmp_path):
    args = build_parser().parse_args(
        [
            "serve",
            "--profile", "production",
            "--host", "0.0.0.0",
            "--port", "9000",
            "--backend", "simulated",
            "--backend", "media",
            "--media", "cam=rtsp://user:pw@camera/stream",
            "--media", "clip=/videos/clip.mp4",
            "--state-dir", str(tmp_path),
            "--log-level", "debug",
            "--log-format", "json",
            "--no-initial-session",
            "--max-connections-per-session", "4",
        ]
    )  # fmt: skip
    settings = settings_from_args(args, env={})
    assert settings.profile == "production"
    assert settings.max_connections_per_minute == 50  # from the profile
    assert settings.max_connections_per_session == 4  # the flag wins
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.backends == ("simulated", "media")
    assert settings.media_sources == {
        "cam": "rtsp://user:pw@camera/stream",
        "clip": "/videos/clip.mp4",
    }
    assert settings.state_dir == tmp_path
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert settings.initial_session is False


def test_the_environment_and_a_config_file_sit_under_the_flags(tmp_path):
    config = tmp_path / "bridge.toml"
    config.write_text('port = 7000\nfps = 12\nlog_level = "WARNING"\n')
    args = build_parser().parse_args(["serve", "--config", str(config), "--port", "7001"])
    settings = settings_from_args(args, env={"BRIDGE_FPS": "15"})
    assert (settings.port, settings.fps, settings.log_level) == (7001, 15, "WARNING")


def test_bad_flags_are_named_and_exit_2(capsys, restore_logging):
    assert main(["serve", "--port", "many", "--fps", "0", "--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    for flag in ("--port", "--fps", "--log-level"):
        assert flag in err
    assert main(["serve", "--media", "no-equals-sign"]) == 2
    assert "--media" in capsys.readouterr().err
    assert main([]) == 2


def test_a_port_in_use_exits_1_with_a_clear_message(tmp_path, capsys, restore_logging):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--port", str(port), "--state-dir", str(tmp_path)])
    assert code == 1
    assert "Address already in use" in capsys.readouterr().err
    # The port is bound before the bridge opens: nothing was restored, created or saved.
    assert not (tmp_path / "sessions.json").exists()


@pytest.fixture
def restore_logging():
    """main() configures the root logger of the process it runs in; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_demo_is_handed_its_arguments(monkeypatch):
    from bridge_actors import _demo

    seen = {}

    def run(argv):
        seen["demo"] = argv
        return 0

    monkeypatch.setattr(_demo, "main", run)
    assert main(["demo", "--viewers", "3"]) == 0
    assert seen == {"demo": ["--viewers", "3"]}
