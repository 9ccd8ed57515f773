"""Control events: what a client asks a device to do, and the one reading of its keys.

A control message (``{"t": "tap", "x": 10, "y": 20}``, docs/protocol.md) becomes one
of the events here through :func:`parse_control`; every backend receives these
values and nothing else, on every path (the control socket, the screenshot
socket, ``Bridge.control``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import BadInput

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


def parse_control(message: Any, max_text: int = MAX_TEXT_LENGTH) -> ControlEvent:
    """Turn one decoded control message (``{"t": "tap", ...}``) into an event.

    ``max_text`` caps the text a ``text`` message types. Raises BadInput naming the
    offending field; never anything else.
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
        text = _str_field(message, "text", max_text)
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
