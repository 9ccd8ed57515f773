"""The media backend: any input FFmpeg can open, shown as a device.

A device is a named source: a video file (played in a loop), an ``rtsp://`` or
``http://`` stream, a V4L2 camera (``v4l2:/dev/video0``), an X11 screen
(``x11grab::0.0``), or anything else PyAV opens, with an optional FFmpeg input
format before the first colon. Configuration lists the names; they are the
device types, and the one "version" offered is ``"media"``.

A capture decodes in a worker thread, scales each frame to the device's size
and encodes it to JPEG once, for every viewer. Frames are shown at their own
timestamps, in real time and never faster; a file that ends starts again, a
source that fails raises out of ``capture`` so that the capture supervisor
restarts it. Media devices have no input: controls are accepted and ignored,
and there is no device log.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import av
import numpy as np
import trio
from av.video.reformatter import VideoReformatter

from .._checks import require_fps
from .._controls import ControlEvent
from .._device import Configurations, DeviceInfo, FrameSink, LogLine, Screenshot
from .._errors import BadInput, DeviceError, InvalidSettings
from .._settings import mask_password
from . import DEVICE_NAME_PREFIX
from .jpeg import JpegEncoder, qscale_for_quality
from .sourcestats import SourceMeter, SourceStatistics

log = logging.getLogger("bridge_actors.media")

BACKEND_NAME = "media"
MEDIA_VERSION = "media"  # the single ios_version media devices offer
MAX_SIZE = 8192
OPEN_TIMEOUT = 5.0  # seconds for a network source to answer; create_device must answer in 10
READ_TIMEOUT = 10.0  # seconds without data before a stream counts as failed

# Input formats that name a device or a generator rather than a file: accepted as a
# prefix even when this FFmpeg build lacks them, so the error can say so.
_DEVICE_FORMATS = frozenset(
    (
        "alsa",
        "android_camera",
        "avfoundation",
        "decklink",
        "dshow",
        "fbdev",
        "gdigrab",
        "kmsgrab",
        "lavfi",
        "pulse",
        "v4l2",
        "video4linux2",
        "vfwcap",
        "x11grab",
    )
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Offload = Callable[..., Awaitable[Any]]


# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaSource:
    """A configured source: what ``av.open`` gets (``target``, ``format``), and how to show it."""

    spec: str
    target: str
    format: str | None

    @property
    def display(self) -> str:
        """The spec with any password in a URL replaced by ``***``."""
        return mask_password(self.spec)


def parse_source(spec: str) -> MediaSource:
    """Split ``FORMAT:TARGET`` when FORMAT is an FFmpeg input format; URLs and paths stay whole.

    Raises ValueError naming what is wrong.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("the source must be a non-empty string")
    spec = spec.strip()
    if _URL.match(spec):
        return MediaSource(spec, spec, None)
    prefix, colon, target = spec.partition(":")
    if colon and len(prefix) > 1:
        available = prefix in av.formats_available
        if prefix in _DEVICE_FORMATS or available:
            if not available:
                raise ValueError(f"FFmpeg input format {prefix!r} is not available in this build")
            if not target:
                raise ValueError(f"nothing to open after the {prefix!r} format prefix")
            return MediaSource(spec, target, prefix)
    return MediaSource(spec, spec, None)


def output_size(
    source_width: int, source_height: int, width: int | None, height: int | None
) -> tuple[int, int]:
    """The device's pixel size: as configured, else the source's (keeping its aspect ratio)."""
    if width is not None and height is not None:
        return width, height
    if width is None and height is None:
        return source_width, source_height

    def even(value: float) -> int:
        return min(MAX_SIZE, max(2, round(value / 2) * 2))

    if width is not None:
        return width, even(source_height * width / source_width)
    assert height is not None
    return even(source_width * height / source_height), height


# --- pacing ----------------------------------------------------------------------------------


