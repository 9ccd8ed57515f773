"""The server's side of the cluster: what it publishes about its sessions, and how the
session routes merge the directory with what this instance holds.

Only used with ``BRIDGE_REDIS_URL``; :func:`start_cluster_node` returns None otherwise.
"""

from __future__ import annotations

from typing import Any

import trio

from .._bridge import Bridge
from .._cluster import (
    ClusterAdmission,
    ClusterNode,
    DirectoryEntry,
    GlobalWindow,
    InstanceEntry,
    RedisUnavailable,
)
from . import views
from .metrics import AdmissionCollector
from .shared_admission import SharedAdmission
from .state import AppState

__all__ = ["cluster_list_items", "local_entries", "place_session", "start_cluster_node"]


def local_entries(bridge: Bridge, node: ClusterNode) -> list[DirectoryEntry]:
    """The sessions this instance owns, as the directory keeps them."""
    entries = []
    for session in bridge.list_sessions():
        entries.append(
            DirectoryEntry(
                session_id=session.session_id,
                owner=node.instance_id,
                url=node.url,
                device_type=session.device.device_type,
                created_at=session.created_at,
                state=session.state,
                list_item={**views.session_list_item(session), "instance": node.instance_id},
                info={**views.session_info(session), "instance": node.instance_id},
            )
        )
    return entries


async def start_cluster_node(
    nursery: trio.Nursery, state: AppState, url: str
) -> ClusterNode | None:
    """Join the cluster on ``settings.redis_url`` (None without one), advertising ``url``."""
    bridge = state.bridge
    settings = bridge.settings
    if not settings.redis_url:
        return None

    async def device_types() -> tuple[str, ...]:
        return tuple((await bridge.configurations()).device_types)

    node = ClusterNode(
        settings.redis_url,
        settings.instance_id,
        lease=settings.cluster_lease,
        heartbeat=settings.cluster_heartbeat,
        local_entries=lambda: local_entries(bridge, node),
        device_types=device_types,
        saturated=lambda: state.loop_lag.saturated,
    )
    node.url = settings.advertised_url or url
    state.cluster = node
    state.cluster_creations = GlobalWindow(
        node, "creations", limit=settings.create_sessions_per_minute, window=60.0
    )
    state.handlers.whereabouts = lambda session_id: whereabouts(state, session_id)
    await nursery.start(node.run)
    in_redis = ClusterAdmission(
        node,
        per_minute=settings.max_connections_per_minute,
        per_session=settings.max_connections_per_session,
        within=settings.redis_admission_timeout,
    )
    admission = SharedAdmission(in_redis, bridge.limiter)
    state.metrics.register(AdmissionCollector(admission))

    async def admit_in_cluster(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        bridge.shared_admission = admission
        try:
            await in_redis.run(task_status=task_status)
        finally:
            bridge.shared_admission = None

    await nursery.start(admit_in_cluster)
    return node


async def whereabouts(state: AppState, session_id: str) -> str | None:
    """Why another instance's session is not served here, for a viewer's 4004."""
    entry = await remote_entry(state, session_id)
    if entry is None:
        return None
    if entry.state == "lost":
        return f"session lost: its instance {entry.owner} stopped answering"
    if entry.state == "stopped":
        return f"session stopped: its instance {entry.owner} was stopped"
    return f"session is served by instance {entry.owner}"


async def cluster_list_items(state: AppState, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``local`` (this instance's own items) and every other instance's sessions from the
    directory; only the local ones when Redis is away, since those are known for sure."""
    node = state.cluster
    if node is None:
        return local
    try:
        directory = await node.directory()
    except RedisUnavailable:
        return local
    mine = {item["session_id"] for item in local}
    others = [
        dict(entry.list_item)
        for sid, entry in sorted(directory.items(), key=lambda pair: pair[1].created_at)
        if sid not in mine and entry.owner != node.instance_id
    ]
    return [{**item, "instance": node.instance_id} for item in local] + others


async def remote_entry(state: AppState, session_id: str) -> DirectoryEntry | None:
    """Another instance's session from the directory, or None (unknown, or Redis away)."""
    node = state.cluster
    if node is None:
        return None
    try:
        entry = await node.entry(session_id)
    except RedisUnavailable:
        return None
    if entry is None or entry.owner == node.instance_id:
        return None
    return entry


async def place_session(state: AppState, device_type: str) -> InstanceEntry | None:
    """Where a new session of ``device_type`` goes: None for here (this instance hosts the
    type and is not saturated), else the least loaded live instance that can.

    Raises RedisUnavailable: without the directory no instance can create, since its
    session would be listed nowhere else."""
    node = state.cluster
    assert node is not None
    instances = await node.instances()
    here = next((i for i in instances if i.instance_id == node.instance_id), None)
    local_types = (await state.bridge.configurations()).device_types
    if device_type in local_types and not (here is not None and here.saturated):
        return None
    able = [
        i
        for i in instances
        if device_type in i.device_types and not i.saturated and i.instance_id != node.instance_id
    ]
    if not able:
        return None  # here after all: the local checks answer (unknown type, or saturated)
    return min(able, key=lambda i: (i.sessions, i.instance_id))
