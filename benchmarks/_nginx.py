"""A real nginx in front of the server, as the ios-bridge deployment runs it.

Default proxy settings for REST (nginx speaks HTTP/1.0 upstream with
``Connection: close``: every proxied request is a connection the server must
close), and ``Upgrade``/``Connection: upgrade`` and ``X-Real-IP`` under
``/ws/``: ``deploy/nginx.conf``, the deployment's own configuration. Its
placeholders are filled for the run; pid file and logs go to a directory of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from ._server import normal_priority

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def nginx_config(root: Path, upstream_host: str, upstream_port: int, port: int) -> str:
    """deploy/nginx.conf with the run's addresses and directory in its placeholders."""
    upstream = f"[{upstream_host}]" if ":" in upstream_host else upstream_host
    text = TEMPLATE.read_text()
    for placeholder, value in (
        ("@UPSTREAM@", f"{upstream}:{upstream_port}"),
        ("@LISTEN@", f"127.0.0.1:{port}"),
        ("@RUNTIME_DIR@", str(root)),
    ):
        text = text.replace(placeholder, value)
    return text


class NginxMissing(Exception):
    """nginx is not installed (Debian's ``nginx`` package provides /usr/sbin/nginx)."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise NginxMissing("nginx is not installed (Debian's nginx package)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _listening(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


@asynccontextmanager
async def running_nginx(
    root: Path, upstream_host: str, upstream_port: int, *, ready_timeout: float = 10.0
) -> AsyncIterator[int]:
    """nginx on a free loopback port proxying to the server; yields its port."""
    binary = nginx_binary()
    await trio.Path(root).mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "nginx.conf"
    await trio.Path(config).write_text(nginx_config(root, upstream_host, upstream_port, port))
    with open(root / "stderr.log", "ab") as log_file:  # noqa: ASYNC230 - a local log file
        process = await trio.lowlevel.open_process(
            [binary, "-p", str(root), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            preexec_fn=normal_priority,
        )
    try:
        with trio.move_on_after(ready_timeout):
            while not await _listening(port):
                if process.poll() is not None:
                    break
                await trio.sleep(0.05)
        if process.poll() is not None or not await _listening(port):
            raise RuntimeError(
                f"nginx did not listen on 127.0.0.1:{port} within {ready_timeout} s "
                f"(exit code {process.poll()}); see {root}/error.log"
            )
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
        with trio.move_on_after(10, shield=True):
            await process.wait()
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(5, shield=True):
                await process.wait()
