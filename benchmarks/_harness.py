"""The harness side of a run: client workers, the /health sampler, the server meter.

The harness process itself stays nearly idle while the load runs (the viewers
live in worker processes), so the ``/health`` latency it samples every 100 ms
is the server's, not the harness's own queueing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import _http
from ._server import ProcessMeter, child_environment, normal_priority


class WorkerFailed(Exception):
    """A client worker exited or reported an error before it gave its result."""


class Worker:
    """One client worker process (``benchmarks._clients``): send it commands, read its events."""

    def __init__(
        self, name: str, process: trio.Process, on_progress: Callable[[Worker], None]
    ) -> None:
        self.name = name
        self.process = process
        self.progress: dict[str, Any] = {}
        self._on_progress = on_progress
        self._send, self._events = trio.open_memory_channel[dict[str, Any]](64)

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        name: str,
        job: dict[str, Any],
        *,
        log_path: Path,
        on_progress: Callable[[Worker], None] = lambda worker: None,
    ) -> Worker:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as stderr:  # noqa: ASYNC230 - opening a local log file
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "benchmarks._clients"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_environment(),
                preexec_fn=normal_priority,
            )
        worker = cls(name, process, on_progress)
        nursery.start_soon(worker._read_events)
        await worker.send(job)
        return worker

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all((json.dumps(message) + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise WorkerFailed(f"{self.name} is gone (exit code {self.process.poll()})") from exc

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async with self._send:
            while True:
                chunk = await self.process.stdout.receive_some(1 << 20)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = json.loads(line)
                    if event.get("event") == "progress":
                        self.progress = event
                        self._on_progress(self)
                    else:
                        await self._send.send(event)

    async def wait_for(self, kind: str, limit: float) -> dict[str, Any]:
        """The next event of ``kind`` (progress events excepted); raises WorkerFailed."""
        with trio.move_on_after(limit):
            async for event in self._events:
                if event.get("event") == kind:
                    return event
                if event.get("event") == "error":
                    raise WorkerFailed(f"{self.name}: {event.get('message')}")
            raise WorkerFailed(f"{self.name} exited (code {self.process.poll()}) before {kind!r}")
        raise WorkerFailed(f"{self.name} sent no {kind!r} within {limit} s")

    async def finish(self, limit: float = 30) -> dict[str, Any]:
        """Tell the worker to stop and return its result."""
        await self.send({"cmd": "stop"})
        result = await self.wait_for("result", limit)
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.poll() is None:
            self.process.kill()
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


@dataclass
class HealthSampler:
    """GET /health every ``interval`` seconds; a failed or timed-out probe counts as its timeout."""

    url: str
    interval: float = 0.1
    timeout: float = 5.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    async def run(self) -> None:
        deadline = trio.current_time()
        while True:
            try:
                response = await _http.request("GET", self.url, limit=self.timeout)
                self.latencies_ms.append(response.seconds * 1000)
                if response.status != 200:
                    self.failures += 1
            except _http.HttpError:
                self.failures += 1
                self.latencies_ms.append(self.timeout * 1000)
            deadline = max(deadline + self.interval, trio.current_time())
            await trio.sleep_until(deadline)


@dataclass
class MeterSampler:
    """Server CPU seconds and RSS every ``interval`` seconds (for RSS over time and peaks)."""

    meter: ProcessMeter
    interval: float = 0.5
    samples: list[tuple[float, float | None, int | None]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            self.samples.append((time.time(), self.meter.cpu_seconds(), self.meter.rss()))
            await trio.sleep(self.interval)

    def peak_rss(self, since: float = -math.inf) -> int | None:
        values = [rss for t, _, rss in self.samples if t >= since and rss is not None]
        return max(values) if values else None


async def server_stats(base_url: str) -> dict[str, Any] | None:
    try:
        return await _http.get_json(f"{base_url}/stats", limit=10)
    except _http.HttpError:
        return None


def captures_by_device(stats: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The ``captures`` of /stats keyed by udid, whether the server lists or maps them."""
    if not stats:
        return {}
    captures = stats.get("captures") or {}
    if isinstance(captures, list):
        return {str(c.get("udid", i)): c for i, c in enumerate(captures)}
    return dict(captures)


def connection_balance(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """client_connections, client_disconnections and the open count the server reports."""
    if not stats:
        return None
    resources = stats.get("resource_manager") or {}
    metrics = resources.get("metrics") or {}
    connections = stats.get("connection_manager") or {}
    opened = metrics.get("client_connections")
    closed = metrics.get("client_disconnections")
    return {
        "client_connections": opened,
        "client_disconnections": closed,
        "difference": None if opened is None or closed is None else opened - closed,
        "open_connections": connections.get("total_connections"),
        "total_clients": resources.get("total_clients"),
    }
