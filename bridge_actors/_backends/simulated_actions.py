"""The device actions of the simulated device: what can be shown honestly, and 501 for the rest.

A simulated device has no apps, no photo library and no file system, so those
actions raise ActionUnsupported naming the backend. What it can show, it
shows on its test pattern: turning it turns the picture (and the frames' size
follows), an opened URL, a push notification and a set location appear as
text on screen, and each is a line in the device's log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from .._actions import DeviceProcess, InstalledApp, LogQuery, Orientation
from .._device import DeviceInfo, LogLine
from .._errors import ActionUnsupported

if TYPE_CHECKING:
    from .simulated import SimulatedDevice

__all__ = ["ROTATIONS", "SimulatedActions"]

ROTATIONS: Mapping[str, int] = {
    "portrait": 0,
    "landscape": 90,
    "landscapeleft": 90,
    "portraitupsidedown": 180,
    "landscaperight": 270,
}


class SimulatedActions:
    """``DeviceActions`` for the simulated device; ``SimulatedBackend`` provides its devices."""

    name: str
    unsupported_groups = frozenset({"apps", "logs", "media", "files"})

    def _device(self, udid: str) -> SimulatedDevice:
        raise NotImplementedError  # SimulatedBackend's

    def _unsupported(self, action: str) -> NoReturn:
        raise ActionUnsupported(self.name, action)

    async def _show(self, device: DeviceInfo, key: str, text: str | None) -> None:
        await trio.lowlevel.checkpoint()
        state = self._device(device.udid)
        if text is None:
            state.notices.pop(key, None)
        else:
            state.notices[key] = text
        state.last_action = f"{key}: {text}" if text is not None else f"{key} cleared"

    # -- shown on the test pattern --

    async def open_url(self, device: DeviceInfo, url: str) -> None:
        await self._show(device, "url", url)

    async def set_location(self, device: DeviceInfo, latitude: float, longitude: float) -> None:
        await self._show(device, "location", f"{latitude:.4f}, {longitude:.4f}")

    async def run_location_scenario(self, device: DeviceInfo, scenario: str) -> None:
        await self._show(device, "location", scenario)

    async def clear_location(self, device: DeviceInfo) -> None:
        await self._show(device, "location", None)

    async def set_orientation(self, device: DeviceInfo, orientation: Orientation) -> None:
        await self._show(device, "orientation", orientation)
        self._device(device.udid).rotation = ROTATIONS[orientation]

    async def push(self, device: DeviceInfo, bundle_id: str, payload: Mapping[str, Any]) -> None:
        alert = payload.get("aps", {}).get("alert")
        if isinstance(alert, Mapping):
            alert = alert.get("title") or alert.get("body")
        text = alert if isinstance(alert, str) else json.dumps(payload.get("aps"))
        await self._show(device, "push", f"{bundle_id}: {text}")

    # -- what a simulated device does not have --

    async def install_app(self, device: DeviceInfo, app: Path) -> None:
        self._unsupported("apps/install")

    async def list_apps(self, device: DeviceInfo) -> list[InstalledApp]:
        self._unsupported("apps/list")

    async def launch_app(self, device: DeviceInfo, bundle_id: str) -> None:
        self._unsupported("apps/launch")

    async def terminate_app(self, device: DeviceInfo, bundle_id: str) -> None:
        self._unsupported("apps/terminate")

    async def uninstall_app(self, device: DeviceInfo, bundle_id: str) -> None:
        self._unsupported("apps/uninstall")

    async def recent_logs(self, device: DeviceInfo, query: LogQuery) -> list[LogLine]:
        self._unsupported("logs (use the /ws/{id}/logs stream)")

    async def clear_logs(self, device: DeviceInfo) -> None:
        self._unsupported("logs/clear")

    async def processes(self, device: DeviceInfo) -> list[DeviceProcess]:
        self._unsupported("logs/processes")

    async def add_media(self, device: DeviceInfo, files: list[Path]) -> None:
        self._unsupported("media")

    async def data_directory(self, device: DeviceInfo) -> Path:
        self._unsupported("files")

    async def app_container(self, device: DeviceInfo, bundle_id: str) -> Path:
        self._unsupported("files/app-container")
