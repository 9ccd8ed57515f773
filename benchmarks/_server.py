"""The processes under test: ``bridge-actors serve`` or the ceiling, each in its own subprocess.

Running the server apart from the clients is what lets its CPU seconds and
memory be measured on their own (psutil on its pid). The harness passes it a
free port (``--port 0``; the server prints the address it bound), a temporary
state directory, and the limits a scenario needs through the environment, by
the names in ``bridge_actors.ENV_NAMES``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import trio

from bridge_actors import ENV_NAMES

from . import _http

_LISTENING = re.compile(rb"listening on (?:http|ws)://\[?([0-9a-fA-F.:]+|localhost)\]?:(\d+)")
DEVICE_TYPE = "iPhone 15 (simulated)"
IOS_VERSION = "18.0"


class TargetRefused(Exception):
    """The URL given is not one the harness may load (not loopback without --allow-remote)."""


def check_url(url: str, *, allow_remote: bool) -> str:
    """The base HTTP URL for ``url``; refuses anything but loopback unless ``allow_remote``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise TargetRefused(f"--url {url!r}: use an http:// (or ws://) URL")
    host = parts.hostname or ""
    if not allow_remote and not is_loopback(host):
        raise TargetRefused(
            f"--url {url!r}: {host!r} is not a loopback address; load tests target only "
            "127.0.0.0/8, ::1 or localhost unless --allow-remote is given"
        )
    port = parts.port or 80
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerUnderTest:
    """Where the server is and, when known, its process (for CPU and memory figures)."""

    base_url: str
    pid: int | None
    sessions: list[str] = field(default_factory=list)
    udids: list[str] = field(default_factory=list)  # the device of each session
    log_path: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    stopped: dict[str, Any] = field(default_factory=dict)  # how its process ended

    @property
    def ws_base(self) -> str:
        return "ws" + self.base_url.removeprefix("http")

    def video_url(
        self, session: str, *, binary: bool = False, fps: float | None = None, h264: bool = False
    ) -> str:
        query = []
        if binary or h264:
            query.append("format=binary")
        if h264:
            query.append("codec=h264")
        if fps is not None:
            query.append(f"fps={fps:g}")
        return f"{self.ws_base}/ws/{session}/video" + ("?" + "&".join(query) if query else "")

    def control_url(self, session: str) -> str:
        return f"{self.ws_base}/ws/{session}/control"


class ProcessMeter:
    """CPU seconds (the process and its children) and RSS of one pid, via psutil."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid is not None else None

    def cpu_seconds(self) -> float | None:
        if self.process is None:
            return None
        try:
            times = self.process.cpu_times()
            total = times.user + times.system
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
            return total
        except psutil.Error:
            return None

    def rss(self) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.memory_info().rss
        except psutil.Error:
            return None

    def descriptors(self) -> int | None:
        """The process's open file descriptors (sockets included)."""
        if self.process is None:
            return None
        try:
            return self.process.num_fds()
        except psutil.Error:
            return None

    def open_sockets_to(self, local_ports: set[int]) -> set[int]:
        """Which of these client ports the server still holds a socket for."""
        if self.process is None:
            return set()
        try:
            connections = self.process.net_connections(kind="tcp")
        except psutil.Error:
            return set()
        return {c.raddr.port for c in connections if c.raddr and c.raddr.port in local_ports}


@dataclass(frozen=True, slots=True)
class MachineCpu:
    """Busy CPU seconds of the whole machine and of this (harness) process, at one moment."""

    busy: float
    harness: float

    @classmethod
    def sample(cls) -> MachineCpu:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        own = psutil.Process().cpu_times()
        return cls(sum(times) - idle, own.user + own.system)

    def others(self, later: MachineCpu, seconds: float, measured: float) -> float | None:
        """Cores used meanwhile by processes other than the harness and ``measured`` seconds."""
        if seconds <= 0:
            return None
        busy = later.busy - self.busy
        harness = later.harness - self.harness
        return round(max(0.0, busy - harness - measured) / seconds, 3)


_ORIGINAL_NICENESS = os.getpriority(os.PRIO_PROCESS, 0)


def raise_harness_priority(increment: int = 10) -> int:
    """Schedule the harness (and so its /health probe) ahead of the processes it measures.

    On a 2-core machine the clients and the server keep both cores busy; a probe at
    the same priority would wait for a core and report its own queueing as the
    server's latency (a probe on another machine would not). The children go back to
    the original priority (``normal_priority``). Returns the niceness now in force
    (unchanged without the privilege to raise it).
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, _ORIGINAL_NICENESS - increment)
    return os.getpriority(os.PRIO_PROCESS, 0)


def raise_descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard limit; returns the limit now in force.

    A thousand idle connections or stalled viewers need more descriptors than a
    default soft limit of 1,024 allows, in the harness, its workers and the server it
    starts (children inherit the limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, 1 << 20) if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def normal_priority() -> None:
    """``preexec_fn`` of every child: the priority the harness was started with."""
    os.setpriority(os.PRIO_PROCESS, 0, _ORIGINAL_NICENESS)


def _server_command() -> list[str]:
    """``python -m bridge_actors serve``, with the interpreter running the harness."""
    return [sys.executable, "-m", "bridge_actors", "serve"]


def server_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """The process environment with ``settings`` (by field name) under their variable names."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES.values()}
    for name, value in settings.items():
        if name not in ENV_NAMES:
            raise ValueError(f"{name!r} is not a bridge setting (known: {', '.join(ENV_NAMES)})")
        env[ENV_NAMES[name]] = str(value)
    return env


