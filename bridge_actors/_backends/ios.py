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
up to the frame rate. For H.264 viewers with no JPEG viewer beside them, the
encoder service reads ``idb video-stream --format h264`` instead (``stream_h264``)
and passes its access units on undecoded. Controls are ``idb ui`` commands; the device log is
``simctl spawn <udid> log stream --style compact``.

Every tool runs through ``_subprocess``: it never blocks the event loop, has a
timeout, and is terminated, killed and reaped when its scope ends, so a cancel,
a crash or shutdown leaves no process and no temporary file behind.
"""

from __future__ import annotations

import json
import logging
import math
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

from .._checks import fps_problem, require_fps
from .._controls import Button, ControlEvent, Key, Swipe, Tap, Text, key_code, resolve_key
from .._device import Configurations, DeviceInfo, FrameSink, LogLine, Screenshot
from .._errors import BadInput, DeviceError, InvalidSettings
from .._video.access_units import AccessUnitSplitter
from . import processes as _subprocess
from .ios_actions import IosActions
from .mjpeg import MjpegParser, jpeg_size
from .processes import (
    CommandFailed,
    CommandResult,
    CommandTimeout,
    ProcessCensus,
    SubprocessStatistics,
    ToolNotFound,
    open_child,
    run_command,
)
from .simctl import (
    FALLBACK_SCREENS,
    Catalog,
    LineSplitter,
    ScreenSize,
    Simulator,
    family_of,
    is_ours,
    new_device_name,
    parse_device_types,
    parse_log_line,
    parse_runtimes,
    parse_screen,
    parse_simulators,
)
from .sourcestats import SourceMeter, SourceStatistics

log = logging.getLogger("bridge_actors.ios")

BACKEND_NAME = "ios"
CREATE_BUDGET = 9.0  # seconds: POST /api/sessions/create must answer within 10
DESCRIBE_RESERVE = 1.5  # of the create budget (at most a quarter), kept for idb describe
CATALOG_TTL = 60.0  # device types and runtimes change only when Xcode does
DEVICE_LIST_TTL = 1.0  # many sessions asking "is it up?" at once share one simctl call
_READ_SIZE = 65536

BUTTON_NAMES: Mapping[str, str] = {
    "home": "HOME",
    "lock": "LOCK",
    "siri": "SIRI",
    "side-button": "SIDE_BUTTON",
    "apple-pay": "APPLE_PAY",
}


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


class IosBackend(IosActions):
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
        census: ProcessCensus | None = None,
    ) -> None:
        if (problem := fps_problem(fps)) is not None:
            raise InvalidSettings(f"ios fps {problem}")
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
        self.census = census if census is not None else ProcessCensus()

    def statistics(self) -> IosStatistics:
        now = trio.current_time()
        return IosStatistics(
            devices=tuple(meter.snapshot(now) for meter in self._meters.values()),
            controls_applied=self._controls_applied,
            controls_failed=self._controls_failed,
            stream_fallbacks=self._stream_fallbacks,
            commands=self.census.statistics(),
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
        return await run_command(
            argv, timeout=max(limit, 0.001), census=self.census, grace=self._kill_grace
        )

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
            family = kind.family if kind else family_of(device_type, None)
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
        require_fps(fps)
        fps = min(fps, self._fps)
        meter = self._meter(device.udid)
        meter.captures += 1
        try:
            await sink.wait_for_viewers()
            if not await self._stream_mjpeg(device, sink, fps, meter):
                self._stream_fallbacks += 1
                await self._poll_screenshots(device, sink, fps, meter)
        except DeviceError as exc:
            meter.last_error = str(exc)
            raise
        except Exception as exc:
            meter.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            meter.captures -= 1

    async def _stream_mjpeg(
        self, device: DeviceInfo, sink: FrameSink, fps: int, meter: SourceMeter
    ) -> bool:
        """Publish idb's MJPEG frames until idb stops; False if it never sent one."""
        udid = device.udid
        argv = [self._idb, "video-stream", "--udid", udid, "--format", "mjpeg", "--fps", str(fps)]
        meter.mode = "mjpeg"
        parser = MjpegParser()
        published = 0
        try:
            async with open_child(argv, census=self.census, grace=self._kill_grace) as child:
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
                            point_size=device.point_size_for(frame.width, frame.height),
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

    async def stream_h264(
        self, device: DeviceInfo, emit: Callable[[bytes], None], *, fps: int
    ) -> None:
        """Emit each access unit of ``idb video-stream --format h264`` until idb stops.

        Raises DeviceError when idb is missing, sends nothing within the command
        timeout, or ends; the caller supervises and restarts it. Nothing is decoded.
        """
        require_fps(fps)
        fps = min(fps, self._fps)
        udid = device.udid
        argv = [self._idb, "video-stream", "--udid", udid, "--format", "h264", "--fps", str(fps)]
        splitter = AccessUnitSplitter()
        emitted = 0
        try:
            async with open_child(argv, census=self.census, grace=self._kill_grace) as child:
                first_unit_due = trio.current_time() + self._command_timeout
                while True:
                    with trio.move_on_at(first_unit_due if emitted == 0 else math.inf) as wait:
                        data = await child.stdout.receive_some(_READ_SIZE)
                    if wait.cancelled_caught:
                        raise DeviceError(
                            f"idb sent no H.264 of {udid} in {self._command_timeout:g} s"
                        )
                    if not data:
                        break
                    for access_unit in splitter.feed(data):
                        emit(access_unit)
                        emitted += 1
                with trio.move_on_after(self._kill_grace):
                    await child.wait()
                status, stderr = child.returncode, child.stderr_tail()
        except ToolNotFound as exc:
            raise DeviceError(f"cannot stream H.264 of {udid}: {exc}") from None
        detail = f": {stderr}" if stderr else ""
        raise DeviceError(
            f"idb H.264 stream of {udid} stopped (status {status}) "
            f"after {emitted} access units{detail}"
        )

    async def _poll_screenshots(
        self, device: DeviceInfo, sink: FrameSink, fps: int, meter: SourceMeter
    ) -> None:
        udid = device.udid
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
                    point_size=device.point_size_for(width, height),
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
        return Screenshot.jpeg_of(device, jpeg, pixel_width=width, pixel_height=height)

    async def stream_logs(self, device: DeviceInfo, emit: Callable[[LogLine], None]) -> None:
        """Emit each device log line until cancelled; raise if ``log stream`` ends."""
        argv = [self._xcrun, "simctl", "spawn", device.udid, "log", "stream", "--style", "compact"]
        splitter = LineSplitter()
        async with open_child(argv, census=self.census, grace=self._kill_grace) as child:
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
