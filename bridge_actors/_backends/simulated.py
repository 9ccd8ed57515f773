"""The built-in simulated device: a real capture pipeline with no device behind it.

It renders an animated test card, encodes it with the same JPEG encoder as a real
capture and answers controls by drawing them, so the whole bridge (fan-out,
supervision, rate limits, viewers) can be exercised and demonstrated anywhere.
Each frame shows its number, the wall-clock time and the input_seq it carries,
which makes latency and dropped frames visible by eye in a viewer.

State lives on the event loop. A frame is drawn from an immutable ``_Scene``
snapshot, so the worker thread that paints and encodes it never sees a control
half applied.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

import numpy as np
import trio
from PIL import Image, ImageDraw, ImageFont

from .._checks import require_fps
from .._controls import Button, ControlEvent, Key, Swipe, Tap, Text
from .._device import Configurations, DeviceInfo, FrameSink, LogLine, Screenshot
from .._errors import BadInput, DeviceError
from . import DEVICE_NAME_PREFIX
from .jpeg import JpegEncoder
from .simulated_actions import SimulatedActions

_T = TypeVar("_T")

BACKEND_NAME = "simulated"

# Points and pixels are the same (scale 1), so a tap's coordinates are pixel coordinates.
DEVICE_SIZES: dict[str, tuple[int, int]] = {
    "iPhone 15 (simulated)": (390, 844),
    "iPhone 15 Pro (simulated)": (390, 844),
    "iPad (simulated)": (820, 1180),
}
IOS_VERSIONS = ("17.5", "18.0")

MARK_FADE_SECONDS = 1.0
MAX_MARKS = 64  # a flood of taps cannot grow a device without bound
MAX_TYPED_CHARACTERS = 200

Offload = Callable[..., Awaitable[Any]]


async def run_on_event_loop(
    sync_fn: Callable[..., _T], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> _T:
    """Stand-in for ``trio.to_thread.run_sync`` that runs ``sync_fn`` right here.

    For tests under ``MockClock(autojump_threshold=0)``: the clock counts a task
    waiting for a worker thread as idle and jumps past its deadlines while the
    thread works. Running the (few-millisecond) work inline keeps virtual time exact.
    """
    if limiter is None:
        await trio.lowlevel.checkpoint()
        return sync_fn(*args)
    async with limiter:
        await trio.lowlevel.checkpoint()
        return sync_fn(*args)


# --- device state, on the event loop ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TapMark:
    x: int
    y: int
    at: float


@dataclass(frozen=True, slots=True)
class _SwipeMark:
    start_x: int
    start_y: int
    end_x: int
    end_y: int
    at: float


@dataclass(frozen=True, slots=True)
class _Scene:
    """Everything one frame shows; each mark comes with its opacity (1 new, 0 faded)."""

    frame_number: int
    wall_time: float
    input_seq: int
    taps: tuple[tuple[_TapMark, float], ...]
    swipes: tuple[tuple[_SwipeMark, float], ...]
    typed: str
    last_action: str
    rotation: int = 0  # degrees counter-clockwise the picture is turned (0, 90, 180, 270)
    notices: tuple[str, ...] = ()  # what device actions left on screen: a URL, a push...


def turned(width: int, height: int, rotation: int) -> tuple[int, int]:
    """A picture's size after turning it ``rotation`` degrees."""
    return (height, width) if rotation % 180 else (width, height)


def _opacity(age: float) -> float:
    return max(0.0, 1.0 - age / MARK_FADE_SECONDS)