class FramePacer:
    """When to show each decoded frame: at its timestamp, in real time, never faster.

    The first frame anchors source time to trio time; each later frame is due
    at ``anchor + (pts - anchor_pts)``. Deadlines are absolute, so time spent
    decoding or encoding never adds up into drift. A discontinuity (a file
    looping, a timestamp jump) re-anchors just after the previous frame. A frame
    already more than ``max_lag`` late (nobody watched for a while, decoding
    fell behind) re-anchors at ``now`` rather than replaying the backlog at full
    speed. At most one frame is shown per ``1 / max_fps`` slot of trio time;
    the others are skipped (``schedule`` returns None).
    """

    __slots__ = (
        "_anchor_pts",
        "_anchor_time",
        "_interval",
        "_last_deadline",
        "_last_pts",
        "_last_slot",
        "max_fps",
        "max_gap",
        "max_lag",
        "skipped",
    )

    def __init__(
        self,
        *,
        max_fps: float,
        nominal_interval: float | None = None,
        max_lag: float = 1.0,
        max_gap: float = 5.0,
    ) -> None:
        if not max_fps > 0:
            raise ValueError(f"max_fps must be positive, not {max_fps!r}")
        self.max_fps = max_fps
        self.max_lag = max_lag
        self.max_gap = max_gap
        self._interval = nominal_interval if nominal_interval and nominal_interval > 0 else 0.0
        if not self._interval:
            self._interval = 1 / max_fps
        self._anchor_time: float | None = None
        self._anchor_pts = 0.0
        self._last_pts = 0.0
        self._last_deadline = 0.0
        self._last_slot: int | None = None
        self.skipped = 0

    def _anchor(self, pts: float, at: float) -> None:
        self._anchor_pts = pts
        self._anchor_time = at

    def schedule(self, pts: float | None, now: float) -> float | None:
        """The trio time at which to show the frame stamped ``pts`` seconds; None to skip it."""
        if self._anchor_time is None:
            pts = 0.0 if pts is None else pts
            self._anchor(pts, now)
        else:
            if pts is None:
                pts = self._last_pts + self._interval
            step = pts - self._last_pts
            if 0 < step <= self.max_gap:
                self._interval = step
            else:
                self._anchor(pts, max(now, self._last_deadline + self._interval))
        assert self._anchor_time is not None
        deadline = self._anchor_time + (pts - self._anchor_pts)
        if deadline < now - self.max_lag:
            self._anchor(pts, now)
            deadline = now
        self._last_pts = pts
        self._last_deadline = deadline
        slot = math.floor(deadline * self.max_fps + 1e-6)
        if self._last_slot is not None and slot <= self._last_slot:
            self.skipped += 1
            return None
        self._last_slot = slot
        return deadline


# --- the worker-thread side ------------------------------------------------------------------


class SourceFailed(Exception):
    """The source could not be opened or read; the message says why, without the source."""


