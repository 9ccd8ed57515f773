"""Build the device backends a server was configured with."""

from __future__ import annotations

import trio

from .._device import DeviceBackend
from .._settings import Settings

DEVICE_NAME_PREFIX = "bridge-"  # every backend names the devices it makes with it


def make_backends(
    settings: Settings, encode_limiter: trio.CapacityLimiter
) -> dict[str, DeviceBackend]:
    backends: dict[str, DeviceBackend] = {}
    for name in settings.backends:
        if name == "simulated":
            from .simulated import SimulatedBackend

            backends[name] = SimulatedBackend(
                encode_limiter=encode_limiter, jpeg_quality=settings.jpeg_quality
            )
        elif name == "media":
            from .media import MediaBackend

            backends[name] = MediaBackend(
                sources=settings.media_sources,
                encode_limiter=encode_limiter,
                jpeg_quality=settings.jpeg_quality,
            )
        elif name == "ios":
            from .ios import IosBackend

            backends[name] = IosBackend(encode_limiter=encode_limiter, fps=settings.fps)
        else:
            raise ValueError(f"unknown backend {name!r}")
    return backends
