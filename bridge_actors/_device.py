"""What a device backend is, and the values that cross its boundary.

A backend knows how to make, drive and capture one kind of device (the built-in
simulated device, an FFmpeg source, an iOS simulator). Everything else, sharing
one capture between many viewers, supervision, rate limits, persistence, lives
in the actors and never in a backend. What a backend is told to do (taps,
swipes, keys) is in ``_controls``; how frames travel to a browser is in
:mod:`bridge_actors.wire`, which a backend never needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from ._controls import ControlEvent
from ._errors import BadInput

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Configurations:
    device_types: tuple[str, ...]
    ios_versions: tuple[str, ...]


MAX_SCREEN_SIDE = 8192  # pixels or points; larger than any device screen, and what media allows
MAX_DEVICE_TEXT = 200
_DEVICE_TEXT_FIELDS = ("udid", "name", "device_type", "ios_version", "backend")
_DEVICE_SIZE_FIELDS = ("point_width", "point_height", "pixel_width", "pixel_height")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device a backend created. Persisted with its session, so only plain values."""

    udid: str
    name: str
    device_type: str
    ios_version: str
    point_width: int
    point_height: int
    pixel_width: int
    pixel_height: int
    backend: str
    source: str = ""

    def to_record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def point_size_for(self, pixel_width: int, pixel_height: int) -> tuple[int, int]:
        """The screen's size in points for a frame of this many pixels: turned when the
        frame is turned against the device (a rotated simulator streams landscape)."""
        turned = (pixel_width > pixel_height) != (self.pixel_width > self.pixel_height)
        if turned and pixel_width != pixel_height:
            return self.point_height, self.point_width
        return self.point_width, self.point_height

    @classmethod
    def from_record(cls, record: Any, field: str = "device") -> DeviceInfo:
        """The device a stored record describes, every value checked.

        A record comes from a file a person may have edited or a crash may have
        damaged; a value of the wrong type or an impossible screen size would
        otherwise surface much later, as a 500 from a screenshot or a TypeError
        at start-up. Raises BadInput naming the first wrong field (``device.udid``).
        Keys it does not know are ignored, so a newer version's records still load.
        """
        if not isinstance(record, Mapping):
            raise BadInput(field, f"must be an object, not {type(record).__name__}")
        values: dict[str, Any] = {}
        for name in _DEVICE_TEXT_FIELDS:
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f"{field}.{name}", f"must be a non-empty string, not {value!r:.80}")
            if len(value) > MAX_DEVICE_TEXT or not value.isprintable():
                raise BadInput(
                    f"{field}.{name}", f"must be printable and at most {MAX_DEVICE_TEXT} characters"
                )
            values[name] = value
        for name in _DEVICE_SIZE_FIELDS:
            value = record.get(name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInput(f"{field}.{name}", f"must be a whole number, not {value!r:.80}")
            if not 1 <= value <= MAX_SCREEN_SIDE:
                raise BadInput(
                    f"{field}.{name}", f"must be from 1 to {MAX_SCREEN_SIDE}, not {value}"
                )
            values[name] = value
        source = record.get("source", "")
        if not isinstance(source, str) or len(source) > 4 * MAX_DEVICE_TEXT:
            raise BadInput(f"{field}.source", f"must be a string, not {source!r:.80}")
        return cls(**values, source=source)


class Frame:
    """One captured frame, shared by every viewer of its device.

    A frame carries either its ``jpeg`` or, while no viewer of the device wants
    JPEG (only its H.264 encoder watches), its unencoded ``rgb`` pixels: a capture
    that paints its own pictures then skips a JPEG encode the encoder would only
    decode again. A viewer that needs JPEG is never offered a frame without one,
    so every frame from :meth:`Bridge.watch` has its ``jpeg``.

    What is the same for every viewer (a message built from the frame) is made
    once, on first use, through :meth:`shared`, and then reused by all of them.
    """

    __slots__ = (
        "_shared",
        "captured_at",
        "input_seq",
        "jpeg",
        "pixel_height",
        "pixel_width",
        "point_height",
        "point_width",
        "rgb",
        "seq",
        "timestamp",
    )

    def __init__(
        self,
        *,
        seq: int,
        timestamp: float,
        captured_at: float,
        jpeg: bytes | None,
        pixel_width: int,
        pixel_height: int,
        point_width: int,
        point_height: int,
        input_seq: int,
        rgb: np.ndarray | None = None,
    ) -> None:
        if (jpeg is None) == (rgb is None):
            raise ValueError("a frame carries either its jpeg or its rgb pixels, exactly one")
        self.seq = seq
        self.timestamp = timestamp  # wall clock, epoch seconds
        self.captured_at = captured_at  # trio.current_time() at capture
        self.jpeg = jpeg
        self.rgb = rgb  # (pixel_height, pixel_width, 3) uint8, when there is no jpeg
        self.pixel_width = pixel_width
        self.pixel_height = pixel_height
        self.point_width = point_width
        self.point_height = point_height
        self.input_seq = input_seq
        self._shared: dict[Callable[[Frame], Any], Any] | None = None

    def shared(self, make: Callable[[Frame], T]) -> T:
        """``make(self)``, computed on the first call and returned to every later one.

        A thousand viewers of one device each send the same bytes; the first of them
        to ask pays for making them and the others share that one copy. ``make`` is
        the memo's key, so pass a function defined once (a module-level function),
        never a fresh lambda. The memo lives and dies with the frame.
        """
        memo = self._shared
        if memo is None:
            memo = self._shared = {}
        try:
            return memo[make]
        except KeyError:
            value = memo[make] = make(self)
            return value

    @property
    def picture(self) -> bytes | np.ndarray:
        """What an encoder starts from: the JPEG, or the RGB pixels of a frame without one."""
        return self.rgb if self.jpeg is None else self.jpeg

    def __repr__(self) -> str:
        if self.jpeg is None:
            return f"<Frame seq={self.seq} input_seq={self.input_seq} rgb {self.rgb.shape}>"
        return f"<Frame seq={self.seq} input_seq={self.input_seq} {len(self.jpeg)} bytes>"


@dataclass(frozen=True, slots=True)
class Screenshot:
    data: bytes
    format: Literal["jpeg", "png"]
    pixel_width: int
    pixel_height: int
    point_width: int
    point_height: int

    @classmethod
    def jpeg_of(
        cls,
        device: DeviceInfo,
        data: bytes,
        *,
        pixel_width: int | None = None,
        pixel_height: int | None = None,
    ) -> Screenshot:
        """A JPEG of ``device``: its point size, and its pixel size unless given."""
        return cls(
            data=data,
            format="jpeg",
            pixel_width=device.pixel_width if pixel_width is None else pixel_width,
            pixel_height=device.pixel_height if pixel_height is None else pixel_height,
            point_width=device.point_width,
            point_height=device.point_height,
        )


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp: str
    process: str
    pid: str
    level: Literal["info", "warning", "error", "debug"]
    message: str
    raw_line: str

    def to_message(self) -> dict[str, str]:
        return {
            "type": "log",
            "timestamp": self.timestamp,
            "process": self.process,
            "pid": self.pid,
            "level": self.level,
            "message": self.message,
            "raw_line": self.raw_line,
        }


# --- the backend contract --------------------------------------------------------------------


class FrameSink(Protocol):
    """Where a capture puts its frames. Given to ``DeviceBackend.capture``."""

    @property
    def applied_input_seq(self) -> int:
        """The input_seq of the last control applied to this device (0 before any)."""

    async def wait_for_viewers(self) -> None:
        """Return once at least one viewer wants frames; a capture calls this before
        each frame so that a device nobody watches costs no encoding."""

    def publish(
        self,
        jpeg: bytes,
        *,
        pixel_width: int,
        pixel_height: int,
        timestamp: float | None = None,
        input_seq: int | None = None,
        point_size: tuple[int, int] | None = None,
    ) -> None:
        """Hand one encoded frame to every viewer. Never blocks. ``point_size`` is the
        device's own unless given (a turned device gives its turned size)."""

    @property
    def wants_jpeg(self) -> bool:
        """False while no viewer needs JPEG (only an H.264 encoder watches); a capture
        that has its pictures as pixels may then :meth:`publish_rgb` them instead."""

    def publish_rgb(
        self,
        rgb: np.ndarray,
        *,
        timestamp: float | None = None,
        input_seq: int | None = None,
        point_size: tuple[int, int] | None = None,
    ) -> None:
        """Hand one unencoded ``(height, width, 3)`` uint8 picture to the viewers that
        encode pictures themselves. Never blocks; as :meth:`publish` otherwise."""


@runtime_checkable
class DeviceBackend(Protocol):
    """One kind of device. Every method may raise DeviceError or BadInput; ``capture``
    and ``stream_logs`` run until cancelled, and raising from them counts as a crash
    that the capture supervisor restarts.

    Every method is part of the contract, none is optional: the bridge calls each
    one directly and never asks whether a backend has it, so a backend that lacks
    one fails where it is made, not in the middle of a request.
    """

    name: str

    async def check(self) -> None:
        """Before the bridge starts: raise DeviceError saying what is missing (a tool,
        a source) and how to get it, so that start-up fails instead of the first request."""

    async def configurations(self) -> Configurations: ...

    async def create_device(self, device_type: str, ios_version: str) -> DeviceInfo:
        """Raise BadInput("device_type" | "ios_version", ...) for values it does not offer."""

    async def delete_device(self, device: DeviceInfo) -> None: ...

    async def restore_device(self, device: DeviceInfo) -> bool:
        """After a restart: make a persisted device usable again; False if it is gone."""

    async def list_orphans(self, known_udids: frozenset[str]) -> list[DeviceInfo]:
        """Devices this bridge created (never a user's own) that no session owns."""

    async def is_accessible(self, device: DeviceInfo) -> bool: ...

    async def device_state(self, device: DeviceInfo) -> str:
        """The device's state in simctl's words ("Booting", "Booted", "Shutdown"...),
        "Missing" once it is gone. Sessions ask it from their own task, never a view."""

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None: ...

    async def apply_control(self, device: DeviceInfo, event: ControlEvent, input_seq: int) -> None:
        """Apply one event; ``input_seq`` is the number frames captured after it must carry."""

    async def screenshot(self, device: DeviceInfo) -> Screenshot: ...

    async def stream_logs(self, device: DeviceInfo, emit: Callable[[LogLine], None]) -> None: ...


@dataclass(slots=True)
class BackendStatistics:
    name: str
    devices: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
