"""The ``record`` scenario: what recording one device costs, and that its viewers do not pay.

The simulated device is watched by N lean JPEG-binary viewers through the real
server twice, for the same measured window: once without a recording and once
while it is recorded (``POST …/recording/start`` before, ``…/stop`` after, the
MP4 downloaded and opened with PyAV). Each run gives the viewers' frames per
viewer per second and their p99 capture-to-receipt latency, and the server's
CPU seconds. The recorder's CPU per second of video is the server's extra CPU
during the recorded run over the MP4's length: it includes the device's H.264
encoder, which a recording starts when no H.264 viewer already runs it (muxing
itself copies packets). The targets are the issue's: frame share and p99 within
5% of the run without recording.
"""

from __future__ import annotations

import io
from typing import Any

import av
import trio

from . import _http
from ._h264 import wire_run
from ._load import Context
from ._targets import at_most, holds

FPS = 30

RECORD_COLUMNS = (
    ("run", "run", "{}"),
    ("viewers", "viewers", "{}"),
    ("fps_per_viewer", "fps / viewer", "{:.2f}"),
    ("p99_latency_ms", "p99 latency ms", "{:.1f}"),
    ("server_cpu_s", "server CPU s", "{:.2f}"),
    ("video_s", "video s", "{:.2f}"),
    ("video_frames", "video frames", "{}"),
    ("mp4_kb", "MP4 kB", "{:.0f}"),
    ("recorder_cpu_per_video_s", "recorder CPU s / video s", "{:.3f}"),
    ("errors", "errors", "{}"),
)


def probe_mp4(data: bytes) -> tuple[int, float]:
    """(frames decoded, duration in seconds) of a downloaded recording."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        frames = sum(1 for _ in container.decode(video=0))
    return frames, duration


async def record(ctx: Context, *, viewers: int, duration: float) -> None:
    settings = {"fps": FPS, "max_connections_per_minute": 1_000_000,
                "max_connections_per_session": 100_000, "max_connections": 100_000}  # fmt: skip
    rows: list[dict[str, Any]] = []
    async with ctx.server("record", settings) as server:
        recording = f"{server.base_url}/api/sessions/{server.sessions[0]}/recording"
        with ctx.reporter.task(f"record: {viewers} viewers, no recording"):
            plain = await wire_run(server, viewers, "jpeg", duration)
        rows.append({"run": "without recording", **plain})
        await trio.sleep(1.0)
        with ctx.reporter.task(f"record: {viewers} viewers while recording"):
            started = await _http.request("POST", f"{recording}/start")
            if started.status != 200:
                raise _http.HttpError(f"recording/start: HTTP {started.status}: {started.body!r}")
            recorded = await wire_run(server, viewers, "jpeg", duration)
            stopped = await _http.request("POST", f"{recording}/stop", limit=30.0)
            if stopped.status != 200:
                raise _http.HttpError(f"recording/stop: HTTP {stopped.status}: {stopped.body!r}")
        frames, video_s = await trio.to_thread.run_sync(probe_mp4, stopped.body)
        extra_cpu = None
        if recorded["server_cpu_s"] is not None and plain["server_cpu_s"] is not None:
            extra_cpu = recorded["server_cpu_s"] - plain["server_cpu_s"]
        rows.append({
            "run": "while recording",
            **recorded,
            "video_s": video_s,
            "video_frames": frames,
            "mp4_kb": len(stopped.body) / 1000,
            # The recorded run's measured window is `duration`; the video spans the whole run.
            "recorder_cpu_per_video_s": extra_cpu / duration if extra_cpu is not None else None,
        })  # fmt: skip
    await ctx.results.add_table("record", "record: viewers with and without a recording",
                                RECORD_COLUMNS, rows)  # fmt: skip
    await ctx.results.add_targets(*record_targets(rows[0], rows[1]))


def record_targets(plain: dict[str, Any], recorded: dict[str, Any]) -> list:
    """Recording costs the viewers nothing: frame share and p99 within 5% of the plain run."""
    targets = []
    share = None
    if plain["fps_per_viewer"]:
        share = recorded["fps_per_viewer"] / plain["fps_per_viewer"]
    ok = None if share is None else share >= 0.95
    shown = "n/a" if share is None else f"{share:.3f} of the plain run"
    targets.append(holds("record", "frames per viewer while recording", ok, ">= 0.95", shown))
    ratio = None
    if plain["p99_latency_ms"] and recorded["p99_latency_ms"] is not None:
        ratio = recorded["p99_latency_ms"] / plain["p99_latency_ms"]
    targets.append(at_most("record", "p99 latency while recording vs without", ratio, 1.05,
                           digits=3))  # fmt: skip
    targets.append(holds("record", "the recording is a playable MP4", recorded["video_frames"] > 0,
                         "> 0 decoded frames", f"{recorded['video_frames']} frames"))  # fmt: skip
    return targets