class _Reader:
    """An open source plus the scaler and encoder of one capture.

    Used from one worker thread at a time; every method may block.
    """

    def __init__(
        self,
        source: MediaSource,
        *,
        open_timeout: float,
        read_timeout: float,
    ) -> None:
        try:
            self._container = av.open(
                source.target, format=source.format, timeout=(open_timeout, read_timeout)
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceFailed(_reason(exc)) from exc
        videos = self._container.streams.video
        if not videos:
            self._container.close()
            raise SourceFailed("it has no video stream")
        self._stream = videos[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.nominal_interval = 1 / float(rate) if rate else None
        self._frames = self._container.decode(self._stream)
        self._since_rewind = 0
        self._scaler = VideoReformatter()
        self._encoder: JpegEncoder | None = None

    def read(self) -> tuple[float | None, av.VideoFrame]:
        """The next frame and its time in seconds; at the end, rewind and go on."""
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                if self._since_rewind == 0:
                    raise SourceFailed("it has no more video frames") from None
                try:
                    self._container.seek(0)
                except (av.FFmpegError, OSError) as exc:
                    raise SourceFailed(f"it ended and cannot be rewound: {_reason(exc)}") from exc
                self._frames = self._container.decode(self._stream)
                self._since_rewind = 0
                continue
            except (av.FFmpegError, OSError) as exc:
                raise SourceFailed(_reason(exc)) from exc
            self._since_rewind += 1
            return frame.time, frame

    def pixels(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """``frame`` scaled to ``width`` x ``height``, as RGB."""
        rgb = self._scaler.reformat(frame, width=width, height=height, format="rgb24", threads=1)
        return rgb.to_ndarray()

    def encode(self, frame: av.VideoFrame, width: int, height: int, quality: int) -> bytes:
        pixels = self.pixels(frame, width, height)
        if self._encoder is None:
            self._encoder = JpegEncoder(width, height, quality)
        return self._encoder.encode(pixels)

    def close(self) -> None:
        self._container.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _probe(source: MediaSource, open_timeout: float, read_timeout: float) -> tuple[int, int]:
    """Open the source and decode one frame: its size, or SourceFailed."""
    reader = _Reader(source, open_timeout=open_timeout, read_timeout=read_timeout)
    try:
        _, frame = reader.read()
        return frame.width, frame.height
    finally:
        reader.close()


def _grab(
    source: MediaSource,
    open_timeout: float,
    read_timeout: float,
    width: int,
    height: int,
    quality: int,
) -> bytes:
    reader = _Reader(source, open_timeout=open_timeout, read_timeout=read_timeout)
    try:
        _, frame = reader.read()
        return reader.encode(frame, width, height, quality)
    finally:
        reader.close()


def _encode_once(pixels: np.ndarray, quality: int) -> bytes:
    height, width = pixels.shape[:2]
    return JpegEncoder(width, height, quality).encode(pixels)


# --- the backend -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaStatistics:
    sources: tuple[str, ...]
    devices: tuple[SourceStatistics, ...]
    frames_skipped: int  # decoded but not shown: over a capture's fps cap


class _Device:
    def __init__(self, info: DeviceInfo, source: MediaSource) -> None:
        self.info = info
        self.source = source
        self.meter = SourceMeter(info.udid, source.display)
        self.last_picture: bytes | np.ndarray | None = None  # as last published


def _check_size(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise InvalidSettings(
            f"media {name} must be an integer from 1 to {MAX_SIZE}, not {value!r}"
        )


class MediaBackend:
    """A ``DeviceBackend`` whose devices are FFmpeg inputs, configured by name."""

    name = BACKEND_NAME

    def __init__(
        self,
        *,
        sources: Mapping[str, str],
        encode_limiter: trio.CapacityLimiter,
        jpeg_quality: int = 80,
        width: int | None = None,
        height: int | None = None,
        open_timeout: float = OPEN_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        run_in_worker: Offload = trio.to_thread.run_sync,
    ) -> None:
        parsed: dict[str, MediaSource] = {}
        for name, spec in sources.items():
            if not isinstance(name, str) or not name:
                raise InvalidSettings(f"media source names must be non-empty strings, not {name!r}")
            try:
                parsed[name] = parse_source(spec)
            except ValueError as exc:
                raise InvalidSettings(f"media source {name!r}: {exc}") from None
        try:
            qscale_for_quality(jpeg_quality)
        except BadInput as exc:
            raise InvalidSettings(f"jpeg_quality {exc.message}") from None
        _check_size("width", width)
        _check_size("height", height)
        self._sources = parsed
        self._encode_limiter = encode_limiter
        self._quality = jpeg_quality
        self._width = width
        self._height = height
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._run_in_worker = run_in_worker
        self._devices: dict[str, _Device] = {}
        self._frames_skipped = 0
        self.broken_at_start: dict[str, str] = {}  # name: why, from check()

    def statistics(self) -> MediaStatistics:
        now = trio.current_time()
        return MediaStatistics(
            sources=tuple(self._sources),
            devices=tuple(device.meter.snapshot(now) for device in self._devices.values()),
            frames_skipped=self._frames_skipped,
        )

    async def check(self) -> None:
        """At start-up: refuse a media backend with nothing to show, and try every source.

        Each source is opened and one frame decoded, all at once in worker
        threads, within the open and read timeouts; each that fails is reported
        by name. A broken source does not stop the server (a camera or a stream
        may come back, and a session of it says why it cannot open), but nobody
        should learn it is broken only when a session is created.
        """
        if not self._sources:
            raise DeviceError(
                "media backend: no media source is configured; name one with "
                "--media NAME=SOURCE (env BRIDGE_MEDIA, or media_sources in the config file)"
            )
        problems: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            for name, source in self._sources.items():
                nursery.start_soon(self._probe_at_start, name, source, problems)
        for name, source in self._sources.items():
            if name in problems:
                log.warning(
                    "media source %r (%s) does not work: %s", name, source.display, problems[name]
                )
        working = len(self._sources) - len(problems)
        log.info("media sources: %d of %d open and deliver frames", working, len(self._sources))
        self.broken_at_start = dict(problems)

    async def _probe_at_start(self, name: str, source: MediaSource, problems: dict) -> None:
        # The reader's own timeouts bound the thread; this bound is for a source that
        # keeps trickling data without ever completing a frame.
        bound = self._open_timeout + self._read_timeout
        offload = self._run_in_worker
        if offload is trio.to_thread.run_sync:
            offload = partial(trio.to_thread.run_sync, abandon_on_cancel=True)
        with trio.move_on_after(bound) as scope:
            try:
                await offload(_probe, source, self._open_timeout, self._read_timeout)
            except SourceFailed as exc:
                problems[name] = str(exc)
        if scope.cancelled_caught:
            problems[name] = f"no frame within {bound:g} s"

    def _device(self, info: DeviceInfo) -> _Device:
        device = self._devices.get(info.udid)
        if device is None:
            source = self._sources.get(info.device_type)
            if source is None:
                raise DeviceError(f"media source {info.device_type!r} is no longer configured")
            device = self._devices[info.udid] = _Device(info, source)
        return device

    # -- lifecycle --

    async def configurations(self) -> Configurations:
        await trio.lowlevel.checkpoint()
        return Configurations(tuple(self._sources), (MEDIA_VERSION,))

    async def create_device(self, device_type: str, ios_version: str) -> DeviceInfo:
        """Open the named source once, to learn its size and to fail early if it cannot open."""
        await trio.lowlevel.checkpoint()
        source = self._sources.get(device_type)
        if source is None:
            known = ", ".join(self._sources) or "none configured"
            raise BadInput("device_type", f"unknown media source {device_type!r}; known: {known}")
        if ios_version != MEDIA_VERSION:
            raise BadInput(
                "ios_version",
                f"media devices have the one version {MEDIA_VERSION!r}, not {ios_version!r}",
            )
        try:
            source_width, source_height = await self._run_in_worker(
                _probe, source, self._open_timeout, self._read_timeout
            )
        except SourceFailed as exc:
            raise BadInput(
                "device_type", f"cannot open media source {source.display}: {exc}"
            ) from None
        width, height = output_size(source_width, source_height, self._width, self._height)
        udid = f"media-{uuid.uuid4().hex}"
        info = DeviceInfo(
            udid=udid,
            name=f"{DEVICE_NAME_PREFIX}{device_type}-{udid[6:14]}",
            device_type=device_type,
            ios_version=MEDIA_VERSION,
            point_width=width,
            point_height=height,
            pixel_width=width,
            pixel_height=height,
            backend=BACKEND_NAME,
            source=source.display,
        )
        self._devices[udid] = _Device(info, source)
        return info

    async def delete_device(self, device: DeviceInfo) -> None:
        await trio.lowlevel.checkpoint()
        self._devices.pop(device.udid, None)

    async def restore_device(self, device: DeviceInfo) -> bool:
        """A media device lives on as long as its source name is configured."""
        await trio.lowlevel.checkpoint()
        if device.backend != BACKEND_NAME or device.device_type not in self._sources:
            return False
        self._device(device)
        return True

    async def list_orphans(self, known_udids: frozenset[str]) -> list[DeviceInfo]:
        """Media devices exist only in this process, so none outlives its session."""
        await trio.lowlevel.checkpoint()
        return []

    async def is_accessible(self, device: DeviceInfo) -> bool:
        """Configured is accessible: probing a camera here would fight its capture."""
        await trio.lowlevel.checkpoint()
        return device.device_type in self._sources

    async def device_state(self, device: DeviceInfo) -> str:
        """A source that is still configured counts as up (see ``is_accessible``)."""
        await trio.lowlevel.checkpoint()
        return "Booted" if device.device_type in self._sources else "Missing"

    # -- driving and watching --

    async def apply_control(self, device: DeviceInfo, event: ControlEvent, input_seq: int) -> None:
        """A video has no input; controls are accepted and change nothing."""
        await trio.lowlevel.checkpoint()
        self._device(device)

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None:
        require_fps(fps)
        state = self._device(device)
        meter = state.meter
        meter.captures += 1
        meter.mode = "decode"
        reader: _Reader | None = None
        pacer: FramePacer | None = None
        try:
            reader = await self._run_in_worker(
                partial(
                    _Reader,
                    state.source,
                    open_timeout=self._open_timeout,
                    read_timeout=self._read_timeout,
                )
            )
            pacer = FramePacer(max_fps=fps, nominal_interval=reader.nominal_interval)
            width, height = device.pixel_width, device.pixel_height
            while True:
                await sink.wait_for_viewers()
                pts, frame = await self._run_in_worker(reader.read)
                deadline = pacer.schedule(pts, trio.current_time())
                if deadline is None:
                    continue
                if sink.wants_jpeg:
                    make = partial(reader.encode, frame, width, height, self._quality)
                    publish = partial(sink.publish, pixel_width=width, pixel_height=height)
                else:
                    # Only an H.264 encoder watching: it takes pixels, not a JPEG to decode.
                    make = partial(reader.pixels, frame, width, height)
                    publish = sink.publish_rgb
                picture = await self._run_in_worker(make, limiter=self._encode_limiter)
                await trio.sleep_until(deadline)
                publish(picture, input_seq=sink.applied_input_seq)
                state.last_picture = picture
                meter.frame(trio.current_time())
        except SourceFailed as exc:
            meter.last_error = f"media source {state.source.display}: {exc}"
            raise DeviceError(meter.last_error) from exc
        except Exception as exc:
            meter.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            meter.captures -= 1
            if not meter.captures:
                state.last_picture = None  # no screenshot reads it now; a frame of pixels is big
            if pacer is not None:
                self._frames_skipped += pacer.skipped
            if reader is not None:
                with trio.CancelScope(shield=True):
                    await self._run_in_worker(reader.close)

    async def screenshot(self, device: DeviceInfo) -> Screenshot:
        """The frame viewers saw last, or, with no capture running, a fresh one from the source."""
        state = self._device(device)
        last = state.last_picture if state.meter.captures else None
        if isinstance(last, np.ndarray):
            jpeg = await self._run_in_worker(
                _encode_once, last, self._quality, limiter=self._encode_limiter
            )
        elif last is None:
            try:
                jpeg = await self._run_in_worker(
                    _grab,
                    state.source,
                    self._open_timeout,
                    self._read_timeout,
                    device.pixel_width,
                    device.pixel_height,
                    self._quality,
                    limiter=self._encode_limiter,
                )
            except SourceFailed as exc:
                raise DeviceError(f"media source {state.source.display}: {exc}") from exc
        else:
            await trio.lowlevel.checkpoint()
            jpeg = last
        return Screenshot.jpeg_of(device, jpeg)

    async def stream_logs(self, device: DeviceInfo, emit: Callable[[LogLine], None]) -> None:
        """A media source has no log; the stream stays open and quiet."""
        self._device(device)
        await trio.sleep_forever()
