"""The ``h264`` scenario: the H.264 stream next to the JPEG one, in one run.

Four parts, each bounded in count and time:

* **codec**: the same clips through both encoders, in this process. The
  simulated device's own test card (390x844) and a generated 1179x2556 UI-like
  clip (a list that sits, scrolls, sits; a blinking caret). Bytes per second at
  the capture rate, PSNR (RGB) of the decoded frames against the raw source, and
  the encoder's CPU seconds per second of video (H.264: JPEG decode included).
  The H.264 path starts from the JPEG, as the server's does, so its PSNR
  includes the JPEG's loss; "PSNR vs its JPEG" is the H.264 step's own.
* **wire**: viewers of the simulated device through the real server, JPEG
  binary and H.264 side by side at each viewer count: bytes per viewer per
  second, frames received, p99 capture-to-receipt latency, server CPU per
  delivered frame (the encoder's share included).
* **join**: viewers joining one every 0.25 s while one keeps the stream
  running, for each ``h264_join`` policy and for JPEG: join to first decoded
  frame, join to the first frame captured after the join (live), and the bytes
  received until then.

The viewers are lean raw-socket clients in this process (benchmarks/_lean.py).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import av
import numpy as np
import trio

from bridge_actors._backends.jpeg import JpegEncoder, decode_jpeg
from bridge_actors._backends.simulated import SimulatedDevice, _Painter
from bridge_actors._device import DeviceInfo
from bridge_actors._video.pyav_encoder import PyAVH264Encoder
from bridge_actors.wire import CODEC_H264, FLAG_KEYFRAME

from ._lean import _OP_BINARY, _OP_CLOSE, _OP_TEXT, _Reader
from ._load import Context
from ._server import ProcessMeter, ServerUnderTest
from ._stats import quantile
from ._wire import BINARY_HEADER, BINARY_HEADER_SIZE, raw_connect, split_ws_url

FPS = 30
KEYFRAME_INTERVAL = 2.0


# --- codec: clips through both encoders ----------------------------------------------------


def simulated_clip(frames: int) -> list[np.ndarray]:
    """The simulated device's test card, frame after frame at the capture rate."""
    info = DeviceInfo("bench", "iPhone 15", "iPhone 15 (simulated)", "18.0", 390, 844, 390, 844,
                      "simulated")  # fmt: skip
    device = SimulatedDevice(info)
    painter = _Painter(390, 844, info.name)
    start = 1_700_000_000.0
    return [painter.paint(device.scene(i / FPS, start + i / FPS)) for i in range(frames)]


