"""One load run: viewers connected from worker processes, one measured window, its figures.

The window is a capture-time interval [t0, t1] agreed with every worker in
advance; the harness samples ``/health``, ``/stats`` and the server's CPU and
RSS over the same interval, then waits a moment for frames captured before t1
to arrive, and collects the workers' results.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ._figures import summarize_viewers
from ._harness import (
    HealthSampler,
    MeterSampler,
    Worker,
    WorkerFailed,
    captures_by_device,
    server_stats,
)
from ._report import Reporter, Results
from ._server import (
    MachineCpu,
    ProcessMeter,
    ServerUnderTest,
    attach_server,
    start_ceiling,
    start_server,
)
from ._stats import Histogram

GRACE = 1.0  # seconds after t1 for frames captured before it to arrive
READY_TIMEOUT = 120.0


@dataclass
class Context:
    """What every scenario shares: the options, where output goes, how to show progress."""

    args: argparse.Namespace
    reporter: Reporter
    results: Results
    log_dir: Path

    @asynccontextmanager
    async def server(
        self, name: str, settings: dict[str, Any], devices: int = 1
    ) -> AsyncIterator[ServerUnderTest]:
        """The server under test: one we start with ``settings``, or the ``--url`` one."""
        if self.args.base_url:
            yield await attach_server(self.args.base_url, devices=devices)
            return
        merged = {**settings, **dict(self.args.server_setting or [])}
        with self.reporter.task(f"{name}: starting the server") as _:
            async with start_server(
                merged,
                log_path=self.log_dir / f"server-{name}.log",
                devices=devices,
                stop_grace=3.0 if self.args.quick else 10.0,
            ) as server:
                yield server
        # How the server took its SIGTERM is a figure too: a clean exit within the grace.
        await self.results.write({"kind": "server_stop", "scenario": name, **server.stopped})
        if server.stopped.get("killed") or server.stopped.get("exit_code"):
            self.reporter.note(
                f"[yellow]{name}: the server did not stop cleanly on SIGTERM: {server.stopped}[/]"
            )

    @asynccontextmanager
    async def ceiling(self) -> AsyncIterator[ServerUnderTest]:
        async with start_ceiling(log_path=self.log_dir / "ceiling.log") as ceiling:
            yield ceiling

    async def pause(self, seconds: float) -> None:
        """A settling pause (for memory to settle, late frames to arrive); short in --quick runs,
        which check that everything works rather than measure."""
        await trio.sleep(seconds / 5 if self.args.quick else seconds)

    def client_procs(self, viewers: int) -> int:
        if self.args.client_procs:
            return max(1, min(self.args.client_procs, viewers))
        return 1 if viewers < 100 else 2

    async def worker(self, nursery: trio.Nursery, name: str, job: dict[str, Any], **kw) -> Worker:
        return await Worker.start(nursery, name, job, log_path=self.log_dir / "clients.log", **kw)


@dataclass
class LoadOutcome:
    rows: list[dict[str, Any]]
    aggregate: dict[str, Any]
    latency: Histogram
    worker_results: list[dict[str, Any]]


def _median(values: list[int]) -> int | None:
    return int(statistics.median(values)) if values else None


async def sample_rss(meter: ProcessMeter, samples: int = 3, interval: float = 0.1) -> int | None:
    """The median of a few RSS readings (one reading can catch a transient buffer)."""
    values = []
    for i in range(samples):
        if i:
            await trio.sleep(interval)
        rss = meter.rss()
        if rss is not None:
            values.append(rss)
    return _median(values)


async def viewer_load(
    ctx: Context,
    server: ServerUnderTest,
    *,
    scenario: str,
    run: str,
    urls: list[tuple[str, int]],
    fmt: str,
    duration: float,
    client: str,
    params: dict[str, Any] | None = None,
    before_measure: Callable[[], Awaitable[None]] | None = None,
    during: Callable[[], Awaitable[None]] | None = None,
    settle: float = 1.0,
    record: bool = True,
    health: bool = True,
) -> LoadOutcome:
    """Connect ``urls`` (url, device index) as viewers, measure ``duration`` seconds, report.

    ``health`` off for a server without the HTTP routes (the ceiling). An H.264 run
    settles for at least a keyframe interval: a viewer that fell behind while the
    crowd connected resumes at a keyframe, and the window measures the steady
    stream, not that recovery (the skips are reported, before and within the window).
    """
    if fmt == "h264":
        interval = float(server.settings.get("h264_keyframe_interval", H264_KEYFRAME_INTERVAL))
        settle = max(settle, interval + 0.5)
    meter = ProcessMeter(server.pid)
    rss_before = await sample_rss(meter)
    procs = ctx.client_procs(len(urls))
    shares = [urls[i::procs] for i in range(procs)]
    workers: list[Worker] = []
    sampler = HealthSampler(f"{server.base_url}/health")
    meter_sampler = MeterSampler(meter)
    label = f"{run}"

    with ctx.reporter.task(f"{label}: connecting", total=len(urls)) as bar:

        def show_connecting(_: Worker | None = None) -> None:
            bar.update(
                completed=sum(w.progress.get("connected", 0) for w in workers),
                info=f"{sum(w.progress.get('closed', 0) for w in workers)} closed",
            )

        async with trio.open_nursery() as nursery:
            try:
                for i, share in enumerate(shares):
                    job = {
                        "mode": "viewers",
                        "format": fmt,
                        "client": client,
                        "viewers": [{"url": u, "device": d} for u, d in share],
                        "deadline": duration + READY_TIMEOUT + 60,
                    }
                    workers.append(
                        await ctx.worker(nursery, f"{run}/w{i}", job, on_progress=show_connecting)
                    )
                for w in workers:
                    await w.wait_for("ready", READY_TIMEOUT)
                show_connecting()
                if before_measure is not None:
                    await before_measure()
                await ctx.pause(settle)

                t0 = time.time() + 0.2
                t1 = t0 + duration
                for w in workers:
                    await w.send({"cmd": "measure", "t0": t0, "t1": t1})
                await trio.sleep_until(trio.current_time() + (t0 - time.time()))
                stats0 = await server_stats(server.base_url) if health else None
                cpu0 = meter.cpu_seconds()
                clients = [ProcessMeter(w.process.pid) for w in workers]
                machine0 = MachineCpu.sample()
                client_cpu0 = sum(c.cpu_seconds() or 0.0 for c in clients)
                async with trio.open_nursery() as window:
                    if health:
                        window.start_soon(sampler.run)
                    window.start_soon(meter_sampler.run)
                    if during is not None:
                        window.start_soon(during)
                    await _show_window(ctx.reporter, label, workers, t0, t1)
                    cpu1 = meter.cpu_seconds()
                    client_cpu1 = sum(c.cpu_seconds() or 0.0 for c in clients)
                    machine1 = MachineCpu.sample()
                    stats1 = await server_stats(server.base_url) if health else None
                    rss_after = _median(
                        [r for t, _, r in meter_sampler.samples if r is not None and t >= t0]
                    )
                    window.cancel_scope.cancel()
                await trio.sleep(max(0.0, t1 - time.time()))
                await ctx.pause(GRACE)
                results = [await w.finish() for w in workers]
            finally:
                for w in workers:
                    w.kill()
            nursery.cancel_scope.cancel()

    viewers = [v for result in results for v in result["viewers"]]
    frames_in = _frames_in_delta(stats0, stats1, server)
    rows, aggregate, latency = summarize_viewers(
        viewers,
        duration=duration,
        cpu_seconds=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        rss_before=rss_before,
        rss_after=rss_after,
        health_ms=sampler.latencies_ms,
        health_failures=sampler.failures,
        source_frames_stats=frames_in,
    )
    aggregate["client_procs"] = procs
    if fmt == "h264" and stats1 is not None:
        aggregate.update(_h264_during(stats0, stats1))
    client_cpu = client_cpu1 - client_cpu0
    aggregate["client_cpu_util"] = round(client_cpu / duration, 3)
    # What else ran on the machine meanwhile (another test suite, a build): figures taken
    # while it is high are not the server's alone.
    aggregate["other_cpu_util"] = machine0.others(
        machine1, duration, (cpu1 or 0.0) - (cpu0 or 0.0) + client_cpu
    )
    failures = [f for r in results for f in r.get("verify", {}).get("failures", [])]
    aggregate["verified_frames"] = sum(r.get("verify", {}).get("checked", 0) for r in results)
    aggregate["verify_failures"] = failures[:5]
    params = {"format": fmt, "client": client, **(params or {})}
    if record:
        await ctx.results.add_load(scenario, run, params, rows, aggregate, latency)
    return LoadOutcome(rows, aggregate, latency, results)


async def _show_window(
    reporter: Reporter, label: str, workers: list[Worker], t0: float, t1: float
) -> None:
    duration = t1 - t0
    with reporter.task(f"{label}: measuring", total=round(duration, 1)) as bar:
        while (now := time.time()) < t1:
            elapsed = max(0.0, now - t0)
            frames = sum(w.progress.get("window_frames", 0) for w in workers)
            rate = frames / elapsed if elapsed > 0.5 else 0.0
            bar.update(completed=round(min(elapsed, duration), 1), info=f"{rate:,.0f} frames/s")
            await trio.sleep(min(0.5, max(0.0, t1 - now)))


def _frames_in_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, server: ServerUnderTest
) -> dict[int, int] | None:
    start, end = captures_by_device(before), captures_by_device(after)
    deltas = {}
    for device, udid in enumerate(server.udids):
        if "frames_in" in end.get(udid, {}):
            deltas[device] = end[udid]["frames_in"] - start.get(udid, {}).get("frames_in", 0)
    return deltas or None


def _h264_during(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    """What the devices' H.264 encoders did in the window: keyframes made (and how many
    forced for joiners or requests), and feeds that fell behind and skipped to a keyframe;
    and the skips before it, while the viewers connected."""
    start = (before or {}).get("h264", {})
    end = (after or {}).get("h264", {})
    totals = {
        "skips_while_connecting": sum(
            feed["skips"] for encoder in start.values() for feed in encoder.get("per_feed", ())
        ),
        "keyframes": 0,
        "forced_keyframes": 0,
        "skips": 0,
        "viewers_skipping": 0,
    }
    for udid, encoder in end.items():
        earlier = start.get(udid, {})
        for name in ("keyframes", "forced_keyframes"):
            totals[name] += encoder.get(name, 0) - earlier.get(name, 0)
        skips_before = {feed["key"]: feed["skips"] for feed in earlier.get("per_feed", ())}
        for feed in encoder.get("per_feed", ()):
            skipped = feed["skips"] - skips_before.get(feed["key"], 0)
            totals["skips"] += skipped
            totals["viewers_skipping"] += skipped > 0
    return {f"h264_{name}": value for name, value in totals.items()}


H264_KEYFRAME_INTERVAL = 2.0  # the server's unless its settings say otherwise


def budget(*parts: float) -> float:
    """A hard time limit for a scenario: its planned seconds, doubled, plus a minute."""
    return 2 * math.fsum(parts) + 60


async def guard(seconds: float, what: str, fn: Callable[[], Awaitable[None]]) -> str | None:
    """Run ``fn`` under a hard deadline; returns a problem description instead of raising."""
    try:
        with trio.fail_after(seconds):
            await fn()
    except trio.TooSlowError:
        return f"{what} did not finish within its {seconds:.0f} s limit"
    except WorkerFailed as exc:
        return f"{what}: a client worker failed: {exc}"
    return None
