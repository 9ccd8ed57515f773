"""What ``xcrun simctl`` and ``idb`` say, parsed: pure functions of their output.

The JSON of ``simctl list devicetypes|runtimes|devices -j``, ``idb describe --json``
and the lines of ``simctl spawn <udid> log stream --style compact`` become values
here, and names this bridge gives its simulators are made and recognised here.
Nothing in this module runs a tool or touches an event loop.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._device import Configurations, LogLine
from . import DEVICE_NAME_PREFIX

_OUR_NAME = re.compile(re.escape(DEVICE_NAME_PREFIX) + r"(?P<device_type>.+)-[0-9a-f]{8}")

# --- what simctl and idb say, parsed (pure) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceType:
    name: str
    identifier: str
    family: str  # "iPhone", "iPad", ...


@dataclass(frozen=True, slots=True)
class Runtime:
    name: str  # "iOS 17.2"
    version: str  # "17.2"
    identifier: str
    supported_device_types: frozenset[str] | None  # None when simctl does not say


@dataclass(frozen=True, slots=True)
class Simulator:
    udid: str
    name: str
    state: str  # "Shutdown", "Booting", "Booted", "Shutting Down"
    runtime: str
    device_type: str  # identifier; "" from simctl versions that do not list it


@dataclass(frozen=True, slots=True)
class ScreenSize:
    pixel_width: int
    pixel_height: int
    point_width: int
    point_height: int


# Used when idb cannot describe a device yet (still booting): the common sizes of each family.
FALLBACK_SCREENS: Mapping[str, ScreenSize] = {
    "iPad": ScreenSize(1640, 2360, 820, 1180),
    "iPhone": ScreenSize(1179, 2556, 393, 852),
}


def family_of(name: str, declared: Any) -> str:
    """ "iPhone", "iPad" (as declared, or from the name), or "" for other devices."""
    if isinstance(declared, str) and declared:
        return declared
    return "iPad" if name.startswith("iPad") else "iPhone" if name.startswith("iPhone") else ""


def parse_device_types(data: Any) -> tuple[DeviceType, ...]:
    """iPhones and iPads from ``simctl list devicetypes -j`` (watches and TVs have no touch UI)."""
    found = []
    for entry in _list_of_dicts(data, "devicetypes"):
        name, identifier = entry.get("name"), entry.get("identifier")
        if not isinstance(name, str) or not isinstance(identifier, str):
            continue
        family = family_of(name, entry.get("productFamily"))
        if family in ("iPhone", "iPad"):
            found.append(DeviceType(name, identifier, family))
    return tuple(found)


def parse_runtimes(data: Any) -> tuple[Runtime, ...]:
    """Available iOS runtimes from ``simctl list runtimes -j``."""
    found = []
    for entry in _list_of_dicts(data, "runtimes"):
        name, identifier = entry.get("name"), entry.get("identifier")
        if not isinstance(name, str) or not isinstance(identifier, str):
            continue
        if entry.get("isAvailable", True) is False:
            continue
        if entry.get("platform", "iOS") != "iOS" or not name.startswith("iOS "):
            continue
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            version = name.removeprefix("iOS ")
        supported = entry.get("supportedDeviceTypes")
        identifiers = (
            frozenset(
                t["identifier"] for t in supported if isinstance(t, dict) and "identifier" in t
            )
            if isinstance(supported, list)
            else None
        )
        found.append(Runtime(name, version, identifier, identifiers))
    return tuple(found)


def parse_simulators(data: Any) -> tuple[Simulator, ...]:
    """Every simulator from ``simctl list devices -j``."""
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        raise ValueError("no 'devices' object")
    found = []
    for runtime, entries in devices.items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            udid, name, state = entry.get("udid"), entry.get("name"), entry.get("state")
            if not all(isinstance(value, str) for value in (udid, name, state)):
                continue
            device_type = entry.get("deviceTypeIdentifier")
            found.append(
                Simulator(
                    udid, name, state, runtime, device_type if isinstance(device_type, str) else ""
                )
            )
    return tuple(found)


def parse_screen(data: Any) -> ScreenSize | None:
    """The screen size from ``idb describe --json``, or None if it does not say."""
    screen = data.get("screen_dimensions") if isinstance(data, dict) else None
    if not isinstance(screen, dict):
        return None
    keys = ("width", "height", "width_points", "height_points")
    values = [screen.get(key) for key in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    return ScreenSize(*values)


def _list_of_dicts(data: Any, key: str) -> list[dict[str, Any]]:
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"no {key!r} list")
    return [entry for entry in entries if isinstance(entry, dict)]


class Catalog:
    """The device types and iOS runtimes this Mac offers, and lookups by any of their names."""

    def __init__(self, device_types: Sequence[DeviceType], runtimes: Sequence[Runtime]) -> None:
        self.device_types = tuple(device_types)
        self.runtimes = tuple(runtimes)

    def configurations(self) -> Configurations:
        versions = dict.fromkeys(runtime.version for runtime in self.runtimes)
        return Configurations(tuple(t.name for t in self.device_types), tuple(versions))

    def device_type(self, text: str) -> DeviceType | None:
        for device_type in self.device_types:
            if text in (device_type.name, device_type.identifier):
                return device_type
        return None

    def runtime(self, text: str) -> Runtime | None:
        """By version ("17.2"), name ("iOS 17.2") or identifier; the newest build wins."""
        matches = [r for r in self.runtimes if text in (r.version, r.name, r.identifier)]
        return matches[-1] if matches else None

    def device_type_name(self, simulator: Simulator) -> str:
        for device_type in self.device_types:
            if device_type.identifier == simulator.device_type:
                return device_type.name
        match = _OUR_NAME.fullmatch(simulator.name)
        return match["device_type"] if match else simulator.device_type

    def runtime_version(self, identifier: str) -> str:
        for runtime in self.runtimes:
            if runtime.identifier == identifier:
                return runtime.version
        # com.apple.CoreSimulator.SimRuntime.iOS-17-2 -> 17.2
        tail = identifier.rpartition(".")[2]
        return tail.removeprefix("iOS-").replace("-", ".")


def is_ours(name: str) -> bool:
    """Whether a simulator name is one this bridge gave (prefix and random suffix)."""
    return _OUR_NAME.fullmatch(name) is not None


def new_device_name(device_type: str) -> str:
    return f"{DEVICE_NAME_PREFIX}{device_type}-{secrets.token_hex(4)}"


# --- device log (pure) -----------------------------------------------------------------------

_COMPACT_LINE = re.compile(
    r"(?P<timestamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4})?)\s+"
    r"(?P<type>[A-Za-z]{1,2})\s+"
    r"(?P<process>.+?)\[(?P<pid>\d+)(?::[0-9A-Fa-fx]+)?\]\s?"
    r"(?P<message>.*)"
)
# The compact type column: Default, Info, Debug, Error, Fault (and activity lines).
_LEVELS: Mapping[str, str] = {"Df": "info", "I": "info", "Db": "debug", "E": "error", "F": "error"}
_HEADERS = ("Filtering the log data", "Timestamp ")


def parse_log_line(line: str) -> LogLine | None:
    """One line of ``log stream --style compact``; None for headers and blank lines.

    A line that is not a log entry (the continuation of a multi-line message)
    comes back with only its message set.
    """
    line = line.rstrip("\r\n")
    if not line.strip() or line.startswith(_HEADERS):
        return None
    match = _COMPACT_LINE.fullmatch(line)
    if match is None:
        return LogLine("", "", "", "info", line, line)
    level = _LEVELS.get(match["type"], "info")
    return LogLine(
        match["timestamp"],
        match["process"].strip(),
        match["pid"],
        level,  # type: ignore[arg-type]
        match["message"],
        line,
    )


class LineSplitter:
    """Bytes in, complete text lines out; a line longer than ``max_line`` is cut there."""

    def __init__(self, max_line: int = 16384) -> None:
        self._buffer = bytearray()
        self._max_line = max_line
        self._discarding = False  # inside the overflow of an over-long line

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max_line:
                    if not self._discarding:
                        lines.append(self._decode(self._buffer[: self._max_line]))
                    self._discarding = True
                    self._buffer.clear()
                return lines
            if not self._discarding:
                lines.append(self._decode(self._buffer[: min(end, self._max_line)]))
            self._discarding = False
            del self._buffer[: end + 1]

    @staticmethod
    def _decode(raw: bytes | bytearray) -> str:
        return raw.decode("utf-8", "replace").rstrip("\r")
