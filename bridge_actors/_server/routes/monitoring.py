"""What operators and the status page ask: the probes, ``/stats``, ``/metrics``, ``/status``.

The probes' answers are :class:`~..probes.Probes`' (the same the fast paths in
front of the app give); these routes serve them when a request reaches Quart.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response

from ..._errors import SessionNotFound
from .. import views
from ..authz import requires
from ..cluster import cluster_list_items, remote_entry
from ..guard import caller_sees
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import render_metrics
from ..state import current_state

__all__ = ["monitoring"]

monitoring = Blueprint("monitoring", __name__)


@monitoring.get("/health")
async def health() -> dict[str, Any]:
    """Health, session count, connection and resource statistics (as ios-bridge)."""
    return current_state().probes.health()


@monitoring.get("/livez")
async def livez() -> dict[str, Any]:
    """Liveness: the process answers."""
    return current_state().probes.liveness()


@monitoring.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: 503 while starting, draining or over the memory mark, with the reasons."""
    return current_state().probes.readiness()


@monitoring.get("/stats")
@requires("admin")
async def stats() -> dict[str, Any]:
    """Every statistic of the bridge: connections, rate limiter, warden, captures, KPIs."""
    state = current_state()
    server = {
        "websockets": state.sockets.statistics(),
        "session_creations_refused": state.creations_refused,
        "auth": state.gate.statistics(),
        "webrtc": await state.handlers.webrtc_viewers.statistics_document(),
        "written_at_once": views.plain(state.handlers.written_at_once),
    }
    document = views.stats_document(state.bridge.statistics(), server)
    document["instance"] = state.bridge.settings.instance_id
    document["event_loop_lag"] = views.plain(state.loop_lag.statistics())
    document["latency"] = views.plain(state.handlers.latencies.statistics())
    if state.cluster is not None:
        document["cluster"] = views.plain(state.cluster.statistics())
    return document


@monitoring.get("/metrics")
@requires("watch")
async def metrics() -> Response:
    """Prometheus metrics, in the text exposition format."""
    await trio.lowlevel.checkpoint()
    return Response(render_metrics(current_state().metrics), content_type=METRICS_CONTENT_TYPE)


@monitoring.get("/status")
@requires("watch")
async def status_all() -> dict[str, Any]:
    """Every session, as the ios-bridge status page lists them."""
    state = current_state()
    local = [views.session_list_item(s) for s in state.bridge.list_sessions()]
    everywhere = await cluster_list_items(state, local)
    sessions = [item for item in everywhere if caller_sees(item["session_id"])]
    return {
        "total_sessions": len(sessions),
        "sessions": sessions,
        "status": "healthy" if sessions else "no_sessions",
    }


@monitoring.get("/status/<session_id>")
@requires("watch")
async def status_one(session_id: str) -> dict[str, Any]:
    """One session and whether its device answers.

    An unknown session is a 200 whose body holds ``"error"`` and ``"status_code": 404``,
    as the compatible clients expect."""
    state = current_state()
    try:
        session = state.bridge.get_session(session_id)
    except SessionNotFound:
        entry = await remote_entry(state, session_id)
        if entry is not None:
            return {
                "session_id": session_id,
                "udid": entry.info.get("udid"),
                "simulator_accessible": entry.state not in ("lost", "Shutdown"),
                "session_info": dict(entry.info),
                "status": entry.info.get("status"),
                "instance": entry.owner,
            }
        # The compatible clients read this as a 200 with an error inside.
        return {"error": "Session not found", "status_code": 404}
    await session.refresh()  # this route is the client's "is it up now?": ask first
    return {
        "session_id": session.session_id,
        "udid": session.device.udid,
        "simulator_accessible": session.accessible,
        "session_info": views.session_info(session),
        "status": views.session_status(session),
    }
