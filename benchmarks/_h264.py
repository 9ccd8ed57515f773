"""The ``h264`` scenario: the H.264 stream next to the JPEG one, in one run.

Four parts, each bounded in count and time:

* **codec**: the simulated device's two streams from the server side by side
  (bytes per second of each; PSNR of each decoded H.264 frame against the
  decoded JPEG of the same capture frame, the encoder's own input), and a
  generated 1179x2556 UI-like clip (a list that sits, scrolls, sits; a blinking
  caret) through the server's two pipelines repeated with PyAV: bytes per
  second at the capture rate, PSNR (RGB) against the raw source, and CPU
  seconds per second of video (H.264: its JPEG decode included). The H.264
  path starts from the JPEG, as the server's does, so its PSNR includes the
  JPEG's loss; "PSNR vs its JPEG" is the H.264 step's own.
* **wire**: viewers of the simulated device through the real server, JPEG
  binary and H.264 side by side at each viewer count: bytes per viewer per
  second, frames received, p99 capture-to-receipt latency, server CPU per
  delivered frame (the encoder's share included).
* **join**: viewers joining one every 0.25 s while one keeps the stream
  running, for each ``h264_join`` policy and for JPEG: join to first decoded
  frame, join to the first frame captured after the join (live), and the bytes
  received until then.

The viewers are lean raw-socket clients in this process (benchmarks/_lean.py), so
the server shares the machine's cores with them: at 1,000 viewers the figures are
the clients' limit as much as the server's.
"""

from __future__ import annotations

import statistics
import time
from fractions import Fraction
from typing import Any

import av
import av.video.frame
import numpy as np
import trio

from bridge_actors.wire import CODEC_H264, CODEC_JPEG, FLAG_KEYFRAME

from ._lean import _OP_BINARY, _OP_CLOSE, _OP_TEXT, _Reader
from ._load import Context
from ._server import ProcessMeter, ServerUnderTest
from ._stats import quantile
from ._targets import at_most, holds
from ._wire import BINARY_HEADER, BINARY_HEADER_SIZE, raw_connect, split_ws_url

FPS = 30
KEYFRAME_INTERVAL = 2.0


# --- codec: the UI clip through both encoders ----------------------------------------------

# What the server does to every frame, repeated with PyAV here (the benchmarks use only public
# names): JPEG at quality 80 (libjpeg's scaling of its base table gives mjpeg qscale 3), then for
# H.264 that JPEG decoded, converted to limited range and encoded by libx264 as the server sets it.
JPEG_QSCALE = 3


def x264_options(preset: str, crf: int) -> dict[str, str]:
    return {
        "profile": "baseline",
        "preset": preset,
        "tune": "zerolatency",
        "crf": str(crf),
        "forced-idr": "1",
        "x264-params": "repeat-headers=1:scenecut=0:bframes=0:annexb=1",
    }


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


def _jpeg_context(width: int, height: int) -> av.VideoCodecContext:
    context = av.CodecContext.create("mjpeg", "w")
    context.width, context.height = width, height
    context.pix_fmt = "yuvj420p"
    context.time_base = Fraction(1, 1000)
    context.thread_count = 1
    context.qscale = True
    context.global_quality = context.qmin = context.qmax = JPEG_QSCALE
    context.open()
    return context


def _x264_context(width: int, height: int, preset: str, crf: int) -> av.VideoCodecContext:
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 90000)
    context.framerate = Fraction(FPS, 1)
    context.max_b_frames = 0
    context.thread_count = 1
    context.gop_size = 100_000
    context.options = x264_options(preset, crf)
    context.open()
    return context


