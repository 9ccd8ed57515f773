"""The ``http`` scenario: REST requests on raw sockets, and the server's descriptors after them.

One server, five parts in turn, each from a client worker process: keep-alive
clients (connections that each send many ``GET /api/sessions/configurations``
and never close), ``Connection: close`` clients (one request per connection,
read until the server closes it), both again through a real nginx, and a
thousand idle connections (half send nothing, half one request) while
``/health`` is probed on fresh connections. After each part the server's
descriptor count (psutil ``num_fds``) is followed from the last response until
it is back where it was before the part: within a second for connections the
server must close, within its keep-alive timeout for clients that never close.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import trio

from . import _http
from ._harness import HealthSampler
from ._load import Context
from ._nginx import NginxMissing, running_nginx
from ._scenarios import rounded
from ._server import ProcessMeter, ServerUnderTest
from ._stats import quantile
from ._targets import Target, at_most, holds

PATH = "/api/sessions/configurations"
PART_LIMIT = 60.0  # seconds one part's requests may take, at most
SETTLE_LIMIT = 10.0  # seconds to wait for the count to come back, past what the target allows
CLOSE_ALLOWANCE = 1.0  # seconds: a closed or proxied connection's descriptor goes at once

COLUMNS = (
    ("part", "part", "{}"),
    ("connections", "conns", "{}"),
    ("requests", "requests", "{}"),
    ("ok", "ok", "{}"),
    ("failed", "failed", "{}"),
    ("requests_per_s", "req/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("fds_before", "fds before", "{}"),
    ("fds_peak", "fds peak", "{}"),
    ("fds_at_done", "fds at last response", "{}"),
    ("fds_back_after_s", "back after s", "{:.2f}"),
)


async def settled_descriptors(meter: ProcessMeter, limit: float = 5.0) -> int | None:
    """The server's descriptor count once it holds still (two readings 0.25 s apart agree)."""
    last = meter.descriptors()
    with trio.move_on_after(limit):
        while True:
            await trio.sleep(0.25)
            now = meter.descriptors()
            if now == last:
                return now
            last = now
    return last


async def back_at_baseline(
    meter: ProcessMeter, baseline: int | None, since: float, limit: float
) -> tuple[float | None, int | None]:
    """Seconds from ``since`` (epoch) until the descriptor count is at ``baseline`` or
    below (None if not within ``limit`` of ``since``), and the highest count seen."""
    peak = meter.descriptors()
    if baseline is None or peak is None:
        return None, peak
    with trio.move_on_after(max(0.0, since + limit - time.time())):
        while True:
            count = meter.descriptors()
            if count is not None:
                peak = max(peak, count)
                if count <= baseline:
                    return round(time.time() - since, 3), peak
            await trio.sleep(0.02)
    return None, peak


def _back_target(part: str, row: dict[str, Any], allowed: float, why: str) -> Target:
    back = row["fds_back_after_s"]
    never_closed = row.get("outcomes", {}).get("answered_never_closed", 0)
    if never_closed:
        # The client closed those itself at its limit: what the count did next is not the server's.
        return holds("http", f"{part}: server descriptors back at the baseline", False,
                     f"<= {allowed:g} s ({why})",
                     f"{never_closed} answered connections the server never closed "
                     f"(each closed by the client at its {row['request_limit_s']:g} s limit)",
                     )  # fmt: skip
    if row["fds_before"] is None:
        return holds("http", f"{part}: server descriptors back at the baseline", None,
                     f"<= {allowed:g} s ({why})", "no server process to measure")  # fmt: skip
    measured = (
        f"after {back:.2f} s ({row['fds_before']} before, {row['fds_peak']} at most)"
        if back is not None
        else f"not within {row['watched_s']:g} s: {row['fds_left']} open, "
        f"{row['fds_before']} before"
    )
    return holds("http", f"{part}: server descriptors back at the baseline",
                 back is not None and back <= allowed, f"<= {allowed:g} s ({why})",
                 measured)  # fmt: skip


