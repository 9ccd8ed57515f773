"""A session's device actions: apps, URLs, location, orientation, push, logs, media, files.

The routes and shapes of ios-bridge (forms and multipart bodies, ``{"success": ...}``
answers, 404 ``{"detail": "Session not found"}``). Each route checks its fields
(:mod:`..action_fields`), passes the bridge's action gate (a per-session rate,
429 when over it, and a line in the session's log) and calls the session's
backend; a backend that cannot do an action answers 501 naming itself.
Uploads are streamed to a private temporary directory (:mod:`..uploads`) and
checked (:mod:`..._backends.archives`) before anything reaches the device.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response, request

from ..._actions import DeviceActions, InstalledApp
from ..._backends.archives import (
    APP_EXTENSIONS,
    PHOTO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ArchiveLimits,
    TooLarge,
    check_content,
)
from ..._backends.bundles import AppBundle, unpack_app
from ..._errors import ActionUnsupported, BadInput, DeviceError, RateLimited
from ..._services.sessions import Session
from .. import action_fields as checks
from ..authz import requires
from ..device_files import open_for_pull, push_into
from ..fields import request_fields
from ..responses import json_response
from ..state import current_state
from ..uploads import Upload, UploadsBusy, receive_upload

__all__ = ["LOCATION_PRESETS", "PREDEFINED_LOCATIONS", "device_actions"]

device_actions = Blueprint("device_actions", __name__)

LOCATION_PRESETS = (
    ("San Francisco, CA", 37.7749, -122.4194, "San Francisco Bay Area"),
    ("New York, NY", 40.7128, -74.0060, "New York City"),
    ("London, UK", 51.5074, -0.1278, "London, United Kingdom"),
    ("Tokyo, Japan", 35.6762, 139.6503, "Tokyo, Japan"),
    ("Sydney, Australia", -33.8688, 151.2093, "Sydney, Australia"),
    ("Paris, France", 48.8566, 2.3522, "Paris, France"),
    ("Berlin, Germany", 52.5200, 13.4050, "Berlin, Germany"),
    ("Mumbai, India", 19.0760, 72.8777, "Mumbai, India"),
    ("Beijing, China", 39.9042, 116.4074, "Beijing, China"),
    ("São Paulo, Brazil", -23.5505, -46.6333, "São Paulo, Brazil"),
)
# simctl's own scenarios run as moving locations; "Apple" is a fixed point, "None" clears.
PREDEFINED_LOCATIONS = {
    "Apple": "Apple Park, Cupertino",
    "City Bicycle Ride": "Simulated bicycle ride through city",
    "City Run": "Simulated running route through city",
    "Freeway Drive": "Simulated freeway driving route",
    "None": "No simulated location",
}
APPLE_PARK = (37.3349, -122.0090)
URL_SCHEMES = {
    "web": ["http", "https"],
    "system": ["tel", "sms", "mailto", "maps", "facetime", "settings"],
    "blocked": list(checks.BLOCKED_SCHEMES),
}


# --- errors of these routes -----------------------------------------------------------------


@device_actions.errorhandler(ActionUnsupported)
async def unsupported(error: ActionUnsupported) -> Response:
    return json_response({"success": False, "detail": str(error)}, 501)


@device_actions.errorhandler(UploadsBusy)
async def uploads_busy(error: UploadsBusy) -> Response:
    return json_response({"success": False, "detail": str(error)}, 429, {"Retry-After": "1"})


@device_actions.errorhandler(TooLarge)
async def too_large(error: TooLarge) -> Response:
    current_state().bodies_too_large += 1
    return json_response({"success": False, "detail": str(error), "field": error.field}, 413)


@device_actions.errorhandler(RateLimited)
async def rate_limited(error: RateLimited) -> Response:
    wait = max(1, math.ceil(error.retry_after))
    body = {
        "success": False,
        "detail": f"too many device actions on this session; retry after {wait} s",
        "retry_after": wait,
    }
    return json_response(body, 429, {"Retry-After": str(wait)})


def _limits() -> ArchiveLimits:
    settings = current_state().bridge.settings
    return ArchiveLimits(
        settings.upload_max_entries, settings.upload_max_bytes, settings.upload_max_ratio
    )


def _max_upload() -> int:
    return current_state().bridge.settings.upload_max_bytes


# --- apps -----------------------------------------------------------------------------------


async def _receive_app(upload: Upload) -> AppBundle:
    """The one app of the upload (``ipa_file`` or ``app_bundle``), unpacked and named."""
    files = upload.files_of("ipa_file") or upload.files_of("app_bundle")
    if not files:
        raise BadInput("ipa_file", "no file uploaded (send ipa_file=an .ipa or app_bundle=a .zip)")
    if len(files) > 1 or len(upload.files) > 1:
        raise BadInput(files[0].field, "send exactly one app")
    uploaded = files[0]
    suffix = check_content(uploaded.field, uploaded.filename, uploaded.head, APP_EXTENSIONS)
    target = upload.directory / "unpacked"
    await trio.to_thread.run_sync(target.mkdir)
    unpack = partial(unpack_app, ipa=suffix == ".ipa")
    return await trio.to_thread.run_sync(unpack, uploaded.field, uploaded.path, target, _limits())


async def _install(session_id: str, action: str) -> tuple[Session, AppBundle, InstalledApp | None]:
    bridge = current_state().bridge
    session = bridge.admit_action(session_id, action, "upload")
    async with receive_upload(_max_upload(), current_state().uploads) as upload:
        bundle = await _receive_app(upload)

        async def install(actions, device) -> InstalledApp | None:
            await actions.install_app(device, bundle.path)
            apps = await actions.list_apps(device)
            return next((app for app in apps if app.bundle_id == bundle.info.bundle_id), None)

        installed = await bridge.run_action(session, action, install)
    bridge.actions.record(session, action, f"installed {bundle.info.bundle_id}")
    return session, bundle, installed


def _installed_body(bundle: AppBundle, installed: InstalledApp | None) -> dict[str, Any]:
    return {
        "app_info": bundle.info.to_dict(),
        "compatibility": None,
        "installed_app": installed.to_dict() if installed else None,
    }


@device_actions.post("/api/sessions/<session_id>/apps/install")
@requires("admin")
async def install_app(session_id: str) -> dict[str, Any]:
    """Install an app: multipart ``ipa_file`` (an .ipa) or ``app_bundle`` (a .zip of one X.app)."""
    _, bundle, installed = await _install(session_id, "apps/install")
    name = bundle.info.name
    return {"success": True, "message": f"{name} installed successfully"} | _installed_body(
        bundle, installed
    )


@device_actions.post("/api/sessions/<session_id>/apps/install-and-launch")
@requires("admin")
async def install_and_launch_app(session_id: str) -> dict[str, Any]:
    """Install an app as ``apps/install`` does, then launch it (``launched``, ``launch_error``)."""
    session, bundle, installed = await _install(session_id, "apps/install-and-launch")
    bundle_id = bundle.info.bundle_id
    body: dict[str, Any] = {"success": True, "bundle_id": bundle_id}
    try:
        await current_state().bridge.run_action(
            session, "apps/launch", lambda actions, device: actions.launch_app(device, bundle_id)
        )
    except DeviceError as exc:
        body |= {"message": f"{bundle.info.name} installed successfully but failed to launch"}
        body |= _installed_body(bundle, installed) | {"launched": False, "launch_error": str(exc)}
        return body
    body |= {"message": f"{bundle.info.name} installed and launched successfully"}
    return body | _installed_body(bundle, installed) | {"launched": True}


@device_actions.get("/api/sessions/<session_id>/apps")
@requires("control")
async def list_apps(session_id: str) -> dict[str, Any]:
    """The apps installed on the device: ``bundle_id``, ``app_name``, ``app_type``, ``path``."""
    apps = await current_state().bridge.act(
        session_id, "apps/list", lambda actions, device: actions.list_apps(device)
    )
    return {"success": True, "apps": [app.to_dict() for app in apps]}


@device_actions.post("/api/sessions/<session_id>/apps/<bundle_id>/launch")
@requires("control")
async def launch_app(session_id: str, bundle_id: str) -> dict[str, Any]:
    """Launch the installed app ``bundle_id``."""
    bundle_id = checks.bundle_id_field(bundle_id)
    await current_state().bridge.act(
        session_id, "apps/launch", lambda a, device: a.launch_app(device, bundle_id), bundle_id
    )
    return {"success": True, "message": f"App {bundle_id} launched"}


@device_actions.post("/api/sessions/<session_id>/apps/<bundle_id>/terminate")
@requires("control")
async def terminate_app(session_id: str, bundle_id: str) -> dict[str, Any]:
    """Terminate the running app ``bundle_id``."""
    bundle_id = checks.bundle_id_field(bundle_id)
    await current_state().bridge.act(
        session_id,
        "apps/terminate",
        lambda a, device: a.terminate_app(device, bundle_id),
        bundle_id,
    )
    return {"success": True, "message": f"App {bundle_id} terminated"}


@device_actions.delete("/api/sessions/<session_id>/apps/<bundle_id>")
@requires("admin")
async def uninstall_app(session_id: str, bundle_id: str) -> Response | dict[str, Any]:
    """Uninstall ``bundle_id``; 404 if it is not installed."""
    bundle_id = checks.bundle_id_field(bundle_id)

    async def uninstall(actions, device) -> InstalledApp | None:
        apps = await actions.list_apps(device)
        app = next((app for app in apps if app.bundle_id == bundle_id), None)
        if app is not None:
            await actions.uninstall_app(device, bundle_id)
        return app

    app = await current_state().bridge.act(session_id, "apps/uninstall", uninstall, bundle_id)
    if app is None:
        detail = f"App with bundle ID '{bundle_id}' not found"
        return json_response({"success": False, "detail": detail}, 404)
    return {
        "success": True,
        "message": f"App '{app.app_name}' uninstalled successfully",
        "bundle_id": bundle_id,
        "app_name": app.app_name,
    }


# --- url, location, orientation, push -------------------------------------------------------


@device_actions.post("/api/sessions/<session_id>/url/open")
@requires("control")
async def open_url(session_id: str) -> dict[str, Any]:
    """Open form ``url`` on the device (``https://`` added without a scheme; file:,
    javascript:, data: and vbscript: refused)."""
    current_state().bridge.get_session(session_id)
    url = checks.url_to_open(await request_fields())
    await current_state().bridge.act(
        session_id, "url/open", lambda actions, device: actions.open_url(device, url), url
    )
    return {"success": True, "message": f"URL opened successfully: {url}", "url": url}


@device_actions.get("/api/sessions/<session_id>/url/schemes")
@requires("watch")
async def url_schemes(session_id: str) -> dict[str, Any]:
    """The URL schemes ``url/open`` takes, and those it refuses."""
    current_state().bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    return {
        "success": True,
        "web_schemes": URL_SCHEMES["web"],
        "system_schemes": URL_SCHEMES["system"],
        "blocked_schemes": URL_SCHEMES["blocked"],
        "custom_schemes": "any other scheme an installed app registered (myapp://...)",
    }


@device_actions.post("/api/sessions/<session_id>/location/set")
@requires("control")
async def set_location(session_id: str) -> dict[str, Any]:
    """Set the device's location: form ``latitude`` (-90..90) and ``longitude`` (-180..180)."""
    current_state().bridge.get_session(session_id)
    fields = await request_fields()
    latitude = checks.coordinate(fields, "latitude", 90)
    longitude = checks.coordinate(fields, "longitude", 180)
    pair = f"{latitude},{longitude}"
    await current_state().bridge.act(
        session_id,
        "location/set",
        lambda actions, device: actions.set_location(device, latitude, longitude),
        pair,
    )
    return {
        "success": True,
        "message": f"Location set to {latitude}, {longitude}",
        "latitude": latitude,
        "longitude": longitude,
        "coordinate_pair": pair,
    }


