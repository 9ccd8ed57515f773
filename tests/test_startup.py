"""What a new user meets at start-up: a state directory in use, broken media, a port in use."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from test_media import backend, make_clip

from bridge_actors import BridgeError, DeviceError, Settings, StateDirInUse, open_bridge
from bridge_actors._services.statelock import LOCK_FILENAME, hold_state_dir

SERVE = [sys.executable, "-m", "bridge_actors", "serve", "--host", "127.0.0.1"]
START_TIMEOUT = 60


# --- one server per state directory ------------------------------------------------------------


def test_a_held_state_directory_is_refused_naming_it_and_the_holder(tmp_path: Path):
    with hold_state_dir(tmp_path) as lock_file:
        assert lock_file == tmp_path / LOCK_FILENAME
        with pytest.raises(StateDirInUse) as refused, hold_state_dir(tmp_path):
            pass
        assert refused.value.pid == os.getpid()
        assert str(tmp_path) in str(refused.value)
        assert f"pid {os.getpid()}" in str(refused.value)
    with hold_state_dir(tmp_path):  # released when the holder is done
        pass


def test_a_state_directory_that_cannot_exist_is_named(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(BridgeError, match=r"state directory .*file/state cannot be used"):
        hold_state_dir(tmp_path / "file" / "state").__enter__()


async def test_two_bridges_on_one_state_directory(tmp_path: Path):
    settings = Settings(state_dir=tmp_path, initial_session=False)
    async with open_bridge(settings):
        with pytest.raises(StateDirInUse, match=f"pid {os.getpid()}"):
            async with open_bridge(settings):
                pass  # pragma: no cover - refused before the block
    async with open_bridge(settings):  # the first one let go
        pass


def _wait_for_line(process: subprocess.Popen, needle: str) -> list[str]:
    """Lines of the process's stderr up to the one holding ``needle`` (bounded by the timeout
    the caller's communicate would give; here by the process ending or printing it)."""
    seen: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"the server ended without printing {needle!r}: {''.join(seen)}")


def test_a_second_server_process_on_the_same_state_directory_is_refused(tmp_path: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [*SERVE, "--port", "0", "--state-dir", str(tmp_path), "--no-initial-session"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_line(first, "listening on http://")
        second = subprocess.run(
            [*SERVE, "--port", "0", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=START_TIMEOUT,
        )
        assert second.returncode == 1
        assert f"state directory {tmp_path} is in use" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "listening" not in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=START_TIMEOUT)
    assert first.returncode == 0


# --- media sources, probed at start -----------------------------------------------------------


async def test_a_media_backend_without_sources_does_not_start():
    with pytest.raises(DeviceError, match=r"no media source is configured.*--media NAME=SOURCE"):
        await backend({}).check()


async def test_every_media_source_is_tried_at_start_and_each_broken_one_named(tmp_path, caplog):
    clip = make_clip(tmp_path / "clip.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    media = backend(
        {"good": clip, "missing": str(tmp_path / "nope.mp4"), "junk": str(tmp_path / "junk.mp4")},
        inline=False,
    )
    with caplog.at_level(logging.INFO, logger="bridge_actors.media"):
        await media.check()
    assert set(media.broken_at_start) == {"missing", "junk"}
    assert "No such file" in media.broken_at_start["missing"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("'missing'" in w and "nope.mp4" in w for w in warnings)
    assert any("'junk'" in w for w in warnings)
    assert not any("'good'" in w for w in warnings)
    assert any("1 of 3 open" in r.getMessage() for r in caplog.records)


async def test_a_source_that_never_delivers_a_frame_is_bounded(tmp_path, autojump_clock):
    never = trio.Event()

    async def hangs(*args):
        await never.wait()

    media = backend({"stuck": str(tmp_path / "x.mp4")}, open_timeout=1, read_timeout=2)
    media._run_in_worker = hangs
    await media.check()
    assert media.broken_at_start == {"stuck": "no frame within 3 s"}


def test_the_cli_refuses_a_media_backend_without_sources(tmp_path: Path):
    result = subprocess.run(
        [*SERVE, "--port", "0", "--backend", "media", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 1
    assert "no media source is configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_names_a_broken_media_source_at_start(tmp_path: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [*SERVE, "--port", "0", "--backend", "simulated,media", "--media", "bad=/no/such/file",
         "--state-dir", str(tmp_path), "--no-initial-session"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        lines = _wait_for_line(server, "listening on http://")
    finally:
        server.terminate()
        server.communicate(timeout=START_TIMEOUT)
    text = "".join(lines)
    assert "media source 'bad' (/no/such/file) does not work" in text


# --- the port before the sessions -------------------------------------------------------------


def test_a_port_in_use_is_reported_before_any_session_is_restored(tmp_path: Path):
    async def leave_a_session() -> None:
        async with open_bridge(Settings(state_dir=tmp_path)) as bridge:
            await bridge.create_session("iPhone 15 (simulated)", "18.0")

    trio.run(leave_a_session)
    stored = (tmp_path / "sessions.json").read_bytes()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, "--port", str(port), "--state-dir", str(tmp_path), "--log-level", "DEBUG"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    # Nothing of the bridge ran: no session restored, created or saved.
    assert "restored" not in result.stderr
    assert "bridge started" not in result.stderr
    assert (tmp_path / "sessions.json").read_bytes() == stored