async def _pump_output(stream: trio.abc.ReceiveStream, log_file, found, pattern) -> None:
    """Copy a child's output to its log file (a full pipe would stall the child) and
    report the first line matching ``pattern``."""
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if found is not None:
                found.put(None)
            return
        log_file.write(chunk)
        log_file.flush()
        if found is not None:
            buffer += chunk
            match = pattern.search(buffer)
            if match:
                found.put(match)
                found = None
                buffer = b""
            else:
                buffer = buffer[-4096:]


class _Slot:
    def __init__(self) -> None:
        self.value = None
        self.event = trio.Event()

    def put(self, value) -> None:
        self.value = value
        self.event.set()


@asynccontextmanager
async def managed_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None,
    log_path: Path,
    ready_timeout: float = 30.0,
    stopped: dict[str, Any] | None = None,
    stop_grace: float = 10.0,
) -> AsyncIterator[tuple[trio.Process, int]]:
    """Run ``argv`` until the block ends; yields it and the port from its listening line.

    The child is asked to stop with SIGTERM and killed if it is still there ``stop_grace``
    seconds later.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local log file, written in small lines
        process = await trio.lowlevel.open_process(
            argv,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=normal_priority,
        )
        try:
            async with trio.open_nursery() as nursery:
                found = _Slot()
                nursery.start_soon(_pump_output, process.stdout, log_file, found, _LISTENING)
                with trio.move_on_after(ready_timeout):
                    await found.event.wait()
                if found.value is None:
                    raise RuntimeError(
                        f"{argv[0]} did not print its listening address within {ready_timeout} s"
                        f" (exit code {process.poll()}); see {log_path}"
                    )
                yield process, int(found.value.group(2))
                nursery.cancel_scope.deadline = trio.current_time() + stop_grace + 5
                await _stop(process, {} if stopped is None else stopped, stop_grace)
        finally:
            if process.poll() is None:
                process.kill()
            with trio.move_on_after(5, shield=True):
                await process.wait()


async def _stop(process: trio.Process, stopped: dict[str, Any], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace``; ``stopped`` gets how long it took and how it ended."""
    began = trio.current_time()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        await process.wait()
    stopped["killed"] = process.poll() is None
    if stopped["killed"]:
        process.kill()
        await process.wait()
    stopped["exit_code"] = process.returncode
    stopped["stop_s"] = round(trio.current_time() - began, 3)


@asynccontextmanager
async def start_server(
    settings: Mapping[str, Any], *, log_path: Path, devices: int = 1, stop_grace: float = 10.0
) -> AsyncIterator[ServerUnderTest]:
    """``bridge-actors serve`` with the simulated backend on a free loopback port."""
    state_dir = Path(tempfile.mkdtemp(prefix="bridge-bench-state-"))
    values = {
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": state_dir,
        "backends": "simulated",
        "log_level": "WARNING",
        "access_log": "false",
        "initial_session": "true",
        "create_sessions_per_minute": 1000,
        **settings,
    }
    try:
        stopped: dict[str, Any] = {}
        async with managed_process(
            _server_command(),
            env=server_environment(values),
            log_path=log_path,
            stopped=stopped,
            stop_grace=stop_grace,
        ) as (process, port):
            server = ServerUnderTest(
                base_url=f"http://127.0.0.1:{port}",
                pid=process.pid,
                log_path=log_path,
                settings={k: str(v) for k, v in values.items()},
                stopped=stopped,
            )
            await ensure_sessions(server, devices)
            yield server
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


async def attach_server(base_url: str, *, devices: int = 1) -> ServerUnderTest:
    """A server the harness did not start (``--url``); its pid if it listens on this host."""
    server = ServerUnderTest(base_url=base_url, pid=_listening_pid(base_url))
    await ensure_sessions(server, devices)
    return server


def _listening_pid(base_url: str) -> int | None:
    parts = urlsplit(base_url)
    if not is_loopback(parts.hostname or ""):
        return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == parts.port:
                return conn.pid
    except psutil.Error:
        return None
    return None


async def ensure_sessions(server: ServerUnderTest, count: int) -> None:
    """Use the server's sessions, creating simulated ones until there are ``count``."""
    with trio.fail_after(30):
        while True:
            try:
                listing = await _http.get_json(f"{server.base_url}/api/sessions/")
                break
            except _http.HttpError:
                await trio.sleep(0.2)
    found = listing.get("sessions", [])[:count]
    server.sessions = [s["session_id"] for s in found]
    server.udids = [s.get("udid", "") for s in found]
    while len(server.sessions) < count:
        response = await _http.request(
            "POST",
            f"{server.base_url}/api/sessions/create",
            form={"device_type": DEVICE_TYPE, "ios_version": IOS_VERSION},
            limit=15,
        )
        if response.status != 200:
            raise RuntimeError(
                f"creating a session failed: HTTP {response.status} {response.body!r}"
            )
        created = response.json()
        server.sessions.append(created["session_id"])
        server.udids.append(created.get("session_info", {}).get("udid", ""))


def child_environment() -> dict[str, str]:
    """This environment, with ``benchmarks`` importable wherever the harness was started."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@asynccontextmanager
async def start_ceiling(*, log_path: Path, fps: int = 30) -> AsyncIterator[ServerUnderTest]:
    """The minimal broadcaster (see ``_ceiling``) in its own process."""
    argv = [sys.executable, "-m", "benchmarks._ceiling", "--port", "0", "--fps", str(fps)]
    async with managed_process(argv, env=child_environment(), log_path=log_path) as (
        process,
        port,
    ):
        yield ServerUnderTest(
            base_url=f"http://127.0.0.1:{port}", pid=process.pid, sessions=["ceiling"]
        )
