"""What a device backend is, and the values that cross its boundary.

A backend knows how to make, drive and capture one kind of device (the built-in
simulated device, an FFmpeg source, an iOS simulator). Everything else, sharing
one capture between many viewers, supervision, rate limits, persistence, lives
in the actors and never in a backend.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ._errors import BadInput


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


BINARY_MAGIC = b"BAV1"
CODEC_JPEG = 1
_BINARY_HEADER = struct.Struct(">4sIdHHHHIB3x")
BINARY_HEADER_SIZE = _BINARY_HEADER.size
assert BINARY_HEADER_SIZE == 32


class Frame:
    """One captured, JPEG-encoded frame, shared by every viewer of its device.

    What is the same for every viewer (the base64 text, the binary message) is
    computed once, on first use, and then reused by all of them.
    """

    __slots__ = (
        "_b64",
        "_binary",
        "captured_at",
        "input_seq",
        "jpeg",
        "pixel_height",
        "pixel_width",
        "point_height",
        "point_width",
        "seq",
        "timestamp",
    )

    def __init__(
        self,
        *,
        seq: int,
        timestamp: float,
        captured_at: float,
        jpeg: bytes,
        pixel_width: int,
        pixel_height: int,
        point_width: int,
        point_height: int,
        input_seq: int,
    ) -> None:
        self.seq = seq
        self.timestamp = timestamp  # wall clock, epoch seconds
        self.captured_at = captured_at  # trio.current_time() at capture
        self.jpeg = jpeg
        self.pixel_width = pixel_width
        self.pixel_height = pixel_height
        self.point_width = point_width
        self.point_height = point_height
        self.input_seq = input_seq
        self._b64: str | None = None
        self._binary: bytes | None = None

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self.jpeg).decode("ascii")
        return self._b64

    @property
    def binary(self) -> bytes:
        """The ``?format=binary`` message: a 32-byte big-endian header, then the JPEG."""
        if self._binary is None:
            header = _BINARY_HEADER.pack(
                BINARY_MAGIC,
                self.seq & 0xFFFFFFFF,
                self.timestamp,
                self.pixel_width,
                self.pixel_height,
                self.point_width,
                self.point_height,
                self.input_seq & 0xFFFFFFFF,
                CODEC_JPEG,
            )
            self._binary = header + self.jpeg
        return self._binary

    def __repr__(self) -> str:
        return f"<Frame seq={self.seq} input_seq={self.input_seq} {len(self.jpeg)} bytes>"


def parse_binary_header(message: bytes) -> dict[str, Any]:
    """Decode the header of a binary frame message (clients and tests use it)."""
    if len(message) < BINARY_HEADER_SIZE:
        raise ValueError(f"binary frame shorter than its {BINARY_HEADER_SIZE}-byte header")
    magic, seq, timestamp, pw, ph, ptw, pth, input_seq, codec = _BINARY_HEADER.unpack_from(message)
    if magic != BINARY_MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    return {
        "seq": seq,
        "timestamp": timestamp,
        "pixel_width": pw,
        "pixel_height": ph,
        "point_width": ptw,
        "point_height": pth,
        "input_seq": input_seq,
        "codec": codec,
        "jpeg": message[BINARY_HEADER_SIZE:],
    }


@dataclass(frozen=True, slots=True)
class Screenshot:
    data: bytes
    format: Literal["jpeg", "png"]
    pixel_width: int
    pixel_height: int
    point_width: int
    point_height: int


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


# --- control events -------------------------------------------------------------------------

BUTTONS = ("home", "lock", "siri", "side-button", "apple-pay")
MAX_TEXT_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class Tap:
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Swipe:
    start_x: int
    start_y: int
    end_x: int
    end_y: int
    duration: float = 0.2


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Button:
    button: str


@dataclass(frozen=True, slots=True)
class Key:
    key: str
    duration: float | None = None


# --- keys: one table, one meaning for every path -----------------------------------------------


def _key_table() -> tuple[dict[str, int], dict[int, str]]:
    """Key names and their USB HID usage codes (keyboard page), which ``idb ui key`` takes.

    The first name given for a code is its canonical one, the name every backend
    receives; the others (``return``, ``esc``, ``right``, a bare ``" "``) are aliases.
    """
    names: list[tuple[str, int]] = [(chr(ord("a") + i), 4 + i) for i in range(26)]
    names += [(f"digit{digit}", 29 + digit) for digit in range(1, 10)] + [("digit0", 39)]
    names += [
        ("enter", 40),
        ("escape", 41),
        ("backspace", 42),
        ("tab", 43),
        ("space", 44),
        *zip("-=[]\\", range(45, 50), strict=True),
        *zip(";'`,./", range(51, 57), strict=True),
        ("capslock", 57),
        *((f"f{n}", 57 + n) for n in range(1, 13)),
        ("insert", 73),
        ("home", 74),
        ("pageup", 75),
        ("delete", 76),
        ("end", 77),
        ("pagedown", 78),
        ("arrowright", 79),
        ("arrowleft", 80),
        ("arrowdown", 81),
        ("arrowup", 82),
        # aliases
        ("return", 40),
        ("esc", 41),
        (" ", 44),
        ("right", 79),
        ("left", 80),
        ("down", 81),
        ("up", 82),
    ]
    codes: dict[str, int] = {}
    canonical: dict[int, str] = {}
    for name, code in names:
        codes[name] = code
        canonical.setdefault(code, name)
    return codes, canonical


KEY_CODES, KEY_NAMES = _key_table()
"""``KEY_CODES``: every key name (canonical or alias) to its HID usage code;
``KEY_NAMES``: each code to its canonical name."""
MIN_HID_KEY, MAX_HID_KEY = 4, 255  # usages 0-3 are error codes, not keys


def resolve_key(key: str) -> str:
    """The one meaning of a control message's ``key``, on every path and for every backend.

    * A number ("4", "30") is a USB HID usage code, as the compatible desktop viewer
      sends them: "4" is the A key, "9" the F key, "30" the 1 key. The digit keys
      themselves are named ``digit0`` to ``digit9``, so a name is never a number.
    * A name, in any case ("Enter", "ArrowUp", "a"), is that key.
    * Any other single printable character ("A", "!") is typed as that character.

    Returns the canonical name (or the character, or the code of a key without a
    name here); raises BadInput naming the key otherwise.
    """
    if key.isascii() and key.isdigit():
        code = int(key)
        if not MIN_HID_KEY <= code <= MAX_HID_KEY:
            raise BadInput(
                "key",
                f"{key!r} is not a key: a number is a HID usage code, "
                f"from {MIN_HID_KEY} to {MAX_HID_KEY} (digit keys are digit0 to digit9)",
            )
        return KEY_NAMES.get(code, str(code))
    if key in KEY_CODES:
        return KEY_NAMES[KEY_CODES[key]]
    if len(key) > 1 and key.lower() in KEY_CODES:
        return KEY_NAMES[KEY_CODES[key.lower()]]
    if len(key) == 1 and key.isprintable():
        return key
    raise BadInput("key", f"unknown key {key!r}")


def key_code(key: str) -> int | None:
    """The HID usage code of ``key`` (resolved first); None for a character to type as text."""
    name = resolve_key(key)
    if name.isdigit():
        return int(name)
    return KEY_CODES.get(name)


ControlEvent = Tap | Swipe | Text | Button | Key


def _int_field(message: Mapping[str, Any], name: str) -> int:
    if name not in message:
        raise BadInput(name, "is required")
    value = message[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(name, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > 100_000:
        raise BadInput(name, "must be a finite coordinate within ±100000")
    return round(value)


def _duration_field(message: Mapping[str, Any], name: str, default: float | None) -> float | None:
    if name not in message or message[name] is None:
        return default
    value = message[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(name, f"must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or not 0 <= value <= 10:
        raise BadInput(name, "must be between 0 and 10 seconds")
    return float(value)


def _str_field(message: Mapping[str, Any], name: str, max_length: int) -> str:
    if name not in message:
        raise BadInput(name, "is required")
    value = message[name]
    if not isinstance(value, str):
        raise BadInput(name, f"must be a string, not {type(value).__name__}")
    if len(value) > max_length:
        raise BadInput(name, f"must be at most {max_length} characters")
    return value


def parse_control(message: Any) -> ControlEvent:
    """Turn one decoded control message (``{"t": "tap", ...}``) into an event.

    Raises BadInput naming the offending field; never anything else.
    """
    if not isinstance(message, Mapping):
        raise BadInput("message", "must be a JSON object")
    kind = message.get("t", message.get("type"))
    if kind == "tap":
        return Tap(_int_field(message, "x"), _int_field(message, "y"))
    if kind == "swipe":
        return Swipe(
            _int_field(message, "start_x"),
            _int_field(message, "start_y"),
            _int_field(message, "end_x"),
            _int_field(message, "end_y"),
            _duration_field(message, "duration", 0.2),
        )
    if kind == "text":
        text = _str_field(message, "text", MAX_TEXT_LENGTH)
        if not text:
            raise BadInput("text", "must not be empty")
        return Text(text)
    if kind == "button":
        button = _str_field(message, "button", 32)
        if button not in BUTTONS:
            raise BadInput("button", f"must be one of {', '.join(BUTTONS)}")
        return Button(button)
    if kind == "key":
        key = _str_field(message, "key", 32)
        if not key:
            raise BadInput("key", "must not be empty")
        return Key(resolve_key(key), _duration_field(message, "duration", None))
    if kind is None:
        raise BadInput("t", "is required")
    raise BadInput("t", f"unknown control type {kind!r}")


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
    ) -> None:
        """Hand one encoded frame to every viewer. Never blocks."""


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
