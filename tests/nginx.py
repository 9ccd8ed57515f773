"""A real nginx in front of the server, configured as the deployment runs it:
``deploy/nginx.conf`` (default proxy settings for REST, HTTP/1.0 upstream with
``Connection: close``; ``Upgrade``/``Connection: upgrade`` and ``X-Real-IP`` for
WebSockets), its placeholders filled with this test's ports and directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def nginx_config(root: Path, upstream: int, port: int) -> str:
    """deploy/nginx.conf with this run's addresses and directory in its placeholders."""
    values = {
        "@UPSTREAM@": f"127.0.0.1:{upstream}",
        "@LISTEN@": f"127.0.0.1:{port}",
        "@RUNTIME_DIR@": str(root),
    }
    text = TEMPLATE.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("the proxy tests need nginx in CI (Debian's nginx package)")
        pytest.skip("nginx is not installed (Debian's nginx package)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_nginx(root: Path, upstream: int) -> Iterator[int]:
    """nginx on a free loopback port proxying to ``upstream``; yields its port."""
    binary = nginx_binary()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(nginx_config(root, upstream, port))
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
