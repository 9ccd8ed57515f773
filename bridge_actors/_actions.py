"""What a device can be asked to do beyond being watched and tapped: its actions.

Installing and launching apps, opening a URL, moving its location, rotating it,
sending it a push notification, reading its log on demand, adding photos and
moving files. A backend offers these by having the methods of
:class:`DeviceActions`; any method it cannot do honestly raises
:class:`~bridge_actors._errors.ActionUnsupported` naming itself, which the
server answers with 501. A backend without the protocol at all (a media
source) answers 501 to every action.

The values crossing this boundary are plain: paths of files already checked
and unpacked by the caller, numbers already range-checked, names already
validated. A backend only turns them into its tool's arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ._device import DeviceInfo, LogLine

ORIENTATIONS = ("portrait", "landscape", "portraitupsidedown", "landscaperight", "landscapeleft")
Orientation = Literal[
    "portrait", "landscape", "portraitupsidedown", "landscaperight", "landscapeleft"
]


@dataclass(frozen=True, slots=True)
class InstalledApp:
    bundle_id: str
    app_name: str
    app_type: str  # "User" or "System", as simctl says
    path: str
    version: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "bundle_id": self.bundle_id,
            "app_name": self.app_name,
            "app_type": self.app_type,
            "path": self.path,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class DeviceProcess:
    pid: str
    process: str
    cpu: str
    memory: str

    def to_dict(self) -> dict[str, str]:
        return {"pid": self.pid, "process": self.process, "cpu": self.cpu, "memory": self.memory}


@dataclass(frozen=True, slots=True)
class LogQuery:
    lines: int
    level: Literal["all", "error", "warning", "info", "debug"]
    process: str | None


@runtime_checkable
class DeviceActions(Protocol):
    """The actions of one kind of device; each may raise ActionUnsupported, BadInput or
    DeviceError. ``device`` is always one of this backend's own devices.

    ``unsupported_groups`` names the groups of actions ("apps", "media", ...: an
    action's first path segment) the backend cannot do at all, so that they are
    refused before an upload is read rather than after."""

    unsupported_groups: frozenset[str]

    async def install_app(self, device: DeviceInfo, app: Path) -> None: ...

    async def list_apps(self, device: DeviceInfo) -> list[InstalledApp]: ...

    async def launch_app(self, device: DeviceInfo, bundle_id: str) -> None: ...

    async def terminate_app(self, device: DeviceInfo, bundle_id: str) -> None: ...

    async def uninstall_app(self, device: DeviceInfo, bundle_id: str) -> None: ...

    async def open_url(self, device: DeviceInfo, url: str) -> None: ...

    async def set_location(self, device: DeviceInfo, latitude: float, longitude: float) -> None: ...

    async def run_location_scenario(self, device: DeviceInfo, scenario: str) -> None: ...

    async def clear_location(self, device: DeviceInfo) -> None: ...

    async def set_orientation(self, device: DeviceInfo, orientation: Orientation) -> None: ...

    async def push(
        self, device: DeviceInfo, bundle_id: str, payload: Mapping[str, Any]
    ) -> None: ...

    async def recent_logs(self, device: DeviceInfo, query: LogQuery) -> list[LogLine]: ...

    async def clear_logs(self, device: DeviceInfo) -> None: ...

    async def processes(self, device: DeviceInfo) -> list[DeviceProcess]: ...

    async def add_media(self, device: DeviceInfo, files: list[Path]) -> None: ...

    async def data_directory(self, device: DeviceInfo) -> Path: ...

    async def app_container(self, device: DeviceInfo, bundle_id: str) -> Path: ...
