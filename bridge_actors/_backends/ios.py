"""The ios backend: iOS simulators, driven through ``xcrun simctl`` and ``idb``.

Device types and iOS versions come from simctl's own lists. A session's
simulator is created with a name carrying the ``bridge-`` prefix and a random
suffix, and that name is the only thing that makes a simulator ours: delete and
orphan recovery never touch one without it, so a user's own simulators are
safe from the bridge.

Capture reads ``idb video-stream --format mjpeg`` as one long-lived process and
cuts its stdout into JPEG frames as they arrive; no frame is decoded or
re-encoded. When idb cannot stream (missing, or exiting before its first frame)
the capture polls ``simctl io screenshot`` instead, as fast as the device allows
up to the frame rate. Controls are ``idb ui`` commands; the device log is
``simctl spawn <udid> log stream --style compact``.

Every tool runs through ``_subprocess``: it never blocks the event loop, has a
timeout, and is terminated, killed and reaped when its scope ends, so a cancel,
a crash or shutdown leaves no process and no temporary file behind.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import trio

from .._controls import Button, ControlEvent, Key, Swipe, Tap, Text, key_code, resolve_key
from .._device import Configurations, DeviceInfo, FrameSink, LogLine, Screenshot
from .._errors import BadInput, DeviceError, InvalidSettings
from . import processes as _subprocess
from .mjpeg import MjpegParser, jpeg_size
from .processes import (
    CommandFailed,
    CommandResult,
    CommandTimeout,
    SubprocessStatistics,
    ToolNotFound,
    open_child,
    run_command,
)
from .sourcestats import SourceMeter, SourceStatistics

log = logging.getLogger("bridge_actors.ios")

BACKEND_NAME = "ios"
DEVICE_NAME_PREFIX = "bridge-"
MAX_FPS = 120
CREATE_BUDGET = 9.0  # seconds: POST /api/sessions/create must answer within 10
DESCRIBE_RESERVE = 1.5  # of the create budget (at most a quarter), kept for idb describe
CATALOG_TTL = 60.0  # device types and runtimes change only when Xcode does
DEVICE_LIST_TTL = 1.0  # many sessions asking "is it up?" at once share one simctl call
_READ_SIZE = 65536

_OUR_NAME = re.compile(re.escape(DEVICE_NAME_PREFIX) + r"(?P<device_type>.+)-[0-9a-f]{8}")

BUTTON_NAMES: Mapping[str, str] = {
    "home": "HOME",
    "lock": "LOCK",
    "siri": "SIRI",
    "side-button": "SIDE_BUTTON",
    "apple-pay": "APPLE_PAY",
}


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


def _family(name: str, declared: Any) -> str:
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
        family = _family(name, entry.get("productFamily"))
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


# --- controls (pure) -------------------------------------------------------------------------


def _clamp(value: int, size: int) -> int:
    """Keep a coordinate on screen: a negative number would read as an option to idb."""
    value = max(0, value)
    return min(value, size - 1) if size > 0 else value


def control_argv(
    idb: str, udid: str, event: ControlEvent, *, point_size: tuple[int, int] = (0, 0)
) -> list[str]:
    """The ``idb ui`` command for one control event (coordinates in points)."""
    width, height = point_size
    target = ["--udid", udid]
    if isinstance(event, Tap):
        x, y = _clamp(event.x, width), _clamp(event.y, height)
        return [idb, "ui", "tap", str(x), str(y), *target]
    if isinstance(event, Swipe):
        points = (
            _clamp(event.start_x, width),
            _clamp(event.start_y, height),
            _clamp(event.end_x, width),
            _clamp(event.end_y, height),
        )
        duration = ["--duration", f"{event.duration:g}"]
        return [idb, "ui", "swipe", *map(str, points), *duration, *target]
    if isinstance(event, Text):
        # After "--" a text starting with "-" is text, not an option.
        return [idb, "ui", "text", *target, "--", event.text]
    if isinstance(event, Button):
        name = BUTTON_NAMES.get(event.button)
        if name is None:
            raise BadInput("button", f"must be one of {', '.join(BUTTON_NAMES)}")
        return [idb, "ui", "button", name, *target]
    if isinstance(event, Key):
        code = key_code(event.key)  # the one key table, shared with every other path
        if code is None:
            # Capitals and shifted symbols need a modifier; idb types them as text.
            return [idb, "ui", "text", *target, "--", resolve_key(event.key)]
        duration = [] if event.duration is None else ["--duration", f"{event.duration:g}"]
        return [idb, "ui", "key", str(code), *duration, *target]
    raise BadInput("t", f"unsupported control event {type(event).__name__}")


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


# --- the backend -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IosStatistics:
    devices: tuple[SourceStatistics, ...]
    controls_applied: int
    controls_failed: int
    stream_fallbacks: int  # captures that fell back from idb streaming to screenshots
    commands: SubprocessStatistics


@asynccontextmanager
async def _temporary_directory() -> AsyncIterator[Path]:
    """A private directory for screenshot files, removed with everything in it on exit."""
    path = Path(await trio.to_thread.run_sync(tempfile.mkdtemp, "", "bridge-shots-"))
    try:
        yield path
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, path, True)


class IosBackend:
    """A ``DeviceBackend`` for the iOS simulators of this Mac."""

    name = BACKEND_NAME

    def __init__(
        self,
        *,
        encode_limiter: trio.CapacityLimiter,
        fps: int = 30,
        xcrun: str = "xcrun",
        idb: str = "idb",
        command_timeout: float = 10.0,
        kill_grace: float = _subprocess.DEFAULT_GRACE,
        create_budget: float = CREATE_BUDGET,
    ) -> None:
        if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
            raise InvalidSettings(f"ios fps must be an integer from 1 to {MAX_FPS}, not {fps!r}")
        for label, value in (
            ("command_timeout", command_timeout),
            ("kill_grace", kill_grace),
            ("create_budget", create_budget),
        ):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InvalidSettings(f"ios {label} must be a positive number of seconds")
        # Frames arrive as JPEG from idb or simctl and are passed on as they are; the
        # limiter is kept for the day a source needs re-encoding.
        self._encode_limiter = encode_limiter
        self._fps = fps
        self._xcrun = xcrun
        self._idb = idb
        self._command_timeout = float(command_timeout)
        self._kill_grace = float(kill_grace)
        self._create_budget = float(create_budget)
        self._catalog_cache: tuple[float, Catalog] | None = None
        self._catalog_lock = trio.Lock()
        self._simulators_cache: tuple[float, tuple[Simulator, ...]] | None = None
        self._simulators_lock = trio.Lock()
        self._meters: dict[str, SourceMeter] = {}
        self._controls_applied = 0
        self._controls_failed = 0
        self._stream_fallbacks = 0
        self._shot_numbers = count()

    def statistics(self) -> IosStatistics:
        now = trio.current_time()
        return IosStatistics(
            devices=tuple(meter.snapshot(now) for meter in self._meters.values()),
            controls_applied=self._controls_applied,
            controls_failed=self._controls_failed,
            stream_fallbacks=self._stream_fallbacks,
            commands=_subprocess.statistics(),
        )

    def _meter(self, udid: str) -> SourceMeter:
        meter = self._meters.get(udid)
        if meter is None:
            meter = self._meters[udid] = SourceMeter(udid, f"simulator {udid}")
        return meter

    # -- running the tools --

    async def _run(self, argv: Sequence[str], *, until: float = math.inf) -> CommandResult:
        """Run one command with the command timeout, cut short to end by ``until`` (trio time)."""
        limit = min(self._command_timeout, until - trio.current_time())
        return await run_command(argv, timeout=max(limit, 0.001), grace=self._kill_grace)

    async def _simctl_json(self, *args: str, until: float = math.inf) -> Any:
        result = await self._run([self._xcrun, "simctl", *args, "-j"], until=until)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise DeviceError(f"`xcrun simctl {' '.join(args)} -j` did not print JSON") from None

    async def check(self) -> None:
        """Fail start-up with a clear message when the tools this backend needs are missing."""
        hints = {
            self._xcrun: "install Xcode; the ios backend runs on macOS only",
            self._idb: "install idb: `brew install idb-companion` and `pip install fb-idb`",
        }
        for tool, hint in hints.items():
            if await trio.to_thread.run_sync(shutil.which, tool) is None:
                raise DeviceError(f"ios backend: {tool!r} not found on PATH ({hint})")
        try:
            await self._catalog()
        except DeviceError as exc:
            raise DeviceError(f"ios backend: `xcrun simctl` does not work: {exc}") from exc

    async def _catalog(self, *, until: float = math.inf) -> Catalog:
        async with self._catalog_lock:
            cached = self._catalog_cache
            if cached is not None and trio.current_time() - cached[0] < CATALOG_TTL:
                return cached[1]
            types = await self._simctl_json("list", "devicetypes", until=until)
            runtimes = await self._simctl_json("list", "runtimes", until=until)
            try:
                catalog = Catalog(parse_device_types(types), parse_runtimes(runtimes))
            except ValueError as exc:
                raise DeviceError(f"unexpected output from `xcrun simctl list`: {exc}") from None
            self._catalog_cache = (trio.current_time(), catalog)
            return catalog

    async def _simulators(self, *, fresh: bool = False) -> tuple[Simulator, ...]:
        asked_at = trio.current_time()
        async with self._simulators_lock:
            cached = self._simulators_cache
            if cached is not None:
                listed_at, simulators = cached
                # Listed after we asked counts as fresh: a concurrent caller just did it.
                if listed_at >= asked_at or (
                    not fresh and trio.current_time() - listed_at < DEVICE_LIST_TTL
                ):
                    return simulators
            data = await self._simctl_json("list", "devices")
            try:
                simulators = parse_simulators(data)
            except ValueError as exc:
                raise DeviceError(
                    f"unexpected output from `xcrun simctl list devices`: {exc}"
                ) from None
            self._simulators_cache = (trio.current_time(), simulators)
            return simulators

    async def _simulator(self, udid: str, *, fresh: bool = False) -> Simulator | None:
        for simulator in await self._simulators(fresh=fresh):
            if simulator.udid == udid:
                return simulator
        return None

    def _forget_simulators(self) -> None:
        self._simulators_cache = None

    async def _screen(self, udid: str, family: str, *, until: float) -> ScreenSize:
        """The screen size idb reports, or the family's usual one if idb cannot say in time."""
        if until > trio.current_time():
            try:
                result = await self._run(
                    [self._idb, "describe", "--udid", udid, "--json"], until=until
                )
                screen = parse_screen(json.loads(result.stdout))
                if screen is not None:
                    return screen
            except (DeviceError, ValueError) as exc:
                log.info("screen size of %s unknown yet (%s); assuming a %s's", udid, exc, family)
        else:
            await trio.lowlevel.checkpoint()
        return FALLBACK_SCREENS.get(family, FALLBACK_SCREENS["iPhone"])

    async def _boot(self, udid: str, *, until: float) -> None:
        """Ask simctl to boot; past ``until`` stop waiting (the simulator keeps booting)."""
        remaining = until - trio.current_time()
        if remaining <= 0:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._run([self._xcrun, "simctl", "boot", udid], until=until)
        except CommandTimeout:
            log.info("simulator %s still booting after %.1f s; not waiting for it", udid, remaining)
        except CommandFailed as exc:
            if "current state: Booted" not in exc.stderr:
                raise DeviceError(f"cannot boot simulator {udid}: {exc.stderr or exc}") from exc
        finally:
            self._forget_simulators()

    async def _shutdown_and_delete(self, udid: str) -> None:
        try:
            await self._run([self._xcrun, "simctl", "shutdown", udid])
        except CommandFailed as exc:
            log.debug("shutdown of %s: %s", udid, exc)  # usually: it was not booted
        try:
            await self._run([self._xcrun, "simctl", "delete", udid])
        finally:
            self._forget_simulators()

    # -- lifecycle --

    async def configurations(self) -> Configurations:
        return (await self._catalog()).configurations()

    async def create_device(self, device_type: str, ios_version: str) -> DeviceInfo:
        """Create and boot a simulator; return within the create budget even if still booting."""
        deadline = trio.current_time() + self._create_budget
        catalog = await self._catalog(until=deadline)
        kind = catalog.device_type(device_type)
        if kind is None:
            known = ", ".join(t.name for t in catalog.device_types) or "none installed"
            raise BadInput("device_type", f"unknown device type {device_type!r}; known: {known}")
        runtime = catalog.runtime(ios_version)
        if runtime is None:
            known = ", ".join(catalog.configurations().ios_versions) or "none installed"
            raise BadInput("ios_version", f"unknown iOS version {ios_version!r}; known: {known}")
        supported = runtime.supported_device_types
        if supported is not None and kind.identifier not in supported:
            raise BadInput("device_type", f"{kind.name} cannot run {runtime.name}")
        name = new_device_name(kind.name)
        result = await self._run(
            [self._xcrun, "simctl", "create", name, kind.identifier, runtime.identifier],
            until=deadline,
        )
        self._forget_simulators()
        udid = result.stdout.decode("utf-8", "replace").strip()
        try:
            udid = str(uuid.UUID(udid)).upper()
        except ValueError:
            raise DeviceError(f"`xcrun simctl create` printed {udid[:80]!r}, not a UDID") from None
        try:
            reserve = min(DESCRIBE_RESERVE, self._create_budget / 4)
            await self._boot(udid, until=deadline - reserve)
            screen = await self._screen(udid, kind.family, until=deadline)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self._command_timeout):
                await self._shutdown_and_delete(udid)
            raise
        return DeviceInfo(
            udid=udid,
            name=name,
            device_type=kind.name,
            ios_version=runtime.version,
            point_width=screen.point_width,
            point_height=screen.point_height,
            pixel_width=screen.pixel_width,
            pixel_height=screen.pixel_height,
            backend=BACKEND_NAME,
        )

    async def device_state(self, device: DeviceInfo) -> str:
        """What simctl says: "Booting", "Booted", "Shutdown", ...; "Missing" if it is gone."""
        simulator = await self._simulator(device.udid)
        return "Missing" if simulator is None else simulator.state

    async def delete_device(self, device: DeviceInfo) -> None:
        """Shut down and delete the simulator, if it is one of ours (its name says so now)."""
        simulator = await self._simulator(device.udid, fresh=True)
        self._meters.pop(device.udid, None)
        if simulator is None:
            return
        if not is_ours(simulator.name):
            log.warning(
                "not deleting simulator %s (%r): this bridge did not create it",
                device.udid,
                simulator.name,
            )
            return
        await self._shutdown_and_delete(device.udid)

    async def restore_device(self, device: DeviceInfo) -> bool:
        simulator = await self._simulator(device.udid, fresh=True)
        if simulator is None or not is_ours(simulator.name):
            return False
        if simulator.state == "Shutdown":
            await self._boot(device.udid, until=trio.current_time() + self._command_timeout)
        return True

    async def list_orphans(self, known_udids: frozenset[str]) -> list[DeviceInfo]:
        """Booted simulators named by this bridge that no session owns; never a user's own."""
        simulators = await self._simulators(fresh=True)
        catalog = await self._catalog()
        orphans = []
        for simulator in simulators:
            if simulator.state != "Booted" or simulator.udid in known_udids:
                continue
            if not is_ours(simulator.name):
                continue
            device_type = catalog.device_type_name(simulator)
            kind = catalog.device_type(device_type)
            family = kind.family if kind else _family(device_type, None)
            screen = await self._screen(
                simulator.udid, family, until=trio.current_time() + self._command_timeout
            )
            orphans.append(
                DeviceInfo(
                    udid=simulator.udid,
                    name=simulator.name,
                    device_type=device_type,
                    ios_version=catalog.runtime_version(simulator.runtime),
                    point_width=screen.point_width,
                    point_height=screen.point_height,
                    pixel_width=screen.pixel_width,
                    pixel_height=screen.pixel_height,
                    backend=BACKEND_NAME,
                )
            )
        return orphans

    async def is_accessible(self, device: DeviceInfo) -> bool:
        try:
            simulator = await self._simulator(device.udid)
        except DeviceError:
            return False
        return simulator is not None and simulator.state == "Booted"

    # -- driving --

    async def apply_control(self, device: DeviceInfo, event: ControlEvent, input_seq: int) -> None:
        argv = control_argv(
            self._idb, device.udid, event, point_size=(device.point_width, device.point_height)
        )
        try:
            await self._run(argv)
        except DeviceError:
            self._controls_failed += 1
            raise
        self._controls_applied += 1

    # -- watching --

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None:
        """Stream from idb; if idb cannot stream, poll screenshots. Raises when the source dies."""
        if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
            raise BadInput("fps", f"must be a positive integer, not {fps!r}")
        fps = min(fps, self._fps)
        meter = self._meter(device.udid)
        meter.captures += 1
        try:
            await sink.wait_for_viewers()
            if not await self._stream_mjpeg(device.udid, sink, fps, meter):
                self._stream_fallbacks += 1
                await self._poll_screenshots(device.udid, sink, fps, meter)
        except DeviceError as exc:
            meter.last_error = str(exc)
            raise
        except Exception as exc:
            meter.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            meter.captures -= 1

    async def _stream_mjpeg(self, udid: str, sink: FrameSink, fps: int, meter: SourceMeter) -> bool:
        """Publish idb's MJPEG frames until idb stops; False if it never sent one."""
        argv = [self._idb, "video-stream", "--udid", udid, "--format", "mjpeg", "--fps", str(fps)]
        meter.mode = "mjpeg"
        parser = MjpegParser()
        published = 0
        try:
            async with open_child(argv, grace=self._kill_grace) as child:
                first_frame_due = trio.current_time() + self._command_timeout
                while True:
                    with trio.move_on_at(first_frame_due if published == 0 else math.inf) as wait:
                        data = await child.stdout.receive_some(_READ_SIZE)
                    if wait.cancelled_caught:
                        log.warning("idb sent no frame of %s in %g s", udid, self._command_timeout)
                        return False
                    if not data:
                        break
                    for frame in parser.feed(data):
                        sink.publish(
                            frame.data,
                            pixel_width=frame.width,
                            pixel_height=frame.height,
                            input_seq=sink.applied_input_seq,
                        )
                        meter.frame(trio.current_time())
                        published += 1
                with trio.move_on_after(self._kill_grace):
                    await child.wait()
                status, stderr = child.returncode, child.stderr_tail()
        except ToolNotFound as exc:
            log.warning("cannot stream %s (%s); polling screenshots", udid, exc)
            return False
        parser.close()
        if published == 0:
            log.warning(
                "idb video-stream of %s ended before its first frame (status %s: %s); "
                "polling screenshots",
                udid,
                status,
                stderr,
            )
            return False
        detail = f": {stderr}" if stderr else ""
        raise DeviceError(
            f"idb video-stream of {udid} stopped (status {status}) after {published} frames{detail}"
        )

    async def _poll_screenshots(
        self, udid: str, sink: FrameSink, fps: int, meter: SourceMeter
    ) -> None:
        meter.mode = "screenshots"
        period = 1 / fps
        async with _temporary_directory() as directory:
            while True:
                await sink.wait_for_viewers()
                started = trio.current_time()
                jpeg = await self._screenshot_jpeg(udid, directory)
                width, height = self._jpeg_size(udid, jpeg)
                sink.publish(
                    jpeg,
                    pixel_width=width,
                    pixel_height=height,
                    input_seq=sink.applied_input_seq,
                )
                meter.frame(trio.current_time())
                await trio.sleep_until(started + period)

    async def _screenshot_jpeg(self, udid: str, directory: Path) -> bytes:
        path = trio.Path(directory / f"{next(self._shot_numbers)}.jpg")
        try:
            await self._run(
                [self._xcrun, "simctl", "io", udid, "screenshot", "--type=jpeg", str(path)]
            )
            return await path.read_bytes()
        except FileNotFoundError:
            raise DeviceError(f"`simctl io {udid} screenshot` wrote no file") from None
        finally:
            with trio.CancelScope(shield=True):
                await path.unlink(missing_ok=True)

    @staticmethod
    def _jpeg_size(udid: str, jpeg: bytes) -> tuple[int, int]:
        try:
            return jpeg_size(jpeg)
        except ValueError as exc:
            raise DeviceError(f"screenshot of {udid} is not a usable JPEG: {exc}") from None

    async def screenshot(self, device: DeviceInfo) -> Screenshot:
        async with _temporary_directory() as directory:
            jpeg = await self._screenshot_jpeg(device.udid, directory)
        width, height = self._jpeg_size(device.udid, jpeg)
        return Screenshot(
            data=jpeg,
            format="jpeg",
            pixel_width=width,
            pixel_height=height,
            point_width=device.point_width,
            point_height=device.point_height,
        )

    async def stream_logs(self, device: DeviceInfo, emit: Callable[[LogLine], None]) -> None:
        """Emit each device log line until cancelled; raise if ``log stream`` ends."""
        argv = [self._xcrun, "simctl", "spawn", device.udid, "log", "stream", "--style", "compact"]
        splitter = LineSplitter()
        async with open_child(argv, grace=self._kill_grace) as child:
            while data := await child.stdout.receive_some(_READ_SIZE):
                for line in splitter.feed(data):
                    entry = parse_log_line(line)
                    if entry is not None:
                        emit(entry)
            with trio.move_on_after(self._kill_grace):
                await child.wait()
            status, stderr = child.returncode, child.stderr_tail()
        detail = f": {stderr}" if stderr else ""
        raise DeviceError(f"log stream of {device.udid} ended (status {status}){detail}")