def measure_codecs(name: str, clip: list[np.ndarray], preset: str, crf: int) -> list[dict]:
    """Bytes/s, PSNR and encoder CPU per second of video of JPEG and H.264 for one clip."""
    height, width = clip[0].shape[:2]
    even_w, even_h = width - width % 2, height - height % 2
    seconds_of_video = len(clip) / FPS
    mjpeg, jpeg_decoder = _jpeg_context(width, height), av.CodecContext.create("mjpeg", "r")
    x264, h264_decoder = (
        _x264_context(even_w, even_h, preset, crf),
        av.CodecContext.create("h264", "r"),
    )
    jpeg_sizes, jpeg_psnr, jpeg_cpu = [], [], 0.0
    h264_sizes, h264_psnr, vs_input, h264_cpu = [], [], [], 0.0
    for i, source in enumerate(clip):
        started = time.thread_time()
        rgb = av.VideoFrame.from_ndarray(source, format="rgb24")
        yuvj = rgb.reformat(format="yuvj420p", dst_color_range="JPEG")
        yuvj.pts = i
        jpeg = b"".join(bytes(p) for p in mjpeg.encode(yuvj))
        jpeg_cpu += time.thread_time() - started
        jpeg_sizes.append(len(jpeg))
        [picture] = jpeg_decoder.decode(av.Packet(jpeg))
        seen = picture.to_ndarray(format="rgb24")
        jpeg_psnr.append(psnr(seen, source))

        started = time.thread_time()  # what the server's encoder does with that JPEG
        [picture] = jpeg_decoder.decode(av.Packet(jpeg))
        if (width, height) == (even_w, even_h):
            yuv = picture.reformat(format="yuv420p", src_color_range="JPEG",
                                   dst_color_range="MPEG")  # fmt: skip
        else:
            cropped = picture.to_ndarray(format="rgb24")[:even_h, :even_w]
            yuv = av.VideoFrame.from_ndarray(cropped, format="rgb24").reformat(
                format="yuv420p", dst_color_range="MPEG"
            )
        yuv.pts = i * 3000
        yuv.pict_type = (
            av.video.frame.PictureType.I
            if i % int(FPS * KEYFRAME_INTERVAL) == 0
            else av.video.frame.PictureType.NONE
        )
        packets = [bytes(p) for p in x264.encode(yuv)]
        h264_cpu += time.thread_time() - started
        for data in packets:
            h264_sizes.append(len(data))
            for decoded in h264_decoder.decode(av.Packet(data)):
                out = decoded.to_ndarray(format="rgb24")
                h264_psnr.append(psnr(out, source))
                vs_input.append(psnr(out, seen))
    common = {"clip": name, "size": f"{width}x{height}", "frames": len(clip)}
    jpeg_rate = sum(jpeg_sizes) / seconds_of_video
    h264_rate = sum(h264_sizes) / seconds_of_video
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


async def _collect(url: str, into: list[bytes], seconds: float) -> None:
    sock = await raw_connect(split_ws_url(url))
    try:
        reader = _Reader(sock.sock, bytes(sock.buffer))
        with trio.move_on_after(seconds):
            while True:
                first, start, end, _ = await reader.next_frame()
                if first & 0x0F == _OP_BINARY:
                    into.append(bytes(reader.buf[start:end]))
                elif first & 0x0F == _OP_CLOSE:
                    return
    finally:
        sock.close()


