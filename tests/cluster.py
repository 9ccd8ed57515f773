"""Real cluster parts for the tests: Debian's redis-server, bridge instances as
processes (so a test can SIGKILL one), and nginx with deploy/nginx-cluster.conf."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from nginx import free_port, nginx_binary

from bridge_actors import ENV_NAMES
from bridge_actors._cluster.render import render_nginx_config

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx-cluster.conf"


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("the cluster tests need redis-server in CI (Debian's redis-server)")
        pytest.skip("redis-server is not installed (Debian's redis-server package)")
    return found


@dataclass
class Redis:
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.process = subprocess.Popen(
            [redis_binary(), *options, "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def running_redis() -> Iterator[Redis]:
    redis = Redis(free_port())
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@dataclass
class Instance:
    """One bridge instance as a process; ``start`` again after ``kill`` re-adopts its state."""

    instance_id: str
    port: int
    state_dir: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self):
        return self.state_dir.parent / f"{self.instance_id}.log"

    def log_tail(self, lines: int = 40) -> str:
        """The end of the instance's output, for a failed assertion to show."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        assert self.process is None
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge_actors", "serve", "--port", str(self.port)],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextmanager
def running_instances(
    root: Path, redis: Redis, count: int, **settings: str
) -> Iterator[list[Instance]]:
    instances = []
    for number in range(1, count + 1):
        name = f"bridge{number}"
        state_dir = root / name
        state_dir.mkdir(parents=True)
        env = {
            "BRIDGE_REDIS_URL": redis.url,
            "BRIDGE_INSTANCE_ID": name,
            "BRIDGE_STATE_DIR": str(state_dir),
            "BRIDGE_INITIAL_SESSION": "false",
            "BRIDGE_TRUSTED_PROXIES": "127.0.0.1",
            # Requests arrive through nginx with its Host (another port): any port of these names.
            "BRIDGE_SERVER_NAMES": "127.0.0.1,localhost",
            "BRIDGE_FPS": "5",
            "BRIDGE_SHUTDOWN_GRACE": "2",
            # A loaded test machine lags; placement by saturation is not what these test.
            "BRIDGE_SATURATED_LOOP_LAG": "30",
            **{ENV_NAMES[key]: value for key, value in settings.items()},
        }
        instances.append(Instance(name, free_port(), state_dir, env))
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


def cluster_nginx_config(root: Path, instances: list[Instance], port: int) -> str:
    return render_nginx_config(
        TEMPLATE.read_text(),
        [(i.instance_id, f"127.0.0.1:{i.port}") for i in instances],
        listen=f"127.0.0.1:{port}",
        runtime_dir=str(root),
    )


@contextmanager
def running_cluster_nginx(root: Path, instances: list[Instance]) -> Iterator[int]:
    binary = nginx_binary()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(cluster_nginx_config(root, instances, port))
    process = subprocess.Popen(
        [binary, "-p", str(root), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