async def _requests_part(
    ctx: Context,
    nursery: trio.Nursery,
    meter: ProcessMeter,
    part: str,
    port: int,
    *,
    close: bool,
    requests: int,
    connections: int,
    request_limit: float,
    watch: float,
) -> dict[str, Any]:
    before = await settled_descriptors(meter)
    job = {"mode": "http", "host": "127.0.0.1", "port": port, "path": PATH,
           "requests": requests, "connections": connections, "close": close,
           "request_limit": request_limit, "deadline": PART_LIMIT,
           "hold_limit": watch + 30}  # fmt: skip
    peak = [before or 0]

    async def follow_peak() -> None:
        while True:
            peak[0] = max(peak[0], meter.descriptors() or 0)
            await trio.sleep(0.05)

    with ctx.reporter.task(f"http {part}", total=requests) as bar:
        async with trio.open_nursery() as sampling:
            sampling.start_soon(follow_peak)
            worker = await ctx.worker(
                nursery, f"http/{part}", job,
                on_progress=lambda w: bar.update(
                    completed=w.progress.get("done", 0), info=f"{w.progress.get('ok', 0)} ok"
                ),
            )  # fmt: skip
            done = await worker.wait_for("done", PART_LIMIT + 30)
            sampling.cancel_scope.cancel()
    at_done = meter.descriptors()
    since = done["last_response_at"] or time.time()
    with ctx.reporter.task(f"http {part}: server descriptors back at {before}?"):
        back, peak_after = await back_at_baseline(meter, before, since, watch)
    left = meter.descriptors()
    await worker.finish()
    outcomes = done["outcomes"]
    ok = outcomes.get("ok", 0)
    return {
        "part": part,
        "connections": connections,
        "requests": requests,
        "ok": ok,
        "failed": sum(outcomes.values()) - ok,
        "outcomes": outcomes,
        "stopped_at_time_limit": done["timed_out"],
        "requests_per_s": done["requests_per_s"],
        "p50_ms": done["latency_ms"]["p50"],
        "p99_ms": done["latency_ms"]["p99"],
        "fds_before": before,
        "fds_peak": None if before is None else max(peak[0], peak_after or 0, at_done or 0),
        "fds_at_done": at_done,
        "fds_back_after_s": back,
        "fds_left": left,
        "watched_s": watch,
        "request_limit_s": request_limit,
        "held_open_by_client": done["held_open"],
    }