def ui_clip(frames: int, width: int = 1179, height: int = 2556) -> list[np.ndarray]:
    """A phone UI: bars, a list of cells with text-like runs; it sits, scrolls 18 px a frame
    for the middle half, sits again; a caret blinks twice a second."""
    rng = np.random.default_rng(7)
    content_height = height * 3
    page = np.full((content_height, width, 3), 250, np.uint8)
    cell = 132
    for row, top in enumerate(range(0, content_height - cell, cell)):
        page[top + cell - 2 : top + cell, 48:] = 222  # separator
        page[top + 28 : top + 104, 48:124] = rng.integers(60, 220, 3)  # an icon
        x = 150
        for _ in range(rng.integers(3, 7)):  # "words" of the title
            w = int(rng.integers(40, 140))
            if x + w > width - 60:
                break
            page[top + 36 : top + 64, x : x + w] = 30
            x += w + 18
        w = int(rng.integers(200, 600))
        page[top + 78 : top + 96, 150 : 150 + w] = 140  # the subtitle
        if row % 4 == 0:
            page[top + 40 : top + 92, width - 160 : width - 60] = (0, 122, 255)  # a button
    out = []
    offset = 0
    for i in range(frames):
        if frames // 4 <= i < 3 * frames // 4:
            offset += 18
        frame = page[offset : offset + height].copy()
        frame[:140] = 245  # status and navigation bars stay put
        frame[40:90, 60:300] = 20
        frame[height - 200 :] = 248
        frame[height - 150 : height - 60, 80 : width - 80] = 235
        if (i // (FPS // 4)) % 2 == 0:
            frame[height - 140 : height - 70, 120:126] = (0, 122, 255)  # the caret
        out.append(frame)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    error = np.mean((a[:h, :w].astype(np.float32) - b[:h, :w].astype(np.float32)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def measure_codecs(name: str, clip: list[np.ndarray], preset: str, crf: int) -> list[dict]:
    """Bytes/s, PSNR and encoder CPU per second of video of JPEG and H.264 for one clip."""
    height, width = clip[0].shape[:2]
    seconds_of_video = len(clip) / FPS
    jpeg_encoder = JpegEncoder(width, height, 80)
    jpegs, jpeg_cpu = [], 0.0
    for frame in clip:
        started = time.thread_time()
        jpegs.append(jpeg_encoder.encode(frame))
        jpeg_cpu += time.thread_time() - started
    decoded_jpegs = [decode_jpeg(j) for j in jpegs]
    jpeg_psnr = [psnr(d, f) for d, f in zip(decoded_jpegs, clip, strict=True)]

    h264 = PyAVH264Encoder(width, height, fps=FPS, preset=preset, crf=crf)
    decoder = av.CodecContext.create("h264", "r")
    sizes, h264_psnr, h264_cpu, keyframes, vs_input = [], [], 0.0, 0, []
    for i, (jpeg, frame) in enumerate(zip(jpegs, clip, strict=True)):
        keyframe = i % int(FPS * KEYFRAME_INTERVAL) == 0
        started = time.thread_time()
        packets = h264.encode(jpeg, i * 3000, keyframe)
        h264_cpu += time.thread_time() - started
        for data, _pts in packets:
            sizes.append(len(data))
            keyframes += keyframe
            for picture in decoder.decode(av.Packet(data)):
                rgb = picture.to_ndarray(format="rgb24")
                h264_psnr.append(psnr(rgb, frame))
                vs_input.append(psnr(rgb, decoded_jpegs[i]))
    common = {"clip": name, "size": f"{width}x{height}", "frames": len(clip)}
    jpeg_rate = sum(map(len, jpegs)) / seconds_of_video
    h264_rate = sum(sizes) / seconds_of_video
    return [
        {**common, "codec": "JPEG q80", "kb_per_s": jpeg_rate / 1000, "psnr_db": _mean(jpeg_psnr),
         "min_psnr_db": min(jpeg_psnr), "cpu_per_video_s": jpeg_cpu / seconds_of_video,
         "ratio": 1.0, "psnr_vs_input_db": None},
        {**common, "codec": f"H.264 {preset} crf{crf}", "kb_per_s": h264_rate / 1000,
         "psnr_db": _mean(h264_psnr), "min_psnr_db": min(h264_psnr, default=None),
         "cpu_per_video_s": h264_cpu / seconds_of_video,
         "ratio": h264_rate / jpeg_rate if jpeg_rate else None,
         "psnr_vs_input_db": _mean(vs_input)},
    ]  # fmt: skip


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v != float("inf")]
    return statistics.fmean(finite) if finite else None


CODEC_COLUMNS = (
    ("clip", "clip", "{}"),
    ("size", "size", "{}"),
    ("codec", "codec", "{}"),
    ("kb_per_s", "kB/s @30fps", "{:.1f}"),
    ("ratio", "vs JPEG", "{:.3f}"),
    ("psnr_db", "PSNR dB", "{:.1f}"),
    ("min_psnr_db", "min PSNR", "{:.1f}"),
    ("psnr_vs_input_db", "PSNR vs its JPEG", "{:.1f}"),
    ("cpu_per_video_s", "CPU s / video s", "{:.3f}"),
)


# --- lean viewers ----------------------------------------------------------------------------


class Tally:
    """What one viewer received inside the measured window."""

    __slots__ = ("bytes", "connected_at", "error", "frames", "latencies")

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self.latencies: list[float] = []
        self.error: str | None = None
        self.connected_at: float | None = None


async def lean_viewer(url: str, tally: Tally, window: list[float], connected: trio.Event) -> None:
    try:
        sock = await raw_connect(split_ws_url(url))
    except (OSError, trio.TooSlowError) as exc:
        tally.error = f"connection failed: {exc}"
        connected.set()
        return
    tally.connected_at = time.time()
    connected.set()
    reader = _Reader(sock.sock, bytes(sock.buffer))
    try:
        while True:
            first, start, end, length = await reader.next_frame()
            opcode = first & 0x0F
            if opcode == _OP_CLOSE:
                tally.error = "closed by the server"
                return
            if opcode == _OP_TEXT:
                tally.error = bytes(reader.buf[start:end]).decode("utf-8", "replace")
                return
            if opcode != _OP_BINARY:
                continue
            now = time.time()
            if window[0] <= now <= window[1]:
                timestamp = BINARY_HEADER.unpack_from(reader.buf, start)[2]
                tally.frames += 1
                tally.bytes += length
                tally.latencies.append(now - timestamp)
    except Exception as exc:  # a socket error ends this viewer only; it is reported
        tally.error = repr(exc)
    finally:
        sock.close()


async def wire_run(
    server: ServerUnderTest, viewers: int, codec: str, seconds: float
) -> dict[str, Any]:
    query = "format=binary" + ("&codec=h264" if codec == "h264" else "")
    url = f"{server.ws_base}/ws/{server.sessions[0]}/video?{query}"
    tallies = [Tally() for _ in range(viewers)]
    window = [float("inf"), float("inf")]
    meter = ProcessMeter(server.pid)
    async with trio.open_nursery() as nursery:
        for tally in tallies:
            connected = trio.Event()
            nursery.start_soon(lean_viewer, url, tally, window, connected)
            await connected.wait()
        await trio.sleep(2.0)  # every viewer past its first keyframe, the encoder warm
        cpu_before = meter.cpu_seconds()
        window[0] = time.time()
        window[1] = window[0] + seconds
        await trio.sleep(seconds + 0.5)
        cpu_after = meter.cpu_seconds()
        nursery.cancel_scope.cancel()
    frames = sum(t.frames for t in tallies)
    latencies = sorted(x for t in tallies for x in t.latencies)
    cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
    return {
        "codec": "H.264" if codec == "h264" else "JPEG binary",
        "viewers": viewers,
        "kb_per_viewer_s": sum(t.bytes for t in tallies) / viewers / seconds / 1000,
        "fps_per_viewer": frames / viewers / seconds,
        "p99_latency_ms": quantile(latencies, 0.99) * 1000 if latencies else None,
        "server_cpu_s": cpu,
        "server_cpu_ms_per_frame": cpu / frames * 1000 if cpu is not None and frames else None,
        "errors": sum(1 for t in tallies if t.error),
    }


WIRE_COLUMNS = (
    ("codec", "stream", "{}"),
    ("viewers", "viewers", "{}"),
    ("kb_per_viewer_s", "kB / viewer / s", "{:.1f}"),
    ("fps_per_viewer", "fps / viewer", "{:.1f}"),
    ("p99_latency_ms", "p99 latency ms", "{:.1f}"),
    ("server_cpu_s", "server CPU s", "{:.2f}"),
    ("server_cpu_ms_per_frame", "server CPU ms / frame", "{:.3f}"),
    ("errors", "errors", "{}"),
)


# --- join ------------------------------------------------------------------------------------


async def join_once(server: ServerUnderTest, codec: str, limit: float = 5.0) -> dict[str, Any]:
    """Connect, read until a picture decodes and until one captured after the join does."""
    query = "format=binary" + ("&codec=h264" if codec == "h264" else "")
    url = f"{server.ws_base}/ws/{server.sessions[0]}/video?{query}"
    joined = time.time()
    result: dict[str, Any] = {"first_ms": None, "live_ms": None, "bytes_to_live": None}
    decoder = av.CodecContext.create("h264", "r") if codec == "h264" else None
    received = 0
    with trio.move_on_after(limit):
        sock = await raw_connect(split_ws_url(url))
        try:
            reader = _Reader(sock.sock, bytes(sock.buffer))
            while True:
                first, start, end, length = await reader.next_frame()
                if first & 0x0F != _OP_BINARY:
                    if first & 0x0F == _OP_CLOSE:
                        break
                    continue
                received += length
                message = bytes(reader.buf[start:end])
                fields = BINARY_HEADER.unpack(message[:BINARY_HEADER_SIZE])
                timestamp, codec_id, flags = fields[2], fields[8], fields[9]
                payload = message[BINARY_HEADER_SIZE:]
                if decoder is not None:
                    assert codec_id == CODEC_H264
                    if result["first_ms"] is None and not flags & FLAG_KEYFRAME:
                        continue
                    pictures = decoder.decode(av.Packet(payload))
                else:
                    pictures = [decode_jpeg(payload)]
                if not pictures:
                    continue
                now = time.time()
                if result["first_ms"] is None:
                    result["first_ms"] = (now - joined) * 1000
                if timestamp >= joined:
                    result["live_ms"] = (now - joined) * 1000
                    result["bytes_to_live"] = received
                    break
        finally:
            sock.close()
    return result


async def join_series(
    ctx: Context, name: str, settings: dict[str, Any], codec: str, joins: int
) -> dict[str, Any]:
    async with ctx.server(f"h264-join-{name}", settings) as server, trio.open_nursery() as nursery:
        # One steady viewer keeps the stream (and, for H.264, the encoder) running.
        steady = Tally()
        connected = trio.Event()
        query = "format=binary" + ("&codec=h264" if codec == "h264" else "")
        url = f"{server.ws_base}/ws/{server.sessions[0]}/video?{query}"
        nursery.start_soon(lean_viewer, url, steady, [0.0, 0.0], connected)
        await connected.wait()
        await trio.sleep(1.0)
        results = []
        for _ in range(joins):
            results.append(await join_once(server, codec))
            await trio.sleep(0.25)
        nursery.cancel_scope.cancel()
    first = sorted(r["first_ms"] for r in results if r["first_ms"] is not None)
    live = sorted(r["live_ms"] for r in results if r["live_ms"] is not None)
    to_live = [r["bytes_to_live"] for r in results if r["bytes_to_live"] is not None]
    return {
        "policy": name,
        "joins": joins,
        "first_p50_ms": quantile(first, 0.5) if first else None,
        "first_p99_ms": quantile(first, 0.99) if first else None,
        "live_p50_ms": quantile(live, 0.5) if live else None,
        "live_p99_ms": quantile(live, 0.99) if live else None,
        "kb_to_live": statistics.fmean(to_live) / 1000 if to_live else None,
        "failed": joins - len(live),
    }


JOIN_COLUMNS = (
    ("policy", "join", "{}"),
    ("joins", "joins", "{}"),
    ("first_p50_ms", "first frame p50 ms", "{:.0f}"),
    ("first_p99_ms", "first frame p99 ms", "{:.0f}"),
    ("live_p50_ms", "live frame p50 ms", "{:.0f}"),
    ("live_p99_ms", "live frame p99 ms", "{:.0f}"),
    ("kb_to_live", "kB until live", "{:.1f}"),
    ("failed", "failed", "{}"),
)


# --- the scenario ----------------------------------------------------------------------------


async def h264(
    ctx: Context,
    *,
    counts: list[int],
    duration: float,
    joins: int,
    clip_frames: int,
    preset: str = "veryfast",
    crf: int = 23,
) -> None:
    codec_rows: list[dict] = []
    with ctx.reporter.task("h264: the clips through both encoders"):
        for name, clip in (
            ("simulated device", await trio.to_thread.run_sync(simulated_clip, clip_frames)),
            ("UI clip", await trio.to_thread.run_sync(ui_clip, clip_frames)),
        ):
            codec_rows += await trio.to_thread.run_sync(measure_codecs, name, clip, preset, crf)
            del clip
    await ctx.results.add_table("h264", "h264: codecs on the same clips", CODEC_COLUMNS,
                                codec_rows)  # fmt: skip

    settings = {"fps": FPS, "max_connections_per_minute": 1_000_000,
                "max_connections_per_session": 100_000, "max_connections": 100_000,
                "h264_preset": preset, "h264_crf": crf}  # fmt: skip
    wire_rows = []
    async with ctx.server("h264-wire", settings) as server:
        for n in counts:
            for codec in ("jpeg", "h264"):
                with ctx.reporter.task(f"h264: {n} {codec} viewers"):
                    wire_rows.append(await wire_run(server, n, codec, duration))
                await trio.sleep(1.0)
    await ctx.results.add_table("h264", "h264: the simulated device through the server",
                                WIRE_COLUMNS, wire_rows)  # fmt: skip

    join_rows = []
    for name, codec, policy in (
        ("JPEG", "jpeg", "idr_or_gop"),
        ("idr", "h264", "idr"),
        ("gop", "h264", "gop"),
        ("idr_or_gop", "h264", "idr_or_gop"),
    ):
        with ctx.reporter.task(f"h264: {joins} joins, {name}"):
            join_rows.append(
                await join_series(ctx, name, {**settings, "h264_join": policy}, codec, joins)
            )
    await ctx.results.add_table("h264", "h264: join to first decoded frame", JOIN_COLUMNS,
                                join_rows)  # fmt: skip