@device_actions.post("/api/sessions/<session_id>/location/clear")
@requires("control")
async def clear_location(session_id: str) -> dict[str, Any]:
    """Clear the simulated location."""
    await current_state().bridge.act(
        session_id, "location/clear", lambda actions, device: actions.clear_location(device)
    )
    return {"success": True, "message": "Mock location cleared"}


@device_actions.get("/api/sessions/<session_id>/location/presets")
@requires("watch")
async def location_presets(session_id: str) -> dict[str, Any]:
    """Cities to set the location to with ``location/set``."""
    current_state().bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    presets = [
        {"name": name, "latitude": lat, "longitude": lon, "description": text}
        for name, lat, lon, text in LOCATION_PRESETS
    ]
    return {"success": True, "presets": presets}


@device_actions.get("/api/sessions/<session_id>/location/predefined")
@requires("watch")
async def predefined_locations(session_id: str) -> dict[str, Any]:
    """The names ``location/set-predefined`` takes."""
    current_state().bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    items = [{"name": n, "description": d} for n, d in PREDEFINED_LOCATIONS.items()]
    return {"success": True, "predefined_locations": items}


@device_actions.post("/api/sessions/<session_id>/location/set-predefined")
@requires("control")
async def set_predefined_location(session_id: str) -> dict[str, Any]:
    """Set form ``location_name``, one of ``location/predefined``."""
    current_state().bridge.get_session(session_id)
    name = (await request_fields()).get("location_name")
    if name not in PREDEFINED_LOCATIONS:
        known = ", ".join(PREDEFINED_LOCATIONS)
        raise BadInput("location_name", f"unknown predefined location; known: {known}")

    async def apply(actions, device) -> None:
        if name == "None":
            await actions.clear_location(device)
        elif name == "Apple":
            await actions.set_location(device, *APPLE_PARK)
        else:
            await actions.run_location_scenario(device, name)

    await current_state().bridge.act(session_id, "location/set-predefined", apply, name)
    return {"success": True, "message": f"Location set to '{name}'", "location_name": name}