class SimulatedDevice:
    """One simulated device: what was done to it, and who is listening to its log."""

    def __init__(self, info: DeviceInfo) -> None:
        self.info = info
        self.input_seq = 0
        self.frames_rendered = 0
        self.controls_applied = 0
        self.typed = ""
        self.last_action = "none"
        self.rotation = 0
        self.notices: dict[str, str] = {}  # "url", "push", "location" -> what it shows
        self._taps: deque[_TapMark] = deque(maxlen=MAX_MARKS)
        self._swipes: deque[_SwipeMark] = deque(maxlen=MAX_MARKS)
        # Keyed by a token per stream: two streams may pass the same callable.
        self.log_listeners: dict[object, Callable[[LogLine], None]] = {}

    def apply(self, event: ControlEvent, input_seq: int, now: float) -> str:
        """Record ``event`` and return a one-line description of it for the device log."""
        if isinstance(event, Tap):
            self._taps.append(_TapMark(event.x, event.y, now))
            description = f"tap at ({event.x}, {event.y})"
        elif isinstance(event, Swipe):
            self._swipes.append(
                _SwipeMark(event.start_x, event.start_y, event.end_x, event.end_y, now)
            )
            description = (
                f"swipe from ({event.start_x}, {event.start_y}) to ({event.end_x}, {event.end_y})"
            )
        elif isinstance(event, Text):
            self.typed = (self.typed + event.text)[-MAX_TYPED_CHARACTERS:]
            description = f"typed {len(event.text)} characters"
        elif isinstance(event, Button):
            description = f"button {event.button}"
        elif isinstance(event, Key):
            description = f"key {event.key}"
        else:
            raise BadInput("t", f"unsupported control event {type(event).__name__}")
        self.last_action = description
        self.input_seq = input_seq
        self.controls_applied += 1
        return description

    def scene(self, now: float, wall_time: float) -> _Scene:
        """Snapshot the device for one frame, forgetting marks that have faded out."""
        while self._taps and now - self._taps[0].at >= MARK_FADE_SECONDS:
            self._taps.popleft()
        while self._swipes and now - self._swipes[0].at >= MARK_FADE_SECONDS:
            self._swipes.popleft()
        self.frames_rendered += 1
        return _Scene(
            frame_number=self.frames_rendered,
            wall_time=wall_time,
            input_seq=self.input_seq,
            taps=tuple((mark, _opacity(now - mark.at)) for mark in self._taps),
            swipes=tuple((mark, _opacity(now - mark.at)) for mark in self._swipes),
            typed=self.typed,
            last_action=self.last_action,
            rotation=self.rotation,
            notices=tuple(f"{name}: {text}" for name, text in self.notices.items()),
        )


# --- the picture, in a worker thread ----------------------------------------------------------

_BAR_COLOURS = np.array(
    [
        (192, 192, 192),
        (192, 192, 0),
        (0, 192, 192),
        (0, 192, 0),
        (192, 0, 192),
        (192, 0, 0),
        (0, 0, 192),
    ],
    dtype=np.uint8,
)
_BAR_WIDTH = 56
_BAR_PERIOD = _BAR_WIDTH * len(_BAR_COLOURS)
_BAR_STEP = 6  # pixels the bars move per frame
_HEADER_HEIGHT = 180
_BARS_TOP, _BARS_HEIGHT = 180, 120
_RAMP_HEIGHT = 30  # the lower part of the band: a grey ramp moving the other way
_LABEL_TOP, _LABEL_HEIGHT = 300, 40
_TEXT_STRIP_HEIGHT = 90
_BOTTOM_MARGIN = 24


def _format_clock(wall_time: float) -> str:
    local = time.localtime(wall_time)
    return time.strftime("%H:%M:%S", local) + f".{int(wall_time * 1000) % 1000:03d}"


