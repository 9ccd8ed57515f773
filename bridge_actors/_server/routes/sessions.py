"""The session routes of ``/api/sessions``: configurations, create, list, info, delete.

Each route translates between HTTP and the bridge and nothing more: the bodies
are :mod:`..views`, the checks :mod:`..fields`, the errors the app's handlers.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import trio
from quart import Blueprint, Response, request

from ..._cluster import RedisUnavailable
from ..._errors import RateLimited, SessionNotFound
from .. import views
from ..authz import requires
from ..cluster import cluster_list_items, place_session, remote_entry
from ..fields import CreateSessionBody, force_flag, request_fields, session_request
from ..forwarded import connection_client
from ..guard import caller_sees
from ..openapi import request_body
from ..responses import json_response, redirect_response
from ..state import AppState, current_state

__all__ = ["sessions"]

sessions = Blueprint("sessions", __name__)


@sessions.get("/api/sessions/configurations")
@requires("watch")
async def configurations() -> dict[str, Any]:
    """The device types and versions sessions can be created with, over every backend."""
    config = await current_state().bridge.configurations()
    return {
        "success": True,
        "configurations": {
            "device_types": list(config.device_types),
            "ios_versions": list(config.ios_versions),
        },
    }


@sessions.post("/api/sessions/create")
@request_body(CreateSessionBody)
@requires("admin")
async def create_session() -> tuple[dict[str, Any], int] | Response:
    """Create a session: a device of ``device_type`` running ``ios_version``.

    Rate limited per client address (429 with ``retry_after``)."""
    state = current_state()
    fields = await request_fields()
    if state.cluster is not None:
        elsewhere = await _placed_elsewhere(state, fields)
        if elsewhere is not None:
            return elsewhere
    device_type, ios_version = session_request(fields, await state.bridge.configurations())
    refusal = await _refused_creation(state)
    if refusal is not None:
        return refusal
    session = await state.bridge.create_session(device_type, ios_version)
    if state.cluster is not None:
        await _publish(state)
    info = views.session_info(session)
    body = {"success": True, "session_id": session.session_id, "session_info": info}
    return body, 200


async def _placed_elsewhere(state: AppState, fields: dict[str, Any]) -> Response | None:
    """In a cluster: 503 without Redis, a 307 to the instance that should host the
    session, or None to create it here."""
    device_type = fields.get("device_type")
    try:
        target = await place_session(state, device_type if isinstance(device_type, str) else "")
    except RedisUnavailable as exc:
        body = {
            "success": False,
            "detail": f"cannot create sessions while the cluster directory is unavailable ({exc})",
        }
        return json_response(body, 503, {"Retry-After": "5"})
    if target is None:
        return None
    return redirect_response(f"{target.url.rstrip('/')}/api/sessions/create", 307)


async def _publish(state: AppState) -> None:
    """List a new session in the directory now, not at the next heartbeat; if Redis fails
    here the heartbeat lists it later."""
    assert state.cluster is not None
    with contextlib.suppress(RedisUnavailable):
        await state.cluster.publish()


async def _refused_creation(state: AppState) -> Response | None:
    """The 429 answer if this client address created too many sessions lately, else None.

    In a cluster the count is the whole cluster's (a Lua script in Redis); the local
    window still answers first, without a round trip, when it alone already refuses:
    it never counts more than the cluster does."""
    client = connection_client(request, state.bridge.settings.trusted_proxies)
    now = trio.current_time()
    try:
        wait = state.creations.retry_after(client, now)
        if wait > 0:
            raise RateLimited(wait)
        if state.cluster_creations is not None:
            try:
                wait = await state.cluster_creations.take(client)
            except RedisUnavailable as exc:
                detail = (
                    f"cannot count creations while the cluster directory is unavailable ({exc})"
                )
                return json_response(
                    {"success": False, "detail": detail}, 503, {"Retry-After": "5"}
                )
            if wait > 0:
                raise RateLimited(wait)
        state.creations.consume(client, now)
    except RateLimited as refusal:
        state.creations_refused += 1
        wait = max(1, math.ceil(refusal.retry_after))
        body = {
            "success": False,
            "detail": f"too many sessions created from this address; retry after {wait} s",
            "retry_after": wait,
        }
        return json_response(body, 429, {"Retry-After": str(wait)})
    return None


@sessions.route("/api/sessions", methods=["GET", "DELETE"])
@requires("watch")
async def sessions_without_slash() -> Response:
    """Redirects (307, method kept) to ``/api/sessions/``."""
    target = "/api/sessions/"
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    return redirect_response(target, 307)


@sessions.get("/api/sessions/")
@requires("watch")
async def list_sessions() -> dict[str, Any]:
    """Every session, held ones (not running: unrestored, delete failed) included."""
    state = current_state()
    bridge = state.bridge
    items = [views.session_list_item(s) for s in bridge.list_sessions()]
    items += [views.held_session_list_item(held) for held in bridge.list_held_sessions()]
    everywhere = await cluster_list_items(state, items)
    return {
        "success": True,
        "sessions": [item for item in everywhere if caller_sees(item["session_id"])],
    }


@sessions.delete("/api/sessions/")
@requires("admin")
async def delete_all_sessions() -> dict[str, Any]:
    """Delete every session and its device (``?force=true`` forgets undeletable ones)."""
    count = await current_state().bridge.delete_all_sessions(force=force_flag())
    return {"success": True, "deleted_count": count, "message": f"Deleted {count} sessions"}


@sessions.post("/api/sessions/recover-orphaned")
@requires("admin")
async def recover_orphaned() -> dict[str, Any]:
    """Adopt devices this server created earlier that no session holds."""
    count = await current_state().bridge.recover_orphaned()
    return {
        "success": True,
        "message": f"Recovered {count} orphaned simulator sessions",
        "recovered_count": count,
    }


@sessions.get("/api/sessions/<session_id>")
@requires("watch")
async def session_info(session_id: str) -> dict[str, Any]:
    """One session, with its device size (another instance's from the directory)."""
    state = current_state()
    try:
        info = views.session_info(state.bridge.get_session(session_id))
        if state.cluster is not None:
            info["instance"] = state.cluster.instance_id
    except SessionNotFound:
        entry = await remote_entry(state, session_id)
        if entry is None:
            raise
        info = dict(entry.info)
    return {
        "success": True,
        "session": info,
        "device_width": info["device_width"],
        "device_height": info["device_height"],
    }


@sessions.delete("/api/sessions/<session_id>")
@requires("admin")
async def delete_session(session_id: str) -> tuple[dict[str, Any], int]:
    """Delete one session and its device."""
    try:
        await current_state().bridge.delete_session(session_id, force=force_flag())
    except SessionNotFound:
        return {"success": False, "detail": "Session not found"}, 404
    cluster = current_state().cluster
    if cluster is not None:
        with contextlib.suppress(RedisUnavailable):
            await cluster.forget(session_id)
    return {"success": True, "message": f"Session {session_id} deleted"}, 200
