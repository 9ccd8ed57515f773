"""The device actions of the ios backend: each one ``xcrun simctl`` command.

Mixed into :class:`~.ios.IosBackend`, whose runner (``_run``: an argument list,
never a shell, the command timeout, the child reaped on cancel) runs every
command here. A payload for ``simctl push`` goes through a file in a private
temporary directory that is removed when the command ends.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from .._actions import DeviceProcess, InstalledApp, LogQuery, Orientation
from .._device import DeviceInfo, LogLine
from .._errors import BadInput, DeviceError
from .processes import CommandResult, ProcessCensus, run_command
from .simctl import parse_log_line
from .simctl_actions import parse_listapps, parse_processes

__all__ = ["IosActions", "log_show_argv"]

INSTALL_TIMEOUT = 300.0  # seconds: a large app takes a while to copy into the simulator
_LOG_SHOW_WINDOW = "10m"
_LEVELS = {"error": {"error"}, "warning": {"error"}, "info": {"info", "error"}, "debug": None}


def log_show_argv(xcrun: str, udid: str, query: LogQuery) -> list[str]:
    """``simctl spawn <udid> log show`` over the last minutes, filtered by process name."""
    argv = [xcrun, "simctl", "spawn", udid, "log", "show", "--last", _LOG_SHOW_WINDOW]
    argv += ["--style", "compact", "--info"]
    if query.level in ("debug", "all"):
        argv.append("--debug")
    if query.process:
        argv += ["--predicate", f'process == "{query.process}"']
    return argv


class IosActions:
    """``DeviceActions`` for iOS simulators; ``IosBackend`` provides the runner."""

    unsupported_groups: frozenset[str] = frozenset()
    _xcrun: str
    _command_timeout: float
    _kill_grace: float
    census: ProcessCensus

    async def _run(self, argv: Sequence[str], *, until: float = math.inf) -> CommandResult:
        raise NotImplementedError  # IosBackend's

    async def _simctl(self, *args: str, limit: float | None = None) -> CommandResult:
        """``xcrun simctl ARGS``, within the command timeout unless ``limit`` (seconds) is given."""
        argv = [self._xcrun, "simctl", *args]
        if limit is None:
            return await self._run(argv)
        return await run_command(argv, timeout=limit, census=self.census, grace=self._kill_grace)

    # -- apps --

    async def install_app(self, device: DeviceInfo, app: Path) -> None:
        await self._simctl("install", device.udid, str(app), limit=INSTALL_TIMEOUT)

    async def list_apps(self, device: DeviceInfo) -> list[InstalledApp]:
        result = await self._simctl("listapps", device.udid)
        try:
            return parse_listapps(result.stdout)
        except ValueError as exc:
            raise DeviceError(f"unexpected output from `simctl listapps`: {exc}") from None

    async def launch_app(self, device: DeviceInfo, bundle_id: str) -> None:
        await self._simctl("launch", device.udid, bundle_id)

    async def terminate_app(self, device: DeviceInfo, bundle_id: str) -> None:
        await self._simctl("terminate", device.udid, bundle_id)

    async def uninstall_app(self, device: DeviceInfo, bundle_id: str) -> None:
        await self._simctl("uninstall", device.udid, bundle_id)

    # -- url, location, orientation, push --

    async def open_url(self, device: DeviceInfo, url: str) -> None:
        await self._simctl("openurl", device.udid, url)

    async def set_location(self, device: DeviceInfo, latitude: float, longitude: float) -> None:
        await self._simctl("location", device.udid, "set", f"{latitude},{longitude}")

    async def run_location_scenario(self, device: DeviceInfo, scenario: str) -> None:
        await self._simctl("location", device.udid, "run", scenario)

    async def clear_location(self, device: DeviceInfo) -> None:
        await self._simctl("location", device.udid, "clear")

    async def set_orientation(self, device: DeviceInfo, orientation: Orientation) -> None:
        await self._simctl("device", device.udid, "orientation", orientation)

    async def push(self, device: DeviceInfo, bundle_id: str, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        directory = Path(await trio.to_thread.run_sync(tempfile.mkdtemp, "", "bridge-push-"))
        try:
            path = trio.Path(directory / "payload.apns")
            await path.write_bytes(data)
            await self._simctl("push", device.udid, bundle_id, str(path))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, directory, True)

    # -- logs --

    async def recent_logs(self, device: DeviceInfo, query: LogQuery) -> list[LogLine]:
        result = await self._run(log_show_argv(self._xcrun, device.udid, query))
        wanted = _LEVELS.get(query.level)
        lines = []
        for text in result.stdout.decode("utf-8", "replace").splitlines():
            entry = parse_log_line(text)
            if entry is None or (wanted is not None and entry.level not in wanted):
                continue
            lines.append(entry)
        return lines[-query.lines :]

    async def clear_logs(self, device: DeviceInfo) -> None:
        await self._simctl("spawn", device.udid, "log", "erase")

    async def processes(self, device: DeviceInfo) -> list[DeviceProcess]:
        result = await self._simctl("spawn", device.udid, "ps", "aux")
        return parse_processes(result.stdout.decode("utf-8", "replace"))

    # -- media and files --

    async def add_media(self, device: DeviceInfo, files: list[Path]) -> None:
        await self._simctl("addmedia", device.udid, *map(str, files), limit=INSTALL_TIMEOUT)

    async def data_directory(self, device: DeviceInfo) -> Path:
        result = await self._simctl("list", "devices", "-j")
        try:
            listing = json.loads(result.stdout)
            for entries in listing["devices"].values():
                for entry in entries:
                    if entry.get("udid") == device.udid and isinstance(entry.get("dataPath"), str):
                        return Path(entry["dataPath"])
        except (ValueError, KeyError, AttributeError, TypeError):
            raise DeviceError("unexpected output from `simctl list devices -j`") from None
        raise DeviceError(f"simctl does not say where the data of {device.udid} is")

    async def app_container(self, device: DeviceInfo, bundle_id: str) -> Path:
        result = await self._simctl("get_app_container", device.udid, bundle_id, "data")
        text = result.stdout.decode("utf-8", "replace").strip()
        if not text.startswith("/"):
            raise BadInput("bundle_id", f"no container for {bundle_id!r}")
        return Path(text)
