"""``python -m benchmarks scaleout``: several instances on one Redis behind nginx.

For each instance count: a Redis, that many ``bridge-actors serve`` processes
(``BRIDGE_REDIS_URL`` set, instance ids bridge1..N), and nginx with
``deploy/nginx-cluster.conf``; sessions are created through nginx, viewers spread
over them through nginx, and /health is polled through nginx meanwhile. Reported:
delivered frames/s in aggregate, /health p50/p99, the instances' CPU seconds per
delivered frame. Then the admission cost Redis adds: create latency and WebSocket
connect-to-first-frame on one instance without Redis and with it.

Everything is bounded: a duration per run, a fixed viewer count, every wait with a
deadline. Instances bind to the hosts of ``--hosts`` in turn (loopback by default),
so the same scenario runs unchanged on a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_listening(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


@contextmanager
def _process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server(root: Path) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with _process([*args, "--dir", str(root)]):
        _wait_listening("127.0.0.1", port)
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def instances(
    root: Path, count: int, hosts: list[str], redis_url: str | None
) -> Iterator[list[tuple[str, str, int, psutil.Process]]]:
    """``count`` instances; yields (id, host, port, process) for each."""
    with ExitStack() as stack:
        started = []
        for number in range(1, count + 1):
            name, host = f"bridge{number}", hosts[(number - 1) % len(hosts)]
            port = free_port(host)
            env = {
                **os.environ,
                "BRIDGE_INSTANCE_ID": name,
                "BRIDGE_STATE_DIR": str(root / name),
                "BRIDGE_INITIAL_SESSION": "false",
                "BRIDGE_TRUSTED_PROXIES": "127.0.0.1",
                "MAX_CONNECTIONS_PER_SESSION": "1000",
                "MAX_CONNECTIONS_PER_MINUTE": "100000",
                "BRIDGE_CREATE_SESSIONS_PER_MINUTE": "100000",
                "BRIDGE_LOG_LEVEL": "WARNING",
            }
            if redis_url:
                env["BRIDGE_REDIS_URL"] = redis_url
            args = [sys.executable, "-m", "bridge_actors", "serve", "--host", host]
            process = stack.enter_context(_process([*args, "--port", str(port)], env))
            started.append((name, host, port, psutil.Process(process.pid)))
        for _, host, port, _ in started:
            _wait_listening(host, port)
        yield started


@contextmanager
def nginx(root: Path, members: list[tuple[str, str, int, psutil.Process]]) -> Iterator[int]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    render = [sys.executable, "-m", "bridge_actors._cluster.render", "--listen"]
    render += [f"127.0.0.1:{port}", "--runtime-dir", str(root)]
    render += [f"{name}={host}:{p}" for name, host, p, _ in members]
    config = root / "nginx.conf"
    config.write_text(subprocess.run(render, check=True, capture_output=True, text=True).stdout)
    with _process([binary, "-p", str(root), "-c", str(config)]):
        _wait_listening("127.0.0.1", port)
        yield port


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _create(client: httpx.AsyncClient, base: str) -> tuple[str, float]:
    configs = (await client.get(f"{base}/api/sessions/configurations")).json()["configurations"]
    body = {"device_type": configs["device_types"][0], "ios_version": configs["ios_versions"][0]}
    began = time.perf_counter()
    response = await client.post(f"{base}/api/sessions/create", json=body, follow_redirects=True)
    took = time.perf_counter() - began
    response.raise_for_status()
    return response.json()["session_id"], took


async def _ready(client: httpx.AsyncClient, urls: list[str]) -> None:
    with trio.fail_after(START_TIMEOUT):
        for url in urls:
            while True:
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)


async def run_scaleout(
    proxy_port: int, members, sessions: int, viewers: int, duration: float
) -> dict:
    base = f"http://127.0.0.1:{proxy_port}"
    async with httpx.AsyncClient(timeout=10) as client:
        await _ready(client, [f"http://{h}:{p}" for _, h, p, _ in members])
        ids = [(await _create(client, base))[0] for _ in range(sessions)]
        owners = sorted({sid.partition("-")[0] for sid in ids})
        frames = 0
        health: list[float] = []
        cpu_before = sum(sum(m[3].cpu_times()[:2]) for m in members)

        async def viewer(index: int) -> None:
            nonlocal frames
            url = f"ws://127.0.0.1:{proxy_port}/ws/{ids[index % len(ids)]}/video?format=binary"
            async with trio_websocket.open_websocket_url(url) as ws:
                while True:
                    await ws.get_message()
                    frames += 1

        async def poll_health() -> None:
            while True:
                began = time.perf_counter()
                await client.get(f"{base}/health")
                health.append(time.perf_counter() - began)
                await trio.sleep(0.05)

        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for index in range(viewers):
                    nursery.start_soon(viewer, index)
                nursery.start_soon(poll_health)
        cpu = sum(sum(m[3].cpu_times()[:2]) for m in members) - cpu_before
    return {
        "instances": len(members),
        "sessions_on": owners,
        "viewers": viewers,
        "frames_per_s": round(frames / duration, 1),
        "health_p50_ms": round(_quantile(health, 0.5) * 1000, 2),
        "health_p99_ms": round(_quantile(health, 0.99) * 1000, 2),
        "cpu_ms_per_frame": round(cpu / frames * 1000, 3) if frames else None,
    }


async def run_admission(member, attempts: int) -> dict:
    _, host, port, _ = member
    base = f"http://{host}:{port}"
    creates: list[float] = []
    first_frames: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        await _ready(client, [base])
        for _ in range(attempts):
            session_id, took = await _create(client, base)
            creates.append(took)
            began = time.perf_counter()
            url = f"ws://{host}:{port}/ws/{session_id}/video?format=binary"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.get_message()
            first_frames.append(time.perf_counter() - began)
            await client.delete(f"{base}/api/sessions/{session_id}")
    return {
        "create_p50_ms": round(_quantile(creates, 0.5) * 1000, 2),
        "create_p99_ms": round(_quantile(creates, 0.99) * 1000, 2),
        "first_frame_p50_ms": round(_quantile(first_frames, 0.5) * 1000, 2),
        "first_frame_p99_ms": round(_quantile(first_frames, 0.99) * 1000, 2),
    }


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(n < 1 or n > 16 for n in counts):
        raise argparse.ArgumentTypeError("instance counts must be 1 to 16")
    return counts


def _hosts(text: str) -> list[str]:
    hosts = [part.strip() for part in text.split(",") if part.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError("at least one host")
    return hosts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaleout")
    parser.add_argument("--instances", type=_counts, default=[1, 2, 3])
    parser.add_argument("--hosts", type=_hosts, default=["127.0.0.1"])
    parser.add_argument("--sessions-per-instance", type=int, default=2)
    parser.add_argument("--viewers", type=int, default=60)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--admissions", type=int, default=30)
    parser.add_argument("--allow-remote", action="store_true")
    args = parser.parse_args(argv)
    if not args.allow_remote and any(h not in ("127.0.0.1", "localhost") for h in args.hosts):
        parser.error("only loopback hosts unless --allow-remote")
    if not 0 < args.duration <= 120 or not 0 < args.viewers <= 2000:
        parser.error("--duration must be in (0, 120] and --viewers in (0, 2000]")
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        root = Path(tmp)
        for count in args.instances:
            run_dir = root / f"run{count}"
            (run_dir / "nginx").mkdir(parents=True)
            with (
                redis_server(run_dir) as redis_url,
                instances(run_dir, count, args.hosts, redis_url) as members,
                nginx(run_dir / "nginx", members) as port,
            ):
                sessions = count * args.sessions_per_instance
                row = trio.run(run_scaleout, port, members, sessions, args.viewers, args.duration)
            rows.append(row)
            print(json.dumps({"kind": "scaleout", **row}), flush=True)
        admission = {}
        for label, with_redis in (("without_redis", False), ("with_redis", True)):
            run_dir = root / f"admission-{label}"
            run_dir.mkdir()
            with ExitStack() as stack:
                url = stack.enter_context(redis_server(run_dir)) if with_redis else None
                members = stack.enter_context(instances(run_dir, 1, args.hosts, url))
                admission[label] = trio.run(run_admission, members[0], args.admissions)
            print(json.dumps({"kind": "admission", "redis": with_redis, **admission[label]}))
    print()
    print("instances  frames/s  /health p50 ms  /health p99 ms  CPU ms/frame")
    for row in rows:
        print(
            f"{row['instances']:>9}  {row['frames_per_s']:>8}  {row['health_p50_ms']:>14}"
            f"  {row['health_p99_ms']:>14}  {row['cpu_ms_per_frame']:>12}"
        )
    print("admission (one instance)  create p50/p99 ms  connect-to-first-frame p50/p99 ms")
    for label, figures in admission.items():
        print(
            f"{label:<24}  {figures['create_p50_ms']:>7} / {figures['create_p99_ms']:<7}"
            f"  {figures['first_frame_p50_ms']:>7} / {figures['first_frame_p99_ms']}"
        )
    print(f"machine: {os.cpu_count()} cores, shared by every instance, nginx, Redis and the load")
    return 0
