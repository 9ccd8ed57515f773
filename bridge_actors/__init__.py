"""bridge_actors: watch and drive remote devices from a browser, at scale.

Every session, connection and device capture is an actor task in one Trio
nursery::

    async with bridge_actors.open_bridge(settings) as bridge:
        session = await bridge.create_session("iPhone 15 (simulated)", "18.0")
        async with bridge.watch(session.session_id) as viewer:
            async for frame in viewer:
                ...
"""

from ._bridge import Bridge, BridgeStatistics, Kpis
from ._controls import Button, ControlEvent, Key, Swipe, Tap, Text, parse_control
from ._device import (
    Configurations,
    DeviceBackend,
    DeviceInfo,
    Frame,
    FrameSink,
    LogLine,
    Screenshot,
)
from ._errors import (
    BadInput,
    BridgeError,
    CaptureFailed,
    CaptureStopped,
    DeviceError,
    InvalidSettings,
    RateLimited,
    Refused,
    ServerBusy,
    SessionFull,
    SessionNotFound,
    StateDirInUse,
    ViewerEvicted,
)
from ._open import open_bridge
from ._server.serve import serve
from ._settings import ENV_NAMES, PROFILES, Settings, load_settings
from .wire import BINARY_HEADER_SIZE, parse_binary_header

__version__ = "0.1.0"

__all__ = [
    "BINARY_HEADER_SIZE",
    "ENV_NAMES",
    "PROFILES",
    "BadInput",
    "Bridge",
    "BridgeError",
    "BridgeStatistics",
    "Button",
    "CaptureFailed",
    "CaptureStopped",
    "Configurations",
    "ControlEvent",
    "DeviceBackend",
    "DeviceError",
    "DeviceInfo",
    "Frame",
    "FrameSink",
    "InvalidSettings",
    "Key",
    "Kpis",
    "LogLine",
    "RateLimited",
    "Refused",
    "Screenshot",
    "ServerBusy",
    "SessionFull",
    "SessionNotFound",
    "Settings",
    "StateDirInUse",
    "Swipe",
    "Tap",
    "Text",
    "ViewerEvicted",
    "load_settings",
    "open_bridge",
    "parse_binary_header",
    "parse_control",
    "serve",
]