@device_actions.post("/api/sessions/<session_id>/orientation")
@requires("control")
async def set_orientation(session_id: str) -> dict[str, Any]:
    """Rotate the device: form ``orientation``, one of portrait, landscape,
    portraitupsidedown, landscaperight, landscapeleft."""
    current_state().bridge.get_session(session_id)
    orientation = checks.orientation_field(await request_fields())
    await current_state().bridge.act(
        session_id,
        "orientation",
        lambda actions, device: actions.set_orientation(device, orientation),
        orientation,
    )
    return {
        "success": True,
        "message": f"Orientation changed to {orientation}",
        "orientation": orientation,
    }


@device_actions.post("/api/sessions/<session_id>/push")
@requires("control")
async def push_notification(session_id: str) -> dict[str, Any]:
    """Send a push notification: ``bundle_id`` and ``payload`` (an APNs JSON object with
    ``aps``, at most 4 KB), as a JSON body or a form whose payload is JSON text."""
    current_state().bridge.get_session(session_id)
    bundle_id, payload = checks.push_payload(await request_fields())
    await current_state().bridge.act(
        session_id,
        "push",
        lambda actions, device: actions.push(device, bundle_id, payload),
        bundle_id,
    )
    return {"success": True, "message": f"Notification sent to {bundle_id}", "bundle_id": bundle_id}