class _Painter:
    """Draws scenes for one screen size. Used by one thread at a time (fonts are not shared)."""

    def __init__(self, width: int, height: int, title: str) -> None:
        self.width = width
        self.height = height
        self._text_strip_top = height - _BOTTOM_MARGIN - _TEXT_STRIP_HEIGHT
        self._background = self._paint_background(title)
        self._bars = self._paint_bar_strip()
        self._big = ImageFont.load_default(size=44)
        self._medium = ImageFont.load_default(size=26)
        self._small = ImageFont.load_default(size=20)
        self._typed_cache = ("", "")

    def _paint_background(self, title: str) -> Image.Image:
        width, height = self.width, self.height
        rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        top, bottom = np.array((18, 32, 72), np.float32), np.array((8, 96, 104), np.float32)
        pixels = np.broadcast_to(top + (bottom - top) * rows, (height, width, 3))
        pixels = pixels.astype(np.uint8)
        pixels[:_HEADER_HEIGHT] = (16, 16, 24)
        pixels[_LABEL_TOP : _LABEL_TOP + _LABEL_HEIGHT] = (24, 24, 36)
        grid = pixels[_LABEL_TOP + _LABEL_HEIGHT : self._text_strip_top]
        grid[::40] = (48, 64, 96)
        grid[:, ::40] = (48, 64, 96)
        pixels[self._text_strip_top : height - _BOTTOM_MARGIN] = (236, 236, 240)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        draw.text((16, 8), title, fill=(150, 150, 170), font=ImageFont.load_default(size=18))
        indicator = (width // 2 - 60, height - 14, width // 2 + 60, height - 8)
        draw.rounded_rectangle(indicator, radius=3, fill=(220, 220, 220))
        return image

    def _paint_bar_strip(self) -> Image.Image:
        """Bars twice as wide as needed, so each frame is a crop at a moving offset."""
        columns = np.arange(self.width + _BAR_PERIOD)
        strip = np.empty((_BARS_HEIGHT, columns.size, 3), np.uint8)
        strip[:] = _BAR_COLOURS[(columns // _BAR_WIDTH) % len(_BAR_COLOURS)]
        ramp = ((_BAR_PERIOD - 1 - columns % _BAR_PERIOD) * 255 // (_BAR_PERIOD - 1)).astype(
            np.uint8
        )
        strip[-_RAMP_HEIGHT:] = ramp[None, :, None]
        return Image.fromarray(strip, "RGB")

    def _typed_tail(self, typed: str) -> str:
        """The end of the typed text that fits the strip (cached: it rarely changes)."""
        if self._typed_cache[0] != typed:
            room = self.width - 32
            tail = typed
            while tail and self._medium.getlength(tail) > room:
                tail = tail[max(1, len(tail) // 8) :]
            self._typed_cache = (typed, tail)
        return self._typed_cache[1]

    def paint(self, scene: _Scene) -> np.ndarray:
        image = self._background.copy()
        offset = (scene.frame_number * _BAR_STEP) % _BAR_PERIOD
        image.paste(self._bars.crop((offset, 0, offset + self.width, _BARS_HEIGHT)), (0, _BARS_TOP))
        draw = ImageDraw.Draw(image, "RGBA")
        draw.text((16, 34), _format_clock(scene.wall_time), fill=(255, 255, 255), font=self._big)
        draw.text((16, 94), f"frame {scene.frame_number}", fill=(120, 220, 255), font=self._medium)
        draw.text((16, 132), f"input {scene.input_seq}", fill=(255, 200, 80), font=self._medium)
        draw.text(
            (16, _LABEL_TOP + 8),
            f"last: {scene.last_action}",
            fill=(230, 230, 230),
            font=self._small,
        )
        draw.text((16, self._text_strip_top + 8), "typed", fill=(110, 110, 120), font=self._small)
        draw.text(
            (16, self._text_strip_top + 40),
            self._typed_tail(scene.typed),
            fill=(10, 10, 10),
            font=self._medium,
        )
        for row, notice in enumerate(scene.notices):
            top = _LABEL_TOP + _LABEL_HEIGHT + 12 + row * 32
            draw.text((16, top), notice[:60], fill=(255, 255, 255), font=self._small)
        for swipe, opacity in scene.swipes:
            self._draw_swipe(draw, swipe, round(255 * opacity))
        for tap, opacity in scene.taps:
            alpha = round(255 * opacity)
            ring = (tap.x - 24, tap.y - 24, tap.x + 24, tap.y + 24)
            draw.ellipse(ring, outline=(255, 214, 10, alpha), width=6)
            draw.ellipse((tap.x - 7, tap.y - 7, tap.x + 7, tap.y + 7), fill=(255, 255, 255, alpha))
        if scene.rotation:
            image = image.rotate(scene.rotation, expand=True)
        return np.asarray(image)

    @staticmethod
    def _draw_swipe(draw: ImageDraw.ImageDraw, swipe: _SwipeMark, alpha: int) -> None:
        colour = (255, 80, 160, alpha)
        start, end = (swipe.start_x, swipe.start_y), (swipe.end_x, swipe.end_y)
        draw.line((start, end), fill=colour, width=6)
        draw.ellipse((start[0] - 8, start[1] - 8, start[0] + 8, start[1] + 8), fill=colour)
        direction = np.subtract(end, start).astype(float)
        length = float(np.hypot(*direction))
        if length >= 1:
            along = direction / length * 22
            across = np.array((-along[1], along[0])) * 0.6
            tip = np.array(end, float)
            head = [tuple(tip), tuple(tip - along + across), tuple(tip - along - across)]
            draw.polygon(head, fill=colour)


class _FrameMaker:
    """A painter and an encoder for one capture: built once, used for every frame."""

    def __init__(self, device: DeviceInfo, quality: int) -> None:
        self._painter = _Painter(device.pixel_width, device.pixel_height, device.name)
        self._quality = quality
        # One encoder per picture size: portrait, and landscape once the device is turned.
        self._encoders: dict[tuple[int, int], JpegEncoder] = {}

    def paint(self, scene: _Scene) -> tuple[np.ndarray, float]:
        """Return the RGB pixels and how long painting them took, in seconds."""
        started = time.perf_counter()
        return self._painter.paint(scene), time.perf_counter() - started

    def make(self, scene: _Scene) -> tuple[bytes, float]:
        """Return the JPEG and how long painting and encoding it took, in seconds."""
        started = time.perf_counter()
        pixels = self._painter.paint(scene)
        height, width = pixels.shape[:2]
        encoder = self._encoders.get((width, height))
        if encoder is None:
            encoder = self._encoders[width, height] = JpegEncoder(width, height, self._quality)
        jpeg = encoder.encode(pixels)
        return jpeg, time.perf_counter() - started


def _screenshot_once(device: DeviceInfo, quality: int, scene: _Scene) -> tuple[bytes, float]:
    return _FrameMaker(device, quality).make(scene)


# --- device log ------------------------------------------------------------------------------

LogLevel = Literal["info", "warning", "error", "debug"]

# `log stream --style compact` has no warning type; os_log's default level is what
# daemons use for conditions worth noticing, so warnings appear as "Df".
_COMPACT_TYPE: dict[str, str] = {"debug": "Db", "info": "I ", "warning": "Df", "error": "E "}

_CHATTER: tuple[tuple[str, int, str], ...] = (
    ("SpringBoard", 62, "Scene lifecycle: com.apple.springboard foreground"),
    ("backboardd", 58, "HID event dispatch queue idle"),
    ("runningboardd", 33, "Acquiring assertion for app<com.apple.Preferences>"),
    ("locationd", 91, "Location services authorization status unchanged"),
    ("mediaserverd", 104, "Audio session category: AVAudioSessionCategoryAmbient"),
    ("CommCenter", 77, "Cellular data reachability: not reachable (simulated)"),
    ("SpringBoard", 62, "Icon model saved (42 icons)"),
    ("mDNSResponder", 120, "Resolved hostname in 3 ms"),
)
_PROCESS_FOR_CONTROL: dict[type, tuple[str, int]] = {
    Tap: ("backboardd", 58),
    Swipe: ("backboardd", 58),
    Text: ("kbd", 143),
    Key: ("kbd", 143),
    Button: ("SpringBoard", 62),
}


def format_log_timestamp(wall_time: float) -> str:
    local = time.localtime(wall_time)
    return time.strftime("%Y-%m-%d %H:%M:%S", local) + f".{int(wall_time * 1000) % 1000:03d}"


def make_log_line(
    wall_time: float, level: LogLevel, process: str, pid: int, thread: int, message: str
) -> LogLine:
    """A log line, with ``raw_line`` as ``log stream --style compact`` would print it."""
    timestamp = format_log_timestamp(wall_time)
    raw = f"{timestamp} {_COMPACT_TYPE[level]} {process}[{pid}:{thread:x}] {message}"
    return LogLine(timestamp, process, str(pid), level, message, raw)


class _LogScript:
    """The background chatter of one log stream: which line comes next, at what level."""

    def __init__(self) -> None:
        self._count = 0

    @staticmethod
    def level_for(count: int) -> LogLevel:
        if count % 23 == 22:
            return "error"
        if count % 7 == 6:
            return "warning"
        if count % 3 == 2:
            return "debug"
        return "info"

    def next_line(self, wall_time: float) -> LogLine:
        count = self._count
        self._count += 1
        process, pid, message = _CHATTER[count % len(_CHATTER)]
        level = self.level_for(count)
        if level == "error":
            message = "Connection interrupted; will retry (simulated fault)"
        elif level == "warning":
            message = f"{message} (took longer than expected)"
        return make_log_line(wall_time, level, process, pid, 0x1A00 + count % 16, message)


# --- the backend -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulatedStatistics:
    devices: int
    frames_rendered: int
    mean_render_ms: float
    controls_applied: int
    active_captures: int
    active_log_streams: int


class SimulatedBackend(SimulatedActions):
    """A ``DeviceBackend`` whose devices exist only in this process."""

    name = BACKEND_NAME

    def __init__(
        self,
        *,
        encode_limiter: trio.CapacityLimiter,
        jpeg_quality: int = 80,
        log_interval: float = 1.0,
        run_in_worker: Offload = trio.to_thread.run_sync,
    ) -> None:
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int):
            raise BadInput("jpeg_quality", f"must be an integer, not {jpeg_quality!r}")
        if not 1 <= jpeg_quality <= 100:
            raise BadInput("jpeg_quality", f"must be from 1 to 100, not {jpeg_quality}")
        if not log_interval > 0:
            raise BadInput(
                "log_interval", f"must be a positive number of seconds, not {log_interval}"
            )
        self._encode_limiter = encode_limiter
        self._jpeg_quality = jpeg_quality
        self._log_interval = log_interval
        self._run_in_worker = run_in_worker
        self._devices: dict[str, SimulatedDevice] = {}
        self._frames_rendered = 0
        self._render_seconds = 0.0
        self._controls_applied = 0
        self._active_captures = 0
        self._active_log_streams = 0

    def _device(self, udid: str) -> SimulatedDevice:
        try:
            return self._devices[udid]
        except KeyError:
            raise DeviceError(f"simulated device {udid} does not exist") from None

    def _record_render(self, seconds: float) -> None:
        self._frames_rendered += 1
        self._render_seconds += seconds

    def statistics(self) -> SimulatedStatistics:
        frames = self._frames_rendered
        return SimulatedStatistics(
            devices=len(self._devices),
            frames_rendered=frames,
            mean_render_ms=1000 * self._render_seconds / frames if frames else 0.0,
            controls_applied=self._controls_applied,
            active_captures=self._active_captures,
            active_log_streams=self._active_log_streams,
        )

    # -- lifecycle --

    async def check(self) -> None:
        """Nothing to check: the simulated device needs no tool and no source."""
        await trio.lowlevel.checkpoint()

    async def configurations(self) -> Configurations:
        await trio.lowlevel.checkpoint()
        return Configurations(tuple(DEVICE_SIZES), IOS_VERSIONS)

    async def create_device(self, device_type: str, ios_version: str) -> DeviceInfo:
        await trio.lowlevel.checkpoint()
        if device_type not in DEVICE_SIZES:
            known = ", ".join(DEVICE_SIZES)
            raise BadInput("device_type", f"unknown device type {device_type!r}; known: {known}")
        if ios_version not in IOS_VERSIONS:
            known = ", ".join(IOS_VERSIONS)
            raise BadInput("ios_version", f"unknown iOS version {ios_version!r}; known: {known}")
        udid = str(uuid.uuid4()).upper()
        width, height = DEVICE_SIZES[device_type]
        info = DeviceInfo(
            udid=udid,
            name=f"{DEVICE_NAME_PREFIX}{device_type}-{udid[:8]}",
            device_type=device_type,
            ios_version=ios_version,
            point_width=width,
            point_height=height,
            pixel_width=width,
            pixel_height=height,
            backend=BACKEND_NAME,
        )
        self._devices[udid] = SimulatedDevice(info)
        return info

    async def delete_device(self, device: DeviceInfo) -> None:
        await trio.lowlevel.checkpoint()
        self._devices.pop(device.udid, None)

    async def restore_device(self, device: DeviceInfo) -> bool:
        """A simulated device can always be made again, blank, from its record."""
        await trio.lowlevel.checkpoint()
        if device.backend != BACKEND_NAME:
            return False
        if device.udid not in self._devices:
            self._devices[device.udid] = SimulatedDevice(device)
        return True

    async def list_orphans(self, known_udids: frozenset[str]) -> list[DeviceInfo]:
        await trio.lowlevel.checkpoint()
        return [state.info for udid, state in self._devices.items() if udid not in known_udids]

    async def is_accessible(self, device: DeviceInfo) -> bool:
        await trio.lowlevel.checkpoint()
        return device.udid in self._devices

    async def device_state(self, device: DeviceInfo) -> str:
        """A simulated device is up from the moment it exists until it is deleted."""
        await trio.lowlevel.checkpoint()
        return "Booted" if device.udid in self._devices else "Missing"

    # -- driving and watching --

    async def apply_control(self, device: DeviceInfo, event: ControlEvent, input_seq: int) -> None:
        await trio.lowlevel.checkpoint()
        state = self._device(device.udid)
        description = state.apply(event, input_seq, trio.current_time())
        self._controls_applied += 1
        process, pid = _PROCESS_FOR_CONTROL[type(event)]
        line = make_log_line(
            time.time(), "info", process, pid, 0x2F00, f"{description} (input_seq={input_seq})"
        )
        for emit in list(state.log_listeners.values()):
            emit(line)

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None:
        """Render, encode and publish frames at ``fps`` while anyone watches; never returns.

        Frames are due every ``1/fps`` seconds from the last frame's slot, and a
        slot never lies in the past: after a pause (no viewers, a slow encode)
        the rate resumes from now instead of bursting to catch up.
        """
        require_fps(fps)
        await trio.lowlevel.checkpoint()
        info = self._device(device.udid).info
        self._active_captures += 1
        try:
            maker = await self._run_in_worker(
                _FrameMaker, info, self._jpeg_quality, limiter=self._encode_limiter
            )
            interval = 1 / fps
            deadline = trio.current_time()
            while True:
                await trio.sleep_until(deadline)
                await sink.wait_for_viewers()
                deadline = max(deadline, trio.current_time())  # this frame's slot
                wall_time = time.time()
                scene = self._device(info.udid).scene(trio.current_time(), wall_time)
                width, height = turned(info.pixel_width, info.pixel_height, scene.rotation)
                if sink.wants_jpeg:
                    make = maker.make
                    publish = partial(sink.publish, pixel_width=width, pixel_height=height)
                else:
                    # Only an H.264 encoder watching: it takes the pixels, not a JPEG it
                    # would decode again.
                    make, publish = maker.paint, sink.publish_rgb
                picture, seconds = await self._run_in_worker(
                    make, scene, limiter=self._encode_limiter
                )
                self._record_render(seconds)
                publish(
                    picture,
                    point_size=turned(info.point_width, info.point_height, scene.rotation),
                    timestamp=wall_time,
                    input_seq=scene.input_seq,
                )
                deadline += interval
        finally:
            self._active_captures -= 1

    async def screenshot(self, device: DeviceInfo) -> Screenshot:
        await trio.lowlevel.checkpoint()
        state = self._device(device.udid)
        scene = state.scene(trio.current_time(), time.time())
        jpeg, seconds = await self._run_in_worker(
            partial(_screenshot_once, state.info, self._jpeg_quality, scene),
            limiter=self._encode_limiter,
        )
        self._record_render(seconds)
        width, height = turned(state.info.pixel_width, state.info.pixel_height, scene.rotation)
        return Screenshot.jpeg_of(state.info, jpeg, pixel_width=width, pixel_height=height)

    async def stream_logs(self, device: DeviceInfo, emit: Callable[[LogLine], None]) -> None:
        """Emit background chatter every ``log_interval`` seconds, and a line per control."""
        await trio.lowlevel.checkpoint()
        state = self._device(device.udid)
        script = _LogScript()
        token = object()
        state.log_listeners[token] = emit
        self._active_log_streams += 1
        try:
            deadline = trio.current_time()
            while True:
                await trio.sleep_until(deadline)
                self._device(device.udid)  # a deleted device stops logging
                emit(script.next_line(time.time()))
                deadline = max(deadline + self._log_interval, trio.current_time())
        finally:
            self._active_log_streams -= 1
            del state.log_listeners[token]