async def server_streams_quality(server: ServerUnderTest, seconds: float) -> list[dict]:
    """The simulated device's two streams from the server, side by side for ``seconds``:
    bytes per second of each, and the PSNR of each decoded H.264 frame against the decoded
    JPEG of the same capture frame (the encoder's own input)."""
    base = f"{server.ws_base}/ws/{server.sessions[0]}/video?format=binary"
    jpegs: list[bytes] = []
    h264s: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, base, jpegs, seconds)
        nursery.start_soon(_collect, base + "&codec=h264", h264s, seconds)

    def compare() -> list[float]:
        by_seq = {}
        for message in jpegs:
            fields = BINARY_HEADER.unpack(message[:BINARY_HEADER_SIZE])
            assert fields[8] == CODEC_JPEG
            by_seq[fields[1]] = message[BINARY_HEADER_SIZE:]
        decoder = av.CodecContext.create("h264", "r")
        jpeg_decoder = av.CodecContext.create("mjpeg", "r")
        values = []
        for message in h264s:
            fields = BINARY_HEADER.unpack(message[:BINARY_HEADER_SIZE])
            for picture in decoder.decode(av.Packet(message[BINARY_HEADER_SIZE:])):
                jpeg = by_seq.get(fields[1])
                if jpeg is not None:
                    [reference] = jpeg_decoder.decode(av.Packet(jpeg))
                    values.append(
                        psnr(
                            picture.to_ndarray(format="rgb24"), reference.to_ndarray(format="rgb24")
                        )
                    )
        return values

    values = await trio.to_thread.run_sync(compare)
    jpeg_rate = sum(len(m) for m in jpegs) / seconds
    h264_rate = sum(len(m) for m in h264s) / seconds
    common = {"clip": "simulated device, from the server", "size": "390x844",
              "frames": len(jpegs)}  # fmt: skip
    return [
        {**common, "codec": "JPEG q80", "kb_per_s": jpeg_rate / 1000, "ratio": 1.0},
        {**common, "codec": "H.264 (server)", "kb_per_s": h264_rate / 1000,
         "ratio": h264_rate / jpeg_rate if jpeg_rate else None,
         "psnr_vs_input_db": _mean(values), "frames": len(h264s)},
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
                    pictures = av.CodecContext.create("mjpeg", "r").decode(av.Packet(payload))
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
    with ctx.reporter.task("h264: the UI clip through both encoders"):
        clip = await trio.to_thread.run_sync(ui_clip, clip_frames)
        codec_rows += await trio.to_thread.run_sync(measure_codecs, "UI clip", clip, preset, crf)
        del clip

    settings = {"fps": FPS, "max_connections_per_minute": 1_000_000,
                "max_connections_per_session": 100_000, "max_connections": 100_000,
                "h264_preset": preset, "h264_crf": crf}  # fmt: skip
    wire_rows = []
    async with ctx.server("h264-wire", settings) as server:
        with ctx.reporter.task("h264: the simulated device's two streams side by side"):
            codec_rows[:0] = await server_streams_quality(server, min(duration, 5.0))
        await ctx.results.add_table("h264", "h264: codecs on the same frames", CODEC_COLUMNS,
                                    codec_rows)  # fmt: skip
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
    await ctx.results.add_targets(*h264_targets(codec_rows, wire_rows, join_rows))


def h264_targets(codec_rows: list[dict], wire_rows: list[dict], join_rows: list[dict]) -> list:
    """The issue's numbers: H.264 at most 1/8 of JPEG's bytes at the same fps, joins within
    300 ms p99, and the server's CPU per delivered H.264 frame not growing with viewers."""
    targets = [
        at_most("h264", f"{row['clip']}: H.264 bytes vs JPEG", row["ratio"], 1 / 8, digits=3)
        for row in codec_rows
        if row["codec"].startswith("H.264")
    ]
    h264_rows = sorted((r for r in wire_rows if r["codec"] == "H.264"), key=lambda r: r["viewers"])
    for row in h264_rows:
        count = row["viewers"]
        jpeg = next(r for r in wire_rows if r["viewers"] == count and r["codec"] != "H.264")
        ratio = None
        if jpeg["kb_per_viewer_s"]:
            ratio = row["kb_per_viewer_s"] / jpeg["kb_per_viewer_s"]
        name = f"{count} viewers: bytes per viewer vs JPEG"
        targets.append(at_most("h264", name, ratio, 1 / 8, digits=3))
    per_frame = [r["server_cpu_ms_per_frame"] for r in h264_rows]
    if len(per_frame) >= 2 and None not in per_frame:
        shown = " -> ".join(f"{v:.3f} ms" for v in per_frame)
        name = "server CPU per delivered H.264 frame does not grow with viewers"
        ok = per_frame[-1] <= per_frame[0] * 1.1
        targets.append(holds("h264", name, ok, "last <= first x 1.1", shown))
    chosen = next((r for r in join_rows if r["policy"] == "idr_or_gop"), None)
    if chosen is not None:
        name = "join to first decoded frame p99 (idr_or_gop)"
        targets.append(at_most("h264", name, chosen["first_p99_ms"], 300, " ms", digits=0))
    return targets