# --- logs -----------------------------------------------------------------------------------


@device_actions.get("/api/sessions/<session_id>/logs")
@requires("control")
async def recent_logs(session_id: str) -> dict[str, Any]:
    """The device's recent log lines: ``?lines=`` (1..1000), ``level=``, ``process=``."""
    current_state().bridge.get_session(session_id)
    query = checks.log_query(request.args)
    lines = await current_state().bridge.act(
        session_id, "logs", lambda actions, device: actions.recent_logs(device, query)
    )
    logs = [
        {k: v for k, v in line.to_message().items() if k not in ("type", "raw_line")}
        for line in lines
    ]
    return {"success": True, "logs": logs, "total_lines": len(logs)}


@device_actions.post("/api/sessions/<session_id>/logs/clear")
@requires("control")
async def clear_logs(session_id: str) -> dict[str, Any]:
    """Erase the device's log."""
    await current_state().bridge.act(
        session_id, "logs/clear", lambda actions, device: actions.clear_logs(device)
    )
    return {"success": True, "message": "Logs cleared successfully"}


@device_actions.get("/api/sessions/<session_id>/logs/processes")
@requires("control")
async def log_processes(session_id: str) -> dict[str, Any]:
    """The processes running on the device (to filter ``logs`` by)."""
    processes = await current_state().bridge.act(
        session_id, "logs/processes", lambda actions, device: actions.processes(device)
    )
    return {"success": True, "processes": [p.to_dict() for p in processes]}


# --- media and files ------------------------------------------------------------------------


async def _add_media(session_id: str, field: str, kinds: Any) -> dict[str, Any]:
    bridge = current_state().bridge
    action = f"media/{field}/add"
    session = bridge.admit_action(session_id, action, "upload")
    async with receive_upload(_max_upload(), current_state().uploads) as upload:
        files = upload.files_of(field)
        if not files:
            raise BadInput(field, "no file uploaded")
        for uploaded in files:
            check_content(field, uploaded.filename, uploaded.head, kinds)
        paths = []
        for uploaded in files:  # simctl tells the type by the name's extension
            named = uploaded.path.with_name(
                f"{uploaded.path.stem}{Path(uploaded.filename).suffix.lower()}"
            )
            await trio.to_thread.run_sync(uploaded.path.rename, named)
            paths.append(named)
        await bridge.run_action(session, action, lambda a, device: a.add_media(device, paths))
    noun = "photo(s)" if field == "photos" else "video(s)"
    return {"success": True, "message": f"Added {len(paths)} {noun}", "count": len(paths)}


@device_actions.post("/api/sessions/<session_id>/media/photos/add")
@requires("admin")
async def add_photos(session_id: str) -> dict[str, Any]:
    """Add multipart ``photos`` (jpg, jpeg, png, gif, heic, heif) to the device's library."""
    return await _add_media(session_id, "photos", PHOTO_EXTENSIONS)


