"""What the routes of one app share, kept in the app itself.

The blueprints are module-level and may serve several apps in one process (the
tests run many); each route finds its bridge through the app that runs it.
"""

from __future__ import annotations

import dataclasses
import functools

from prometheus_client import CollectorRegistry
from quart import current_app
from quart_trio import QuartTrio

from .._bridge import Bridge
from .._cluster import ClusterNode, GlobalWindow
from .._services.looplag import LoopLag
from .._services.ratelimit import SlidingWindow
from . import wsclose
from .abort import StuckSockets
from .authmetrics import AuthCollector
from .control_admission import admit_control
from .guard import Gatekeeper
from .metrics import LatencyCollector, WrittenAtOnceCollector, make_registry
from .probes import Probes
from .uploads import UploadSlots
from .ws import OpenSockets, SocketHandlers

__all__ = ["AppState", "app_state", "current_state"]

_EXTENSION = "bridge_actors"


@dataclasses.dataclass(eq=False)
class AppState:
    """What the routes of one app share: the bridge, its sockets, its counters."""

    bridge: Bridge
    sockets: OpenSockets = dataclasses.field(default_factory=OpenSockets)
    stuck: StuckSockets = dataclasses.field(default_factory=StuckSockets)
    creations_refused: int = 0
    bodies_too_large: int = 0
    cluster: ClusterNode | None = None  # with BRIDGE_REDIS_URL, once serve joined the cluster
    cluster_creations: GlobalWindow | None = None  # creations per client address, cluster-wide
    creations: SlidingWindow = dataclasses.field(init=False)
    uploads: UploadSlots = dataclasses.field(init=False)
    gate: Gatekeeper = dataclasses.field(init=False)
    handlers: SocketHandlers = dataclasses.field(init=False)
    probes: Probes = dataclasses.field(init=False)
    loop_lag: LoopLag = dataclasses.field(init=False)
    metrics: CollectorRegistry = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        per_minute = self.bridge.settings.create_sessions_per_minute
        self.creations = SlidingWindow(limit=per_minute, window=60.0)
        self.uploads = UploadSlots(self.bridge.settings.max_concurrent_uploads)
        self.gate = Gatekeeper(self.bridge.settings)
        self.handlers = SocketHandlers(self.bridge, self.sockets, self.stuck)
        self.handlers.admit_control = functools.partial(admit_control, self.gate)
        self.loop_lag = LoopLag(threshold=self.bridge.settings.saturated_loop_lag)
        self.probes = Probes(self)
        self.metrics = make_registry(self.bridge, self.extra_metrics, self.loop_lag)
        self.metrics.register(AuthCollector(self.gate))
        self.metrics.register(LatencyCollector(self.handlers.latencies))
        self.metrics.register(WrittenAtOnceCollector(self.handlers.written_at_once))

    def extra_metrics(self) -> dict[str, float]:
        return {
            "session_creations_refused": self.creations_refused,
            "stuck_connections_reset": self.stuck.reset,
            "bodies_too_large": self.bodies_too_large,
            "messages_too_big": wsclose.messages_refused_too_big(),
            "uploads_refused": self.uploads.refused,
            "uploads_active": self.uploads.active,
        }

    def install(self, app: QuartTrio) -> None:
        app.extensions[_EXTENSION] = self


def app_state(app: QuartTrio) -> AppState:
    return app.extensions[_EXTENSION]


def current_state() -> AppState:
    """The state of the app serving the current request or WebSocket."""
    return app_state(current_app)  # type: ignore[arg-type]