async def _idle_part(
    ctx: Context,
    nursery: trio.Nursery,
    server: ServerUnderTest,
    meter: ProcessMeter,
    port: int,
    *,
    idle: int,
    watch: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    before = await settled_descriptors(meter)
    after_request = idle // 2
    job = {"mode": "idle", "host": "127.0.0.1", "port": port, "path": PATH,
           "silent": idle - after_request, "after_request": after_request,
           "deadline": PART_LIMIT, "hold_limit": watch + 60}  # fmt: skip
    sampler = HealthSampler(f"{server.base_url}/health", interval=0.1, timeout=2.0)
    async with trio.open_nursery() as probes:
        probes.start_soon(sampler.run)
        with ctx.reporter.task(f"http idle: {idle} connections that never close"):
            worker = await ctx.worker(nursery, "http/idle", job)
            ready = await worker.wait_for("ready", PART_LIMIT + 30)
        at_ready = meter.descriptors()
        with ctx.reporter.task(f"http idle: server descriptors back at {before}?"):
            back, peak = await back_at_baseline(meter, before, ready["ready_at"], watch)
        probes.cancel_scope.cancel()
    left = meter.descriptors()
    result = await worker.finish(limit=60)
    row = {
        "part": "idle",
        "connections": idle,
        "requests": after_request,
        "ok": ready.get("answered", 0),
        "failed": after_request - ready.get("answered", 0),
        "p50_ms": rounded(quantile(sampler.latencies_ms, 0.5)),
        "p99_ms": rounded(quantile(sampler.latencies_ms, 0.99)),
        "fds_before": before,
        "fds_peak": None if peak is None else max(peak, at_ready or 0),
        "fds_at_done": at_ready,
        "fds_back_after_s": back,
        "fds_left": left,
        "watched_s": watch,
    }
    figures = {
        "idle_connections": idle,
        "silent": idle - after_request,
        "after_one_request": after_request,
        "opened": result["opened"],
        "open_tally": result["tally"],
        "closed_by_server_when_checked": result["closed_by_server"],
        "health_samples": len(sampler.latencies_ms),
        "health_failures": sampler.failures,
        "health_p50_ms": row["p50_ms"],
        "health_p99_ms": row["p99_ms"],
        "health_max_ms": rounded(max(sampler.latencies_ms) if sampler.latencies_ms else None),
    }
    return row, figures


async def http(
    ctx: Context,
    *,
    requests: int = 4000,
    connections: int = 16,
    idle: int = 1000,
    keep_alive: float = 5.0,
    request_limit: float = 2.0,
) -> None:
    """Keep-alive, close-mode and proxied request loads, then idle connections (see above)."""
    settings = {"keep_alive_timeout": keep_alive}
    keep_alive_allowed = keep_alive + CLOSE_ALLOWANCE
    watch = keep_alive_allowed + SETTLE_LIMIT
    rows: list[dict[str, Any]] = []
    async with ctx.server("http", settings) as server, trio.open_nursery() as nursery:
        meter = ProcessMeter(server.pid)
        parts = urlsplit(server.base_url)
        port = parts.port or 80
        with ctx.reporter.task("http warm-up"):
            for _ in range(20):
                await _http.request("GET", f"{server.base_url}{PATH}")

        async def part(name: str, to_port: int, close: bool) -> None:
            rows.append(
                await _requests_part(ctx, nursery, meter, name, to_port, close=close,
                                     requests=requests, connections=connections,
                                     request_limit=request_limit, watch=watch)
            )  # fmt: skip

        await part("keep-alive", port, False)
        await part("close", port, True)
        proxied = False
        try:
            async with running_nginx(
                ctx.log_dir / "nginx", parts.hostname or "127.0.0.1", port
            ) as proxy:
                proxied = True
                await part("nginx keep-alive", proxy, False)
                await part("nginx close", proxy, True)
        except NginxMissing as missing:
            ctx.reporter.note(f"[yellow]http: no proxied parts: {missing}[/]")
        idle_row, idle_figures = await _idle_part(
            ctx, nursery, server, meter, port, idle=idle, watch=watch
        )
        rows.append(idle_row)
        nursery.cancel_scope.cancel()

    await ctx.results.add_table(
        "http", "http: requests and the server's descriptors", COLUMNS, rows
    )
    await ctx.results.add_figures(
        "http", "http-outcomes",
        {row["part"]: row["outcomes"] for row in rows if row["part"] != "idle"},
    )  # fmt: skip
    await ctx.results.add_figures("http", "http-idle", idle_figures)
    by_part = {row["part"]: row for row in rows}
    targets: list[Target] = []
    for name, row in by_part.items():
        if name == "idle":
            continue
        targets.append(
            holds("http", f"{name}: every request answered", row["failed"] == 0 and row["ok"] > 0,
                  f"{row['requests']} x 200", f"{row['ok']} x 200; {row['outcomes']}")
        )  # fmt: skip
        if "keep-alive" in name and not name.startswith("nginx"):
            why = (
                f"keep-alive timeout {keep_alive:g} s + {CLOSE_ALLOWANCE:g} s, clients never close"
            )
            targets.append(_back_target(name, row, keep_alive_allowed, why))
        else:
            why = (
                "the server closes each connection" if name == "close" else "nginx closes upstream"
            )
            targets.append(_back_target(name, row, CLOSE_ALLOWANCE, why))
    if not proxied:
        targets.append(holds("http", "nginx parts", None, "nginx installed", "not installed"))
    targets += [
        at_most("http", f"/health p99 with {idle} idle connections open", idle_row["p99_ms"],
                50, " ms"),
        _back_target(f"{idle} idle connections", idle_row, keep_alive_allowed,
                     f"keep-alive timeout {keep_alive:g} s + {CLOSE_ALLOWANCE:g} s after the "
                     f"last opened; the clients never close"),
    ]  # fmt: skip
    await ctx.results.add_targets(*targets)
