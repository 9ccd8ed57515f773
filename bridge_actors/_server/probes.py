"""The health probes' answers, decided in one place for every path that serves them.

A probe can be answered three ways: by its Quart route, by :class:`ProbeFastPath`
in front of the app, and by the accept loop of :mod:`.worker` before a
connection even joins the scheduler's round. All three ask :class:`Probes`, so
an orchestrator gets the same answer whichever path its request took.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .json_codec import encode_json
from .views import connection_manager, resource_manager

if TYPE_CHECKING:
    from .state import AppState

__all__ = ["PROBE_PATHS", "SERVICE_NAME", "ProbeFastPath", "Probes"]

SERVICE_NAME = "bridge_actors"
PROBE_PATHS = frozenset({"/health", "/livez", "/readyz"})

Answer = tuple[dict[str, Any], int]


class Probes:
    """The answers (JSON body, status) of ``/health``, ``/livez`` and ``/readyz`` for one app.

    Every answer is computed without awaiting: a probe must stay quick exactly
    when the server is busiest.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._answers: dict[str, Callable[[], Answer]] = {
            "/health": lambda: (self.health(), 200),
            "/livez": lambda: (self.liveness(), 200),
            "/readyz": self.readiness,
        }
        assert self._answers.keys() == PROBE_PATHS

    def __contains__(self, path: object) -> bool:
        return path in self._answers

    def answer(self, path: str) -> Answer:
        """The answer to the probe at ``path`` (one of :data:`PROBE_PATHS`)."""
        return self._answers[path]()

    def health(self) -> dict[str, Any]:
        """Health, session count, connection and resource statistics, as ios-bridge has them.

        "degraded" (still 200) while memory is critical: the process is alive and
        answers, it only sheds load."""
        bridge = self.state.bridge
        critical = bridge.warden.statistics().tier == "CRITICAL"
        return {
            "status": "degraded" if critical else "healthy",
            "service": SERVICE_NAME,
            "total_sessions": len(bridge.list_sessions()),
            "connections": connection_manager(bridge.connection_statistics()),
            "resources": resource_manager(bridge.resource_statistics()),
        }

    def liveness(self) -> dict[str, Any]:
        return {"status": "ok"}

    def readiness(self) -> Answer:
        """Ready (200), or not (503) with every reason: starting, draining, memory critical."""
        bridge = self.state.bridge
        reasons = []
        if not bridge.started:
            reasons.append("starting")
        if bridge.draining or self.state.sockets.closing:
            reasons.append("draining")
        if not bridge.warden.ready:
            reasons.append("memory critical")
        if self.state.loop_lag.saturated:
            reasons.append("saturated")
        cluster = self.state.cluster
        if cluster is not None and not cluster.connected:
            reasons.append("redis unavailable")
        if reasons:
            return {"status": "not_ready", "reasons": reasons}, 503
        return {"status": "ready"}, 200


class ProbeFastPath:
    """ASGI in front of the app that answers the health probes itself.

    Under a large fan-out or a connection flood every checkpoint of a request
    waits a whole round of the scheduler, and a request through Quart takes many;
    the probes must stay quick exactly then, so they skip Quart's request
    machinery (the same :class:`Probes` as its routes, which serve the app on its own).
    """

    def __init__(self, app: Any, probes: Probes) -> None:
        self.app = app
        self.probes = probes

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path not in self.probes or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, status = self.probes.answer(path)
        payload = encode_json(body, compact=True).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": payload if scope["method"] == "GET" else b""}
        )