@device_actions.post("/api/sessions/<session_id>/media/videos/add")
@requires("admin")
async def add_videos(session_id: str) -> dict[str, Any]:
    """Add multipart ``videos`` (mp4, mov, m4v, avi, mkv) to the device's library."""
    return await _add_media(session_id, "videos", VIDEO_EXTENSIONS)


@device_actions.get("/api/sessions/<session_id>/media/info")
@requires("control")
async def media_info(session_id: str) -> dict[str, Any]:
    """The photo and video formats ``media/*/add`` take, and the largest upload."""
    session = current_state().bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    return {
        "success": True,
        "supported": isinstance(session.backend, DeviceActions)
        and "media" not in session.backend.unsupported_groups,
        "supported_photo_formats": list(PHOTO_EXTENSIONS),
        "supported_video_formats": list(VIDEO_EXTENSIONS),
        "max_file_size": _max_upload(),
    }


async def _base_directory(actions, device, bundle_id: str | None) -> Path:
    if bundle_id:
        return await actions.app_container(device, bundle_id)
    return await actions.data_directory(device)


@device_actions.post("/api/sessions/<session_id>/files/push")
@requires("admin")
async def push_file(session_id: str) -> dict[str, Any]:
    """Put multipart ``file`` at ``device_path`` in the device's data directory, or in
    the container of ``bundle_id``; the path may not leave it."""
    bridge = current_state().bridge
    session = bridge.admit_action(session_id, "files/push", "upload")
    async with receive_upload(_max_upload(), current_state().uploads) as upload:
        files = upload.files_of("file")
        if len(files) != 1:
            raise BadInput("file", "send exactly one file")
        parts = checks.device_path_parts(upload.fields.get("device_path"))
        raw_bundle = upload.fields.get("bundle_id") or None
        bundle_id = checks.bundle_id_field(raw_bundle) if raw_bundle else None

        async def push(actions, device) -> Path:
            base = await _base_directory(actions, device, bundle_id)
            return await trio.to_thread.run_sync(push_into, base, parts, files[0].path)

        await bridge.run_action(session, "files/push", push)
    return {
        "success": True,
        "message": f"Pushed {files[0].filename} to {'/'.join(parts)}",
        "filename": files[0].filename,
        "device_path": "/".join(parts),
        "bundle_id": bundle_id,
    }


@device_actions.post("/api/sessions/<session_id>/files/pull")
@requires("admin")
async def pull_file(session_id: str) -> Response:
    """The file at form ``device_path`` (in the data directory, or ``bundle_id``'s
    container) as an attachment named ``filename`` or its own name."""
    current_state().bridge.get_session(session_id)
    fields = await request_fields()
    parts = checks.device_path_parts(fields.get("device_path"))
    bundle_id = checks.bundle_id_field(fields["bundle_id"]) if fields.get("bundle_id") else None
    limit = _max_upload()

    async def pull(actions, device) -> tuple[Path, int]:
        base = await _base_directory(actions, device, bundle_id)
        descriptor, size = await trio.to_thread.run_sync(open_for_pull, base, parts, limit)
        os.close(descriptor)  # checked now; opened again (and checked again) to be sent
        return base, size

    base, size = await current_state().bridge.act(session_id, "files/pull", pull)
    name = str(fields.get("filename") or parts[-1])
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:128] or "file"
    body = _read_chunks(base, parts, size, limit)
    response = Response(body, content_type="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    response.headers["Content-Length"] = str(size)
    return response


async def _read_chunks(
    base: Path, parts: tuple[str, ...], size: int, limit: int
) -> AsyncIterator[bytes]:
    """The file's first ``size`` bytes (its Content-Length); it is opened only once the
    body is sent, so a response never sent holds no descriptor."""
    descriptor, _ = await trio.to_thread.run_sync(open_for_pull, base, parts, limit)
    try:
        left = size
        while left > 0:
            chunk = await trio.to_thread.run_sync(os.read, descriptor, min(left, 1024 * 1024))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        os.close(descriptor)


@device_actions.get("/api/sessions/<session_id>/files/app-container")
@requires("admin")
async def app_container(session_id: str) -> dict[str, Any]:
    """Where ``?bundle_id=``'s data container is."""
    bundle_id = checks.bundle_id_field(request.args.get("bundle_id"))
    path = await current_state().bridge.act(
        session_id, "files/app-container", lambda a, device: a.app_container(device, bundle_id)
    )
    return {"success": True, "bundle_id": bundle_id, "container_path": str(path)}
