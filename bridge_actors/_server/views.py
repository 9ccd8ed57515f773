"""The ios-bridge JSON shapes, built from the plain values the services report.

The compatible clients read these bodies key by key, so their keys, their order
and their placeholders (``pid``, ``installed_apps``) are
part of the API (docs/protocol.md). The services know nothing of them: a session
reports what it is, the bridge reports its statistics, and the functions here
turn those into what an ios-bridge client expects.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Mapping
from typing import Any

from .._bridge import BridgeStatistics, ConnectionStatistics, ResourceStatistics
from .._device import DeviceInfo
from .._services.capture import CaptureStatistics
from .._services.sessions import HeldSession, Session
from .._services.warden import MemorySample

__all__ = [
    "connection_manager",
    "held_session_list_item",
    "plain",
    "resource_manager",
    "session_info",
    "session_list_item",
    "session_status",
    "stats_document",
]


def session_status(session: Session) -> str:
    """What the status page says of a session: its device's last health check."""
    return "healthy" if session.accessible else "offline"


def _uptime(session: Session) -> float:
    return max(0.0, time.time() - session.created_at)


def _identity(session_id: str, device: DeviceInfo) -> dict[str, Any]:
    """The keys every session shape opens with, in the order clients read them."""
    return {
        "session_id": session_id,
        "device_type": device.device_type,
        "ios_version": device.ios_version,
        "udid": device.udid,
    }


def _list_item(
    session_id: str,
    device: DeviceInfo,
    *,
    created_at: float,
    uptime: float,
    state: str,
    status: str,
) -> dict[str, Any]:
    return {
        **_identity(session_id, device),
        "created_at": created_at,
        "uptime": uptime,
        "installed_apps_count": 0,
        "state": state,
        "pid": None,
        "status": status,
    }


def session_list_item(session: Session) -> dict[str, Any]:
    """A session as the listings show it (``/api/sessions/``, ``/status``)."""
    return _list_item(
        session.session_id,
        session.device,
        created_at=session.created_at,
        uptime=_uptime(session),
        state=session.state,
        status=session_status(session),
    )


def held_session_list_item(held: HeldSession) -> dict[str, Any]:
    """A held session in the shape of :func:`session_list_item`, so a client lists it like
    any session; its ``state`` says why it is not running."""
    return _list_item(
        held.session_id,
        held.device,
        created_at=held.created_at,
        uptime=0.0,
        state=held.state,
        status="offline",
    )


def session_info(session: Session) -> dict[str, Any]:
    """One session in full, with its device's size in points and the stream's in pixels."""
    device = session.device
    return {
        **_identity(session.session_id, device),
        "device_name": device.name,
        "created_at": session.created_at,
        "uptime": _uptime(session),
        "pid": None,
        "state": session.state,
        "device_width": device.point_width,
        "device_height": device.point_height,
        "stream_width": device.pixel_width,
        "stream_height": device.pixel_height,
        "installed_apps": {},
        "status": session_status(session),
    }


def connection_manager(stats: ConnectionStatistics) -> dict[str, Any]:
    """ios-bridge's ``connection_manager`` statistics: the connections of every session."""
    sessions = {
        session_id: {
            "total_connections": conns.total,
            "active_connections": sum(conns.open_by_kind.values()),
            "connection_types": dict(conns.open_by_kind),
            "first_connection": conns.first,
            "last_connection": conns.last,
        }
        for session_id, conns in stats.sessions.items()
    }
    return {
        "total_sessions": len(sessions),
        "total_connections": sum(s["active_connections"] for s in sessions.values()),
        "sessions": sessions,
        "rate_limit_buckets": stats.rate_limit_buckets,
    }


def resource_manager(stats: ResourceStatistics) -> dict[str, Any]:
    """ios-bridge's ``resource_manager`` statistics: capture services, clients, memory."""
    pool, warden = stats.pool, stats.warden
    return {
        "video_services": pool.services,
        "webrtc_services": stats.webrtc_peers,
        "total_clients": pool.viewers,
        "metrics": {
            "services_created": pool.services_created,
            "services_destroyed": pool.services_destroyed,
            "memory_cleanups": warden.memory_cleanups,
            "client_connections": stats.client_connections,
            "client_disconnections": stats.client_disconnections,
        },
        "memory": _memory(warden.last, warden.limit_mb),
    }


def _memory(last: MemorySample | None, limit_mb: float) -> dict[str, Any]:
    """The last memory sample, rounded as ios-bridge reports it (None before the first)."""
    return {
        "rss_mb": round(last.rss_mb, 2) if last else None,
        "vms_mb": round(last.vms_mb, 2) if last else None,
        "percent": round(last.percent, 3) if last else None,
        "limit_mb": limit_mb,
        "available_mb": round(last.available_mb, 1) if last else None,
    }


def stats_document(snapshot: BridgeStatistics, server: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/stats`` body: every statistic of the bridge, and ``server``'s own."""
    return {
        "success": True,
        "timestamp": snapshot.timestamp,
        "connection_manager": connection_manager(snapshot.connection_manager),
        "resource_manager": resource_manager(snapshot.resource_manager),
        "rate_limiter": plain(snapshot.rate_limiter),
        "warden": plain(snapshot.warden),
        "allocator": plain(snapshot.allocator),
        "supervisor": {c.udid: plain(c.supervisor) for c in snapshot.captures},
        "captures": {c.udid: _capture(c) for c in snapshot.captures},
        "h264": {e.udid: plain(e) for e in snapshot.h264},
        "recordings": {
            **(plain(snapshot.recordings) if snapshot.recordings else {}),
            "sessions": {r.session_id: plain(r) for r in snapshot.per_recording},
        },
        "pool": plain(snapshot.pool),
        "sessions": plain(snapshot.sessions),
        "store": plain(snapshot.store),
        "kpis": plain(snapshot.kpis),
        "actions": plain(snapshot.actions),
        "server": {"ready": snapshot.ready, **server},
    }


def plain(value: Any) -> Any:
    """A statistics value as JSON-safe data: dataclasses, mappings, tuples, enums, paths."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _capture(capture: CaptureStatistics) -> dict[str, Any]:
    view = plain(capture)
    view["dropped_per_viewer"] = {
        str(viewer.key): viewer.dropped for viewer in capture.fanout.per_viewer
    }
    return view
