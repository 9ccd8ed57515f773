"""``auth``: what authentication costs a client at admission, ``none`` against ``token``.

Two servers run side by side in this process (simulated backend, loopback), one
in mode ``none`` and one in mode ``token`` with a token file; connects alternate
between them, so both meet the same machine at the same moment. Measured:

* connect-to-first-frame of a video socket (TCP connect, handshake with the
  token as subprotocol, admission, first frame), p50 and p99;
* one authenticated REST request on a fresh connection, p50 and p99;
* the cost of a token: the median of each round's difference (token minus none),
  which the machine's load, moving both alike, leaves out. Target: within 1 ms.

The token file is written as an operator would (README, "Authorization and limits").

Bounded: ``connects`` rounds of each, and the scenario's hard time limit.
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio
import trio_websocket

from bridge_actors import Settings, open_bridge, serve

from ._load import Context
from ._scenarios import rounded
from ._stats import quantile
from ._targets import at_most


def _token_file(path: Path) -> str:
    """A token file holding one operator token; returns the token."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    path.write_text(f'[[token]]\nname = "bench"\nsha256 = "{digest}"\nrole = "operator"\n')
    return token


async def _first_frame_ms(url: str, subprotocols: list[str] | None) -> float:
    started = time.perf_counter()
    async with trio_websocket.open_websocket_url(url, subprotocols=subprotocols) as ws:
        await ws.get_message()
        elapsed = time.perf_counter() - started
        await ws.aclose()
    return elapsed * 1000


async def _rest_ms(url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: HTTP {response.status_code}")
    return elapsed * 1000


async def auth(ctx: Context, *, connects: int = 200) -> None:
    """Admission latency with and without authentication, alternating between the two."""
    state = Path(tempfile.mkdtemp(prefix="bridge-bench-auth-"))
    token_file = state / "tokens.toml"
    token = _token_file(token_file)
    common = {
        "fps": 30,
        "max_connections_per_minute": 100_000,
        "max_connections_per_session": 1000,
        "initial_session": True,
    }
    modes = {
        "none": Settings(state_dir=state / "none", auth="none", **common),
        "token": Settings(state_dir=state / "token", auth="token", token_file=token_file, **common),
    }
    frame_ms: dict[str, list[float]] = {"none": [], "token": []}
    rest_ms: dict[str, list[float]] = {"none": [], "token": []}
    async with (
        open_bridge(modes["none"]) as plain,
        open_bridge(modes["token"]) as guarded,
        trio.open_nursery() as nursery,
    ):
        servers = {}
        for name, bridge in (("none", plain), ("token", guarded)):
            host, port = await nursery.start(partial(serve, bridge, host="127.0.0.1", port=0))
            servers[name] = (f"{host}:{port}", bridge.list_sessions()[0].session_id)
        with ctx.reporter.task("auth: connect to first frame", total=connects) as task:
            for done in range(connects):
                for name in ("none", "token"):
                    address, session = servers[name]
                    protocols = [f"bridge.token.{token}"] if name == "token" else None
                    url = f"ws://{address}/ws/{session}/video"
                    frame_ms[name].append(await _first_frame_ms(url, protocols))
                    headers = {"Authorization": f"Bearer {token}"} if name == "token" else {}
                    rest = f"http://{address}/api/sessions/{session}"
                    rest_ms[name].append(await _rest_ms(rest, headers))
                task.update(completed=done + 1)
        nursery.cancel_scope.cancel()

    figures: dict[str, object] = {"connects_per_mode": connects}
    for name in ("none", "token"):
        figures[f"{name}_first_frame_p50_ms"] = rounded(quantile(frame_ms[name], 0.5))
        figures[f"{name}_first_frame_p99_ms"] = rounded(quantile(frame_ms[name], 0.99))
        figures[f"{name}_rest_p50_ms"] = rounded(quantile(rest_ms[name], 0.5))
        figures[f"{name}_rest_p99_ms"] = rounded(quantile(rest_ms[name], 0.99))
    p50_cost = quantile(frame_ms["token"], 0.5) - quantile(frame_ms["none"], 0.5)  # type: ignore[operator]
    p99_cost = quantile(frame_ms["token"], 0.99) - quantile(frame_ms["none"], 0.99)  # type: ignore[operator]
    # Each round's token connect minus its none connect, made moments apart: the load of
    # the machine, which moves both, cancels out of the difference.
    paired = [t - n for t, n in zip(frame_ms["token"], frame_ms["none"], strict=True)]
    paired_cost = quantile(paired, 0.5)
    figures["token_cost_first_frame_p50_ms"] = rounded(p50_cost)
    figures["token_cost_first_frame_p99_ms"] = rounded(p99_cost)
    figures["token_cost_paired_median_ms"] = rounded(paired_cost, 3)
    await ctx.results.add_figures("auth", "admission", figures)
    await ctx.results.add_targets(
        at_most("auth", "token cost, first frame (paired median)", paired_cost, 1.0, " ms", 3),
    )
