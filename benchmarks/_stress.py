"""The scenarios of connections under stress: churn, floods past the limits, stalled viewers,
and rounds of many stalled viewers (does the server give their memory back?).

Each checks that the server stays correct (counters, close codes, evictions) and quick
(``/health``) while clients connect, leave, get refused or stop reading.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import trio

from ._harness import HealthSampler, MeterSampler, connection_balance, server_stats
from ._load import Context, sample_rss, viewer_load
from ._scenarios import MANY, MB, limits_for, rounded, viewer_urls, wait_balanced
from ._server import ProcessMeter
from ._stall import StalledViewers
from ._stats import quantile
from ._targets import at_most, below, holds
from ._wire import Target, split_ws_url

# --- churn ----------------------------------------------------------------------------------


async def churn(
    ctx: Context,
    *,
    cycles: int = 10_000,
    concurrency: int = 32,
    fmt: str = "json",
    client: str = "trio-websocket",
    warmup: int | None = None,
) -> None:
    """Connect, first frame, disconnect, ``cycles`` times; RSS and counters before and after."""
    settings = {
        "max_connections_per_session": concurrency + 50,
        "max_connections_per_minute": MANY,
        "max_connections": 2000,
    }
    warmup = min(500, max(cycles // 10, 1)) if warmup is None else warmup
    async with ctx.server("churn", settings) as server, trio.open_nursery() as nursery:
        meter = ProcessMeter(server.pid)
        url = server.video_url(server.sessions[0], binary=fmt == "binary")
        anchor = await ctx.worker(
            nursery,
            "churn/anchor",
            {"mode": "viewers", "format": fmt, "client": "lean",
             "viewers": [{"url": server.video_url(server.sessions[0], binary=fmt == "binary",
                                                  fps=1)}]},
        )  # fmt: skip
        await anchor.wait_for("ready", 60)

        async def run_cycles(n: int, label: str) -> dict[str, Any]:
            with ctx.reporter.task(label, total=n) as bar:
                job = {"mode": "churn", "url": url, "cycles": n, "concurrency": concurrency,
                       "format": fmt, "client": client, "deadline": 30 + n / 10}  # fmt: skip
                worker = await ctx.worker(
                    nursery, label, job,
                    on_progress=lambda w: bar.update(
                        completed=w.progress.get("done", 0),
                        info=f"{w.progress.get('ok', 0)} ok",
                    ),
                )  # fmt: skip
                return await worker.wait_for("result", 60 + n / 5)

        await run_cycles(warmup, "churn warm-up")
        await wait_balanced(server, 1, 10)
        await ctx.pause(2)
        rss0 = await sample_rss(meter, 5, 0.2)
        stats0 = connection_balance(await server_stats(server.base_url))
        sampler = HealthSampler(f"{server.base_url}/health")
        started = time.perf_counter()
        async with trio.open_nursery() as window:
            window.start_soon(sampler.run)
            result = await run_cycles(cycles, f"churn {cycles} cycles")
            window.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        balance = await wait_balanced(server, 1, 10)
        await ctx.pause(2)
        rss1 = await sample_rss(meter, 5, 0.2)
        anchor_result = await anchor.finish()
        nursery.cancel_scope.cancel()

    balanced = bool(balance) and balance["difference"] == 1 == balance["open_connections"]
    growth = (rss1 - rss0) / MB if rss0 and rss1 else None
    figures = {
        "cycles": cycles,
        "completed": result["completed"],
        "outcomes": result["outcomes"],
        "timed_out": result["timed_out"],
        "concurrency": concurrency,
        "client": client,
        "format": fmt,
        "cycles_per_s": rounded(result["completed"] / elapsed, 1),
        "cycle_p50_ms": result["cycle_ms"]["p50"],
        "cycle_p99_ms": result["cycle_ms"]["p99"],
        "first_frame_p50_ms": result["first_frame_ms"]["p50"],
        "first_frame_p99_ms": result["first_frame_ms"]["p99"],
        "health_p50_ms": rounded(quantile(sampler.latencies_ms, 0.5)),
        "health_p99_ms": rounded(quantile(sampler.latencies_ms, 0.99)),
        "rss_before_mb": rounded(rss0 / MB if rss0 else None, 2),
        "rss_after_mb": rounded(rss1 / MB if rss1 else None, 2),
        "rss_growth_mb": rounded(growth, 2),
        "counters_before": stats0,
        "counters_after": balance,
        "open_viewers_expected": 1,
        "anchor_viewer_closed": anchor_result["viewers"][0]["close_code"],
        "verify_failures": result["verify"]["failures"][:5],
    }
    await ctx.results.add_figures("churn", f"churn-{cycles}", figures)
    shown = (
        "no /stats" if not balance else
        f"{balance['client_connections']} - {balance['client_disconnections']} = "
        f"{balance['difference']}; open {balance['open_connections']}; expected 1"
    )  # fmt: skip
    await ctx.results.add_targets(
        holds("churn", f"{cycles} cycles: counters balance", balanced,
              "connections - disconnections == open viewers", shown),
        at_most("churn", f"{cycles} cycles: server RSS growth", growth, 5, " MB", 2),
        holds("churn", f"{cycles} cycles: every cycle got its first frame",
              result["outcomes"].get("ok", 0) == cycles, f"{cycles} ok",
              f"{result['outcomes']}"),
    )  # fmt: skip


# --- flood ----------------------------------------------------------------------------------


async def flood(
    ctx: Context,
    *,
    bursts: int = 3,
    attempts: int = 150,
    sources: int = 4,
    per_session: int = 10,
    per_minute: int = 20,
    fmt: str = "json",
    client: str = "lean",
) -> None:
    """Bursts of connection attempts past the limits, on two sessions: one full (its
    ``per_session`` viewers keep watching through the flood: 4009 for the rest) and one
    open, where each source address soon exceeds ``per_minute`` (4029)."""
    settings = {
        "max_connections_per_session": per_session,
        "max_connections_per_minute": per_minute,
    }
    spread = ["127.0.0.1"] + [f"127.0.0.{i}" for i in range(2, sources + 1)]
    interval = 2.0
    async with ctx.server("flood", settings, devices=2) as server, trio.open_nursery() as nursery:
        full, open_ = server.sessions[0], server.sessions[1]
        binary = fmt == "binary"
        job = {
            "mode": "flood",
            "urls": [server.video_url(full, binary=binary), server.video_url(open_, binary=binary)],
            "bursts": [{"at": b * interval, "attempts": attempts} for b in range(bursts)],
            "sources": spread,
            "hold_timeout": 2.0,
        }
        with ctx.reporter.task("flood attempts", total=bursts * attempts) as bar:
            worker = await ctx.worker(
                nursery, "flood", job,
                on_progress=lambda w: bar.update(completed=w.progress.get("done", 0)),
            )  # fmt: skip
            try:
                await worker.wait_for("ready", 60)

                async def flood_them() -> None:
                    await worker.send({"cmd": "go"})

                load = await viewer_load(
                    ctx,
                    server,
                    scenario="flood",
                    run="flood-held-viewers",
                    urls=viewer_urls(server, per_session, fmt),
                    fmt=fmt,
                    duration=bursts * interval + 3.0,
                    client=client,
                    params={"viewers": per_session},
                    during=flood_them,
                    settle=0.5,
                )
                # The bursts began with the held viewers' window; their answers may come later.
                outcome = await worker.wait_for("result", 60 + bursts * interval)
            finally:
                worker.kill()
        nursery.cancel_scope.cancel()
    tries = outcome.get("attempts", [])
    kinds = Counter(t["outcome"] for t in tries)
    refused = [t for t in tries if t["outcome"] == "refused"]
    codes = Counter(str(t.get("code")) for t in refused)
    close_ms = [t["close_ms"] for t in refused]
    admitted_ms = [t["first_frame_ms"] for t in tries if t["outcome"] == "admitted"]
    handshake_ms = [t["handshake_ms"] for t in tries if "handshake_ms" in t]
    by_code = {
        code: {"p50_ms": rounded(quantile(ms, 0.5)), "p99_ms": rounded(quantile(ms, 0.99))}
        for code in codes
        for ms in [[t["close_ms"] for t in refused if str(t.get("code")) == code]]
    }
    figures = {
        "attempts": len(tries),
        "outcomes": dict(kinds),
        "refusals_by_code": dict(codes),
        "close_p50_ms": rounded(quantile(close_ms, 0.5)),
        "close_p99_ms": rounded(quantile(close_ms, 0.99)),
        "close_max_ms": rounded(max(close_ms) if close_ms else None),
        "close_by_code": by_code,
        "admitted_first_frame_p50_ms": rounded(quantile(admitted_ms, 0.5)),
        "handshake_p50_ms": rounded(quantile(handshake_ms, 0.5)),
        "handshake_p99_ms": rounded(quantile(handshake_ms, 0.99)),
        "health_p50_ms": load.aggregate["health_p50_ms"],
        "health_p99_ms": load.aggregate["health_p99_ms"],
        "health_max_ms": load.aggregate["health_max_ms"],
        "held_viewers": per_session,
        "held_viewers_min_fraction": load.aggregate["fraction_min"],
        "held_viewers_latency_p99_ms": load.aggregate["latency_p99_ms"],
        "limits": {"per_session": per_session, "per_minute": per_minute, "sources": sources},
        "connect_errors": dict(Counter(t.get("error") for t in tries if t.get("error"))),
    }
    await ctx.results.add_figures("flood", "flood", figures)
    silent = kinds.get("silent", 0) + kinds.get("dropped", 0)
    await ctx.results.add_targets(
        holds("flood", "every refused socket is closed with a code", silent == 0 and bool(refused),
              "0 silent or dropped without a close frame",
              f"{silent} of {len(tries)} ({dict(kinds)}; codes {dict(codes)})"),
        at_most("flood", "refused socket closed within (p99)", figures["close_p99_ms"], 100, " ms"),
        at_most("flood", "/health p99 during the flood", figures["health_p99_ms"], 50, " ms"),
    )  # fmt: skip


# --- slow viewers ---------------------------------------------------------------------------


async def slow(
    ctx: Context,
    *,
    stalled: int = 5,
    normal: int = 50,
    duration: float = 10.0,
    deadline: float = 3.0,
    stall_window: float | None = None,
    fmt: str = "json",
    client: str = "lean",
) -> None:
    """Normal viewers with and without ``stalled`` ones beside them; how soon stalls are evicted.

    The run with stalls lasts ``stall_window`` seconds (default: long enough for the
    deadline and for a TCP user timeout of 10 s to close what the deadline did not)."""
    settings = {
        "max_connections_per_session": normal + stalled + 50,
        "max_connections_per_minute": MANY,
        "viewer_deadline": deadline,
    }
    stall_window = stall_window or max(duration, deadline + 10)
    async with ctx.server("slow", settings) as server:
        urls = viewer_urls(server, normal, fmt)
        baseline = await viewer_load(
            ctx, server, scenario="slow", run=f"slow-{normal}-no-stalls", urls=urls, fmt=fmt,
            duration=duration, client=client, params={"viewers": normal, "stalled": 0},
        )  # fmt: skip
        stall_url = split_ws_url(server.video_url(server.sessions[0], binary=fmt == "binary"))
        stalls = StalledViewers(stall_url, server_port=stall_url.port)

        async def open_stalls() -> None:
            await stalls.open(stalled)

        async def evicted_count() -> int | None:
            return _evicted(await server_stats(server.base_url))

        async def watch_stalls() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stalls.watch)
                nursery.start_soon(stalls.watch_evictions, evicted_count)

        try:
            loaded = await viewer_load(
                ctx, server, scenario="slow", run=f"slow-{normal}-with-{stalled}-stalled",
                urls=urls, fmt=fmt, duration=stall_window, client=client,
                params={"viewers": normal, "stalled": stalled},
                before_measure=open_stalls, during=watch_stalls, settle=0.2,
            )  # fmt: skip
            with ctx.reporter.task("reading what the stalled sockets got"):
                codes = await stalls.close_codes(limit=2.0)
            evicted_stat = _evicted(await server_stats(server.base_url))
        finally:
            stalls.close()
    traces = stalls.summaries()
    base = baseline.aggregate["fraction_mean"]
    after = loaded.aggregate["fraction_mean"]
    loss = (base - after) / base if base and after is not None else None
    closed_after = [t["socket_closed_after_s"] for t in traces]
    full_after = [t["buffers_full_after_s"] for t in traces]
    evicted_after = stalls.evicted_after()
    figures = {
        "normal_viewers": normal,
        "stalled_viewers": stalled,
        "deadline_s": deadline,
        "fraction_mean_without_stalls": base,
        "fraction_mean_with_stalls": after,
        "fraction_min_with_stalls": loaded.aggregate["fraction_min"],
        "normal_loss_pct": rounded(loss * 100 if loss is not None else None, 3),
        "latency_p99_ms_without": baseline.aggregate["latency_p99_ms"],
        "latency_p99_ms_with": loaded.aggregate["latency_p99_ms"],
        "stalled_close_codes": codes,
        "stall_reached_server_after_s": full_after,
        "evicted_in_stats_after_s": evicted_after,
        "socket_closed_after_s": closed_after,
        "evicted_counter_in_stats": evicted_stat,
        "stalled": traces,
    }
    await ctx.results.add_figures("slow", f"slow-{stalled}-stalled", figures)
    # A stall is visible to the server once the socket buffers between us are full.
    stalled_at = max((t for t in full_after if t is not None), default=0.0)
    allowed = stalled_at + deadline + 0.5  # + the sampling interval and a frame or two
    evicted_in_time = len(evicted_after) == stalled and all(t <= allowed for t in evicted_after)
    closed_in_time = all(t is not None and t <= allowed + 1.0 for t in closed_after)
    await ctx.results.add_targets(
        below("slow", f"{normal} normal viewers' frame loss caused by {stalled} stalled",
              None if loss is None else loss * 100, 2, "%"),
        holds("slow", "stalled viewers evicted within the deadline (server's count)",
              evicted_in_time,
              f"{stalled} evictions <= {allowed:.1f} s after connecting (stall seen at "
              f"{stalled_at:.1f} s + deadline {deadline:g} s + 0.5 s)",
              f"{len(evicted_after)} evictions, after {evicted_after} s"),
        holds("slow", "stalled viewers' sockets closed within the deadline + 1 s",
              closed_in_time, f"each <= {allowed + 1:.1f} s after connecting",
              f"after {closed_after} s; what they read: {codes}"),
    )  # fmt: skip


def _evicted(stats: dict[str, Any] | None) -> int | None:
    if not stats:
        return None
    captures = stats.get("captures") or {}
    values = captures.values() if isinstance(captures, dict) else captures
    return sum(c.get("evicted", 0) for c in values)


# --- rounds of stalled viewers ----------------------------------------------------------------


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else round(value - reference, 1)


ROUND_COLUMNS = (
    ("round", "round", "{}"),
    ("connected", "connected", "{}"),
    ("evicted", "evicted", "{}"),
    ("closed_by_server", "closed by server", "{}"),
    ("held_s", "held s", "{:.1f}"),
    ("no_connections_after_s", "0 active after s", "{:.2f}"),
    ("rss_mb", "RSS MB", "{:.1f}"),
    ("rss_vs_baseline_mb", "vs warm-up MB", "{:+.1f}"),
    ("rss_vs_first_mb", "vs round 1 MB", "{:+.1f}"),
    ("rss_vs_previous_mb", "vs round before MB", "{:+.1f}"),
    ("rss_settled_s", "settled in s", "{:.1f}"),
)


def _active(stats: dict[str, Any] | None) -> int | None:
    """The connections the server counts as open: its limiter's, else its sessions' count."""
    if not stats:
        return None
    limiter = stats.get("rate_limiter") or {}
    if "active_connections" in limiter:
        return limiter["active_connections"]
    return (stats.get("connection_manager") or {}).get("total_connections")


async def _until_no_connections(base_url: str, limit: float) -> float | None:
    """Seconds until /stats reports 0 open connections (None if not within ``limit``)."""
    began = time.perf_counter()
    with trio.move_on_after(limit):
        while True:
            if _active(await server_stats(base_url)) == 0:
                return round(time.perf_counter() - began, 3)
            await trio.sleep(0.1)
    return None


async def settled_rss(
    meter: ProcessMeter, limit: float, *, window: int = 5, interval: float = 0.5, spread_mb=1.0
) -> tuple[int | None, float | None]:
    """The server's RSS once ``window`` readings ``interval`` apart lie within ``spread_mb``
    (their median), and how long that took; after ``limit`` seconds, the median of the last
    readings and None."""
    began = time.perf_counter()
    readings: list[int] = []
    with trio.move_on_after(limit):
        while True:
            rss = meter.rss()
            if rss is not None:
                readings = [*readings[-(window - 1) :], rss]
                if len(readings) == window and (max(readings) - min(readings)) / MB <= spread_mb:
                    return sorted(readings)[window // 2], round(time.perf_counter() - began, 1)
            await trio.sleep(interval)
    return (sorted(readings)[len(readings) // 2] if readings else None), None


async def _stalled_round(
    ctx: Context,
    server: Any,
    meter: ProcessMeter,
    target: Target,
    label: str,
    count: int,
    *,
    deadline: float,
    receive_buffer: int,
    settle_limit: float,
) -> dict[str, Any]:
    """``count`` viewers that never read: connect them all, hold them until the server has
    evicted and closed them (bounded), close them, wait for 0 connections and a still RSS."""
    stalls = StalledViewers(target, server_port=target.port, receive_buffer=receive_buffer)
    evicted0 = _evicted(await server_stats(server.base_url)) or 0
    evicted = 0
    began = time.perf_counter()
    try:
        with ctx.reporter.task(f"rounds {label}: connecting {count} that never read"):
            failures = await stalls.open_many(count)
        connected = len(stalls.sockets)

        async def until_evicted() -> None:
            nonlocal evicted
            while evicted < connected:
                evicted = (_evicted(await server_stats(server.base_url)) or 0) - evicted0
                await trio.sleep(0.25)

        with ctx.reporter.task(f"rounds {label}: holding until the server evicts them"):
            with trio.move_on_after(deadline + 15):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stalls.watch, 0.2)
                    nursery.start_soon(until_evicted)
        held = time.perf_counter() - began
    finally:
        stalls.close()
    closed = sum(1 for t in stalls.traces if t.closed_at is not None)
    with ctx.reporter.task(f"rounds {label}: waiting for 0 connections and a still RSS"):
        no_connections = await _until_no_connections(server.base_url, 20)
        # Still for 5.5 s: long enough to see the server give freed memory back, if it does.
        rss, settled_s = await settled_rss(meter, settle_limit, window=12)
    return {
        "round": label,
        "viewers": count,
        "connected": connected,
        "refused": failures,
        "evicted": evicted,
        "closed_by_server": closed,
        "held_s": round(held, 1),
        "no_connections_after_s": no_connections,
        "rss_mb": rounded(rss / MB if rss else None, 1),
        "rss_settled_s": settled_s,
    }


async def rounds(
    ctx: Context,
    *,
    rounds: int = 5,
    viewers: int = 500,
    deadline: float = 3.0,
    fmt: str = "json",
    receive_buffer: int = 4096,
    warmup: int = 50,
    allowance_mb: float = 20.0,
) -> None:
    """``rounds`` times ``viewers`` video viewers that never read (a ``receive_buffer`` of
    4 KB), each round evicted, closed and gone; the server's RSS after each round against
    its RSS before the first (after a warm-up round of ``warmup`` such viewers)."""
    settings = {**limits_for(viewers), "viewer_deadline": deadline}
    settle_limit = 4.0 if ctx.args.quick else 20.0
    async with ctx.server("rounds", settings) as server, trio.open_nursery() as nursery:
        meter = ProcessMeter(server.pid)
        sampler = MeterSampler(meter, interval=0.5)
        nursery.start_soon(sampler.run)
        origin = time.time()
        target = split_ws_url(server.video_url(server.sessions[0], binary=fmt == "binary"))

        async def one(label: str, count: int) -> dict[str, Any]:
            return await _stalled_round(
                ctx, server, meter, target, label, count, deadline=deadline,
                receive_buffer=receive_buffer, settle_limit=settle_limit,
            )  # fmt: skip

        warm = await one("warm-up", min(warmup, viewers))
        baseline = warm["rss_mb"]
        rows = [warm]
        for i in range(1, rounds + 1):
            row = await one(str(i), viewers)
            rows.append(row)
        nursery.cancel_scope.cancel()
    first = rows[1]["rss_mb"] if len(rows) > 1 else None
    for previous, row in zip([None, *rows], rows, strict=False):
        row["rss_vs_baseline_mb"] = _difference(row["rss_mb"], baseline)
        row["rss_vs_first_mb"] = _difference(row["rss_mb"], first) if row is not rows[0] else None
        row["rss_vs_previous_mb"] = (
            _difference(row["rss_mb"], previous["rss_mb"]) if previous is not None else None
        )
    points = [(t - origin, rss / MB) for t, _, rss in sampler.samples if rss is not None]
    await ctx.results.add_table(
        "rounds", f"rounds: {rounds} x {viewers} viewers that never read", ROUND_COLUMNS, rows
    )
    await ctx.results.add_figures("rounds", "rounds", {
        "rounds": rounds, "viewers_per_round": viewers, "deadline_s": deadline,
        "receive_buffer_bytes": receive_buffer, "format": fmt,
        "rss_baseline_mb": baseline,
        "rss_first_round_level_mb": first,
        "first_crowd_mb": _difference(first, baseline),
        "rss_after_each_round_mb": [r["rss_mb"] for r in rows[1:]],
        "rss_max_mb": rounded(max(p[1] for p in points) if points else None, 1),
        "refused": [r["refused"] for r in rows[1:]],
    })  # fmt: skip
    await ctx.results.add_series("rounds RSS (MB)", points)
    measured = rows[1:]
    # The first crowd sets the allocator's level (freed memory the heap keeps for reuse);
    # what must not happen is growth from round to round: each round returns to within
    # the allowance of the round before and of the first round's level.
    targets = [
        at_most("rounds", f"round {r['round']}: server RSS after it vs after round 1",
                r["rss_vs_first_mb"], allowance_mb, " MB")
        for r in measured[1:]
    ]  # fmt: skip
    targets += [
        at_most("rounds", f"round {r['round']}: server RSS after it vs after the round before",
                r["rss_vs_previous_mb"], allowance_mb, " MB")
        for r in measured[1:]
    ]  # fmt: skip
    targets += [
        holds("rounds", "every round: the server reports 0 connections after its viewers left",
              all(r["no_connections_after_s"] is not None for r in measured),
              "0 within 20 s", f"after {[r['no_connections_after_s'] for r in measured]} s"),
        holds("rounds", "every round: every viewer connected and was evicted",
              all(r["connected"] == r["evicted"] == viewers for r in measured),
              f"{viewers} connected and {viewers} evicted per round",
              f"connected {[r['connected'] for r in measured]}, "
              f"evicted {[r['evicted'] for r in measured]}"),
    ]  # fmt: skip
    await ctx.results.add_targets(*targets)
