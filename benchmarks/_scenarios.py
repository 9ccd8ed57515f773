"""The scenarios of viewers watching: fanout, the ceiling, control, soak, viewer memory.

Each puts its load on a server and judges its targets; the scenarios of connections under
stress (churn, flood, stalled viewers) are in ``_stress``.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from ._harness import (
    HealthSampler,
    MeterSampler,
    Worker,
    connection_balance,
    server_stats,
)
from ._load import Context, LoadOutcome, viewer_load
from ._server import ProcessMeter, ServerUnderTest
from ._stats import quantile, slope_per_minute
from ._targets import at_least, at_most, holds

MANY = 1_000_000  # "no limit" for the per-minute rate limit of scenarios that are not about it
MB = 1_000_000


def viewer_urls(
    server: ServerUnderTest, count: int, fmt: str, *, devices: int = 1, fps: float | None = None
) -> list[tuple[str, int]]:
    binary, h264 = fmt == "binary", fmt == "h264"
    return [
        (
            server.video_url(server.sessions[i % devices], binary=binary, fps=fps, h264=h264),
            i % devices,
        )
        for i in range(count)
    ]


def limits_for(viewers: int) -> dict[str, int]:
    """Server limits that let ``viewers`` of one session in at once and never get in their way."""
    return {
        "max_connections_per_session": viewers + 50,
        "max_connections_per_minute": MANY,
        "max_connections": max(2000, viewers + 100),
    }


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


async def wait_balanced(
    server: ServerUnderTest, expected_open: int, limit: float
) -> dict[str, Any] | None:
    """Poll /stats until the counters balance (disconnects are counted as sockets finish)."""
    balance = None
    with trio.move_on_after(limit):
        while True:
            balance = connection_balance(await server_stats(server.base_url))
            if balance and balance["difference"] == expected_open == balance["open_connections"]:
                return balance
            await trio.sleep(0.25)
    return balance


# --- fanout and the ceiling ----------------------------------------------------------------


async def ceiling_load(
    ctx: Context, ceiling: ServerUnderTest, n: int, fmt: str, duration: float, client: str
) -> LoadOutcome:
    """``n`` viewers of the minimal broadcaster: what this machine can move at all."""
    return await viewer_load(
        ctx,
        ceiling,
        scenario="ceiling",
        run=f"ceiling-{n}-{fmt}",
        urls=viewer_urls(ceiling, n, fmt),
        fmt=fmt,
        duration=duration,
        client=client,
        params={"viewers": n},
        health=False,
    )


async def fanout(
    ctx: Context,
    *,
    counts: list[int],
    formats: list[tuple[str, list[int]]] | None = None,
    fmt: str = "json",
    duration: float = 10.0,
    devices: int = 1,
    client: str = "lean",
    with_ceiling: bool = True,
) -> None:
    """N viewers on one device (or spread over ``devices``), each N against the ceiling too."""
    plan = formats or [(fmt, counts)]
    settings = limits_for(max(n for _, ns in plan for n in ns))
    async with AsyncExitStack() as stack:
        ceiling = await stack.enter_async_context(ctx.ceiling()) if with_ceiling else None
        server = await stack.enter_async_context(ctx.server("fanout", settings, devices))
        for fmt_, ns in plan:
            for n in ns:
                reference = None
                if ceiling is not None and fmt_ != "h264":  # the ceiling sends JPEG only
                    reference = await ceiling_load(ctx, ceiling, n, fmt_, duration, client)
                run = f"fanout-{n}-{fmt_}" + (f"-{devices}dev" if devices > 1 else "")
                outcome = await viewer_load(
                    ctx,
                    server,
                    scenario="fanout",
                    run=run,
                    urls=viewer_urls(server, n, fmt_, devices=devices),
                    fmt=fmt_,
                    duration=duration,
                    client=client,
                    params={"viewers": n, "devices": devices},
                    record=False,
                )
                if reference is not None:
                    outcome.aggregate["ceiling_delivered_fps"] = reference.aggregate[
                        "delivered_fps"
                    ]
                    outcome.aggregate["ceiling_ratio"] = rounded(
                        outcome.aggregate["delivered_fps"] / reference.aggregate["delivered_fps"]
                        if reference.aggregate["delivered_fps"]
                        else None,
                        3,
                    )
                await ctx.results.add_load(
                    "fanout",
                    run,
                    {"format": fmt_, "client": client, "viewers": n, "devices": devices},
                    outcome.rows,
                    outcome.aggregate,
                    outcome.latency,
                )
                if n == max(ns):
                    await _fanout_targets(ctx, n, fmt_, outcome)


async def _fanout_targets(ctx: Context, n: int, fmt: str, outcome: LoadOutcome) -> None:
    a = outcome.aggregate
    name = f"{n} viewers, {fmt}"
    every = a["fraction_min"] if a["streaming_viewers"] == n else 0.0
    share = at_least(
        "fanout",
        f"{name}: every viewer's share of source frames",
        None if every is None else every * 100,
        95,
        "%",
    )
    # The share is of what the capture produced, which can itself fall behind its 30 fps.
    share = dataclasses.replace(
        share, measured=f"{share.measured} (of {a['source_fps']} fps produced)"
    )
    targets = [
        share,
        at_most("fanout", f"{name}: latency p99", a["latency_p99_ms"], 100, " ms"),
        at_most("fanout", f"{name}: /health p99 during the load", a["health_p99_ms"], 50, " ms"),
    ]  # fmt: skip
    ratio = a.get("ceiling_ratio")
    need = 60 if fmt == "json" else 75
    targets.append(
        at_least("fanout", f"{name}: delivered frames/s vs the ceiling",
                 None if ratio is None else ratio * 100, need, "%", 0)
    )  # fmt: skip
    await ctx.results.add_targets(*targets)


HELD_SHARE = 0.95
HELD_P99_MS = 100.0
DEFAULT_FPS = 30  # the server's capture rate unless its settings say otherwise


def holds_the_stream(aggregate: dict[str, Any], viewers: int, fps: float = DEFAULT_FPS) -> bool:
    """Every one of ``viewers`` streamed and got >= 95% of the device's frames (so the
    capture itself kept >= 95% of its rate, and each viewer >= 95% of what it made),
    with p99 latency <= 100 ms."""
    every = aggregate["fraction_min"] if aggregate["streaming_viewers"] == viewers else None
    p99, made = aggregate["latency_p99_ms"], aggregate["source_fps"]
    return (
        every is not None
        and made is not None
        and every * min(1.0, made / fps) >= HELD_SHARE
        and p99 is not None
        and p99 <= HELD_P99_MS
    )


async def capacity(
    ctx: Context,
    *,
    counts: list[int],
    formats: list[str],
    duration: float = 10.0,
    client: str = "lean",
) -> None:
    """The largest viewer count of one device that holds the stream, for each format.

    Counts are tried in ascending order against one server, each format in turn
    (so the formats share the machine's state); a format stops at its first count
    that does not hold: a larger one would only take longer to fail."""
    counts = sorted(counts)
    settings = limits_for(counts[-1])
    largest: dict[str, int | None] = {}
    tried: dict[str, list[dict[str, Any]]] = {}
    async with ctx.server("capacity", settings) as server:
        fps = float(server.settings.get("fps", DEFAULT_FPS))
        for fmt in formats:
            largest[fmt] = None
            tried[fmt] = []
            for n in counts:
                run = f"capacity-{n}-{fmt}"
                outcome = await viewer_load(
                    ctx, server, scenario="capacity", run=run, urls=viewer_urls(server, n, fmt),
                    fmt=fmt, duration=duration, client=client, params={"viewers": n},
                )  # fmt: skip
                a = outcome.aggregate
                held = holds_the_stream(a, n, fps)
                tried[fmt].append({
                    "viewers": n, "held": held, "fraction_min": a["fraction_min"],
                    "latency_p99_ms": a["latency_p99_ms"], "server_cpu_util": a["server_cpu_util"],
                    "streaming_viewers": a["streaming_viewers"], "source_fps": a["source_fps"],
                })  # fmt: skip
                if not held:
                    break
                largest[fmt] = n
    await ctx.results.add_figures(
        "capacity", "capacity",
        {"largest_holding": largest, "tried": tried, "share": HELD_SHARE, "p99_ms": HELD_P99_MS},
    )  # fmt: skip
    # The target is the H.264 stream's; the other formats' counts stand beside it for comparison.
    if "h264" in largest:
        await ctx.results.add_targets(
            at_least("capacity", "h264: largest viewer count holding >= 95% at p99 <= 100 ms",
                     largest["h264"] or 0, 1000, " viewers", 0)
        )  # fmt: skip


async def ceiling_only(
    ctx: Context, *, counts: list[int], fmt: str, duration: float, client: str
) -> None:
    """The minimal broadcaster alone: what this machine can move with these clients."""
    async with ctx.ceiling() as ceiling:
        for n in counts:
            await ceiling_load(ctx, ceiling, n, fmt, duration, client)


# --- control --------------------------------------------------------------------------------


async def control(
    ctx: Context, *, taps: int = 60, interval: float = 0.15, fmt: str = "json", fps: int = 30
) -> None:
    """Taps on the control socket: tap sent → first frame whose input_seq covers it."""
    async with ctx.server("control", {"fps": fps}) as server, trio.open_nursery() as nursery:
        session = server.sessions[0]
        job = {
            "mode": "control",
            "format": fmt,
            "video_url": server.video_url(session, binary=fmt == "binary"),
            "control_url": server.control_url(session),
            "taps": taps,
            "interval": interval,
        }
        with ctx.reporter.task("control taps", total=taps):
            worker = await ctx.worker(nursery, "control", job)
            result = await worker.wait_for("result", 60 + taps * (interval + 1))
        nursery.cancel_scope.cancel()
    frame_ms = [t["frame_ms"] for t in result["taps"] if t.get("frame_ms") is not None]
    ack_ms = [t["acked_ms"] for t in result["taps"]]
    frame_interval = 1000 / fps
    figures = {
        "taps": taps,
        "acked": len(result["taps"]),
        "covered_by_a_frame": len(frame_ms),
        "tap_to_frame_p50_ms": rounded(quantile(frame_ms, 0.5)),
        "tap_to_frame_p95_ms": rounded(quantile(frame_ms, 0.95)),
        "tap_to_frame_max_ms": rounded(max(frame_ms) if frame_ms else None),
        "tap_to_ack_p50_ms": rounded(quantile(ack_ms, 0.5)),
        "tap_to_ack_p95_ms": rounded(quantile(ack_ms, 0.95)),
        "frame_interval_ms": rounded(frame_interval),
        "frames_received": result["frames"],
        "problems": result["problems"],
    }
    await ctx.results.add_figures("control", "control", figures)
    await ctx.results.add_targets(
        at_most("control", "tap-to-frame p50", figures["tap_to_frame_p50_ms"],
                2 * frame_interval, " ms"),
    )  # fmt: skip


# --- soak -----------------------------------------------------------------------------------


async def soak(
    ctx: Context,
    *,
    minutes: float = 2.0,
    population: int = 20,
    lifetime: tuple[float, float] = (2.0, 10.0),
    fmt: str = "json",
    client: str = "lean",
) -> None:
    """Viewers joining and leaving for ``minutes``; the server's RSS over time."""
    settings = {
        "max_connections_per_session": population + 50,
        "max_connections_per_minute": MANY,
    }
    seconds = minutes * 60
    async with ctx.server("soak", settings) as server, trio.open_nursery() as nursery:
        meter = MeterSampler(ProcessMeter(server.pid), interval=1.0)
        sampler = HealthSampler(f"{server.base_url}/health", interval=0.5)
        nursery.start_soon(meter.run)
        nursery.start_soon(sampler.run)
        job = {"mode": "soak", "url": server.video_url(server.sessions[0], binary=fmt == "binary"),
               "duration": seconds, "population": population, "lifetime": list(lifetime),
               "format": fmt, "client": client}  # fmt: skip
        origin = time.time()
        with ctx.reporter.task(f"soak {minutes:g} min", total=round(seconds)) as bar:
            worker: Worker = await ctx.worker(
                nursery, "soak", job,
                on_progress=lambda w: bar.update(
                    completed=round(time.time() - origin),
                    info=f"{w.progress.get('sessions', 0)} viewer sessions",
                ),
            )  # fmt: skip
            result = await worker.wait_for("result", seconds + 60)
        balance = await wait_balanced(server, 0, 10)
        nursery.cancel_scope.cancel()
    points = [(t - origin, rss / MB) for t, _, rss in meter.samples if rss is not None]
    half = [p for p in points if p[0] >= seconds / 2]
    figures = {
        "minutes": minutes,
        "population": population,
        "viewer_sessions": result["tally"].get("sessions", 0),
        "frames": result["tally"].get("frames", 0),
        "tally": result["tally"],
        "latency_p50_ms": result["latency_ms"]["p50"],
        "latency_p99_ms": result["latency_ms"]["p99"],
        "health_p99_ms": rounded(quantile(sampler.latencies_ms, 0.99)),
        "rss_start_mb": rounded(points[0][1] if points else None),
        "rss_end_mb": rounded(points[-1][1] if points else None),
        "rss_max_mb": rounded(max(p[1] for p in points) if points else None),
        "rss_slope_second_half_mb_per_min": rounded(slope_per_minute(half), 3),
        "counters_after": balance,
    }
    await ctx.results.add_figures("soak", f"soak-{minutes:g}min", figures)
    await ctx.results.add_series("soak RSS (MB)", points)
    await ctx.results.add_targets(
        holds("soak", "counters balance once every viewer has left",
              bool(balance) and balance["difference"] == 0 == balance["open_connections"],
              "connections - disconnections == 0 open", f"{balance}"),
    )  # fmt: skip


# --- viewer memory --------------------------------------------------------------------------


async def memory(
    ctx: Context,
    *,
    viewers: int = 1000,
    fps: float = 1.0,
    duration: float = 5.0,
    fmt: str = "json",
    client: str = "lean",
) -> None:
    """Server RSS per connected viewer with ``viewers`` connected at ``?fps=``."""
    settings = {
        "max_connections_per_session": viewers + 50,
        "max_connections_per_minute": MANY,
        "max_connections": viewers + 100,
    }
    async with ctx.server("memory", settings) as server, trio.open_nursery() as nursery:
        # One viewer first, so the capture, its encoder and the first socket are in the baseline.
        anchor = await ctx.worker(
            nursery,
            "memory/anchor",
            {"mode": "viewers", "format": fmt, "client": client,
             "viewers": [{"url": server.video_url(server.sessions[0], binary=fmt == "binary",
                                                  fps=fps)}]},
        )  # fmt: skip
        await anchor.wait_for("ready", 60)
        await ctx.pause(2)
        load = await viewer_load(
            ctx, server, scenario="memory", run=f"memory-{viewers}-at-{fps:g}fps",
            urls=viewer_urls(server, viewers, fmt, fps=fps), fmt=fmt, duration=duration,
            client=client, params={"viewers": viewers, "viewer_fps": fps}, settle=3.0,
        )  # fmt: skip
        await anchor.finish()
        nursery.cancel_scope.cancel()
    a = load.aggregate
    await ctx.results.add_targets(
        at_most("memory", f"server RSS per viewer, {viewers} viewers at ?fps={fps:g}",
                a["rss_per_viewer_kb"], 64, " KB"),
        holds("memory", f"all {viewers} viewers connected and streaming",
              a["streaming_viewers"] == viewers, f"{viewers}",
              f"{a['streaming_viewers']} (refusals {a['refusals']}, errors {a['errors']})"),
    )  # fmt: skip
