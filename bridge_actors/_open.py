"""``open_bridge``: the backends the settings name, then the bridge over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import trio

from ._backends import make_backends
from ._bridge import Bridge, run_bridge
from ._device import DeviceBackend
from ._services.statelock import hold_state_dir
from ._services.warden import MemorySample
from ._settings import Settings, load_settings
from ._video.mp4 import Mp4Writer
from ._video.pyav_encoder import pyav_encoder_factory


@asynccontextmanager
async def open_bridge(
    settings: Settings | None = None,
    *,
    backends: Mapping[str, DeviceBackend] | None = None,
    memory_probe: Callable[[], MemorySample] | None = None,
) -> AsyncIterator[Bridge]:
    """Run the bridge's actors for the duration of the block.

    ``backends`` defaults to the ones ``settings.backends`` names. Works inside a
    caller's own nursery. A cancellation from outside comes out as that
    cancellation, so the caller's ``move_on_after`` or nursery just ends. A failure
    comes out as one plain exception, never an exception group: a single error is
    re-raised as it is; several are wrapped in one BridgeError naming them.
    """
    settings = settings if settings is not None else load_settings()
    # Held first and for the bridge's whole life: restoring or saving sessions while
    # another server uses the same directory would overwrite its sessions.
    with hold_state_dir(settings.state_dir):
        if backends is None:
            backends = make_backends(settings, trio.CapacityLimiter(settings.encode_threads))
        encoder = pyav_encoder_factory(settings)
        async with run_bridge(settings, backends, memory_probe, encoder, Mp4Writer) as bridge:
            yield bridge


__all__ = ["open_bridge"]
