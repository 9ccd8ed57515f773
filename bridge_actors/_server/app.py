"""The Quart-Trio application: every HTTP route of PROTOCOL.md, and the WebSocket routes.

Beyond PROTOCOL.md it answers what the compatible clients ask for: the desktop
viewer's cross-origin fetches, its recording buttons (a clear 501), and a download
name ending in ``.png`` (the screenshot converted to match).

Routes translate between HTTP and the :class:`~bridge_actors.Bridge` handle and
nothing more. Errors are mapped in one place (:func:`_register_error_handlers`):
bad input is a 4xx whose JSON body names the field, an unknown session is a 404,
and nothing, not even our own bug, answers with a stack trace.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import trio
from PIL import Image, UnidentifiedImageError
from quart import Response, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .._bridge import Bridge
from .._device import Screenshot
from .._errors import BadInput, DeviceError, RateLimited, SessionNotFound
from .._services.ratelimit import SlidingWindow
from .._settings import Settings
from .abort import StuckSockets
from .forwarded import connection_client
from .json_codec import decode_json
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import make_registry, render_metrics
from .openapi import openapi_document, request_body
from .ws import OpenSockets, SocketHandlers

log = logging.getLogger("bridge_actors.http")

__all__ = ["AppState", "app_state", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SERVICE_NAME = "bridge_actors"
MAX_FIELD_LENGTH = 200
SCREENSHOT_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
SCREENSHOT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
# A requested download name with one of these endings gets that format, converted if need be.
FORMAT_OF_EXTENSION = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
CONVERTED_JPEG_QUALITY = 90
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")
RECORDING_UNSUPPORTED = "recording: not supported by this server"

# The desktop viewer of the compatible clients is a local page (``file://``, whose
# origin browsers send as "null" or "file://") that fetches these per-session routes
# cross-origin, so they answer its CORS checks. Only the routes it fetches are opened,
# and each needs a session id: a page cannot learn the ids through them.
LOCAL_APP_ORIGINS = frozenset({"null", "file://"})
_LOCAL_APP_ROUTES = re.compile(
    r"/api/sessions/[^/]+/(?:screenshot/download|recording/(?:start|stop))"
)

# The presets of the compatible route; only reported, WebRTC itself is a later milestone.
WEBRTC_PRESETS: Mapping[str, Mapping[str, float]] = {
    "low": {"fps": 30, "resolution": 1.0, "quality": 70},
    "medium": {"fps": 45, "resolution": 1.5, "quality": 85},
    "high": {"fps": 60, "resolution": 2.0, "quality": 95},
    "ultra": {"fps": 60, "resolution": 2.5, "quality": 98},
}


class CreateSessionBody(pydantic.BaseModel):
    """The fields of ``POST /api/sessions/create`` (a form or a JSON object)."""

    device_type: str = pydantic.Field(
        description="one of /api/sessions/configurations' device_types", max_length=200
    )
    ios_version: str = pydantic.Field(
        description="one of /api/sessions/configurations' ios_versions", max_length=200
    )


class ScreenshotDownloadBody(pydantic.BaseModel):
    """The fields of ``POST /api/sessions/{session_id}/screenshot/download``."""

    filename: str | None = pydantic.Field(
        None,
        description="1 to 128 letters, digits, spaces, '.', '_' or '-'; "
        "ending in .png or .jpg picks the format",
    )


@dataclasses.dataclass(eq=False)
class AppState:
    """What the routes of one app share."""

    bridge: Bridge
    sockets: OpenSockets
    creations: SlidingWindow
    stuck: StuckSockets
    creations_refused: int = 0

    def extra_metrics(self) -> dict[str, float]:
        return {
            "session_creations_refused": self.creations_refused,
            "stuck_connections_reset": self.stuck.reset,
        }


def health_report(bridge: Bridge) -> dict[str, Any]:
    critical = bridge.warden.statistics().tier == "CRITICAL"
    return {
        "status": "degraded" if critical else "healthy",
        "service": SERVICE_NAME,
        "total_sessions": len(bridge.list_sessions()),
        "connections": bridge.connection_stats(),
        "resources": bridge.resource_stats(),
    }


def readiness_report(state: AppState) -> tuple[dict[str, Any], int]:
    bridge = state.bridge
    reasons = []
    if not bridge.started:
        reasons.append("starting")
    if bridge.draining or state.sockets.closing:
        reasons.append("draining")
    if not bridge.warden.ready:
        reasons.append("memory critical")
    if reasons:
        return {"status": "not_ready", "reasons": reasons}, 503
    return {"status": "ready"}, 200


class ProbeFastPath:
    """ASGI in front of the app that answers the health probes itself.

    Under a large fan-out or a connection flood every checkpoint of a request
    waits a whole round of the scheduler, and a request through Quart takes many;
    the probes must stay quick exactly then, so they skip Quart's request
    machinery (same answers as its routes, which serve the app on its own).
    """

    def __init__(self, app: QuartTrio) -> None:
        self.app = app
        state = app_state(app)
        self.probes: dict[str, Callable[[], tuple[dict[str, Any], int]]] = {
            "/health": lambda: (health_report(state.bridge), 200),
            "/livez": lambda: ({"status": "ok"}, 200),
            "/readyz": lambda: readiness_report(state),
        }

    async def __call__(self, scope, receive, send) -> None:
        probe = self.probes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if probe is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, status = probe()
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": payload if scope["method"] == "GET" else b""}
        )


def app_state(app: QuartTrio) -> AppState:
    return app.extensions["bridge_actors"]


def create_app(bridge: Bridge) -> QuartTrio:
    """A Quart-Trio app serving ``bridge``; run it with :func:`bridge_actors.serve`."""
    settings = bridge.settings
    app = QuartTrio(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_body_bytes,
        PROPAGATE_EXCEPTIONS=False,
        # The viewer's files are revalidated on every load, so an upgrade never pairs a
        # new index.html with a cached app.js.
        SEND_FILE_MAX_AGE_DEFAULT=0,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented key order
    state = AppState(
        bridge=bridge,
        sockets=OpenSockets(),
        creations=SlidingWindow(limit=settings.create_sessions_per_minute, window=60.0),
        stuck=StuckSockets(),
    )
    app.extensions["bridge_actors"] = state
    registry = make_registry(bridge, state.extra_metrics)
    sockets = SocketHandlers(bridge, state.sockets, state.stuck)

    _register_error_handlers(app)

    # -- the viewer ---------------------------------------------------------------------------

    @app.get("/")
    async def index() -> Response:
        """The built-in web viewer."""
        return await app.send_static_file("index.html")

    # -- health --------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Health, session count, connection and resource statistics (as ios-bridge)."""
        return health_report(bridge)

    @app.get("/livez")
    async def livez() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        """Readiness: 503 while starting, draining or over the memory mark, with the reasons."""
        body, status = readiness_report(state)
        return body, status

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """Every statistic of the bridge: connections, rate limiter, warden, captures, KPIs."""
        snapshot = bridge.statistics()
        return {
            "success": True,
            "timestamp": snapshot.timestamp,
            "connection_manager": snapshot.connection_manager,
            "resource_manager": snapshot.resource_manager,
            "rate_limiter": _plain(snapshot.rate_limiter),
            "warden": _plain(snapshot.warden),
            "allocator": _plain(snapshot.allocator),
            "supervisor": {c.udid: _plain(c.supervisor) for c in snapshot.captures},
            "captures": {c.udid: _capture_view(c) for c in snapshot.captures},
            "pool": _plain(snapshot.pool),
            "sessions": _plain(snapshot.sessions),
            "store": _plain(snapshot.store),
            "kpis": _plain(snapshot.kpis),
            "server": {
                "ready": snapshot.ready,
                "websockets": state.sockets.statistics(),
                "session_creations_refused": state.creations_refused,
            },
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics, in the text exposition format."""
        await trio.lowlevel.checkpoint()
        return Response(render_metrics(registry), content_type=METRICS_CONTENT_TYPE)

    @app.get("/status")
    async def status_all() -> dict[str, Any]:
        """Every session, as the ios-bridge status page lists them."""
        sessions = [s.list_item() for s in bridge.list_sessions()]
        return {
            "total_sessions": len(sessions),
            "sessions": sessions,
            "status": "healthy" if sessions else "no_sessions",
        }

    @app.get("/status/<session_id>")
    async def status_one(session_id: str) -> dict[str, Any]:
        """One session and whether its device answers.

        An unknown session is a 200 whose body holds ``"error"`` and ``"status_code": 404``,
        as the compatible clients expect."""
        try:
            session = bridge.get_session(session_id)
        except SessionNotFound:
            # The compatible clients read this as a 200 with an error inside.
            return {"error": "Session not found", "status_code": 404}
        await session.refresh()  # this route is the client's "is it up now?": ask first
        return {
            "session_id": session.session_id,
            "udid": session.device.udid,
            "simulator_accessible": session.accessible,
            "session_info": session.info(),
            "status": session.status,
        }

    # -- sessions ------------------------------------------------------------------------------

    @app.get("/api/sessions/configurations")
    async def configurations() -> dict[str, Any]:
        """The device types and versions sessions can be created with, over every backend."""
        config = await bridge.configurations()
        return {
            "success": True,
            "configurations": {
                "device_types": list(config.device_types),
                "ios_versions": list(config.ios_versions),
            },
        }

    @app.post("/api/sessions/create")
    @request_body(CreateSessionBody)
    async def create_session() -> tuple[dict[str, Any], int] | Response:
        """Create a session: a device of ``device_type`` running ``ios_version``.

        Rate limited per client address (429 with ``retry_after``)."""
        fields = await _request_fields()
        device_type = _text_field(fields, "device_type")
        ios_version = _text_field(fields, "ios_version")
        config = await bridge.configurations()
        if device_type not in config.device_types:
            raise BadInput(
                "device_type",
                f"unknown device type {device_type!r}; known: {', '.join(config.device_types)}",
            )
        if ios_version not in config.ios_versions:
            raise BadInput(
                "ios_version",
                f"unknown iOS version {ios_version!r}; known: {', '.join(config.ios_versions)}",
            )
        try:
            state.creations.consume(_client_ip(settings), trio.current_time())
        except RateLimited as refusal:
            state.creations_refused += 1
            wait = max(1, math.ceil(refusal.retry_after))
            body = {
                "success": False,
                "detail": f"too many sessions created from this address; retry after {wait} s",
                "retry_after": wait,
            }
            return _json_response(body, 429, {"Retry-After": str(wait)})
        session = await bridge.create_session(device_type, ios_version)
        body = {"success": True, "session_id": session.session_id, "session_info": session.info()}
        return body, 200

    @app.route("/api/sessions", methods=["GET", "DELETE"])
    async def sessions_without_slash() -> Response:
        """Redirects (307, method kept) to ``/api/sessions/``."""
        target = "/api/sessions/"
        if request.query_string:
            target += "?" + request.query_string.decode("latin-1")
        return _redirect_response(target, 307)

    # -- the reference -------------------------------------------------------------------------

    @app.get("/openapi.json")
    async def openapi() -> Response:
        """This reference, as an OpenAPI 3.1 document generated from the routes."""
        await trio.lowlevel.checkpoint()
        document = openapi_document(app, title=SERVICE_NAME, version=_package_version())
        return _json_response(document, 200)

    @app.get("/docs")
    async def docs() -> Response:
        """This reference, as a page (rendered locally from ``/openapi.json``)."""
        return await app.send_static_file("docs.html")

    @app.get("/api/sessions/")
    async def list_sessions() -> dict[str, Any]:
        """Every session, held ones (not running: unrestored, delete failed) included."""
        items = [s.list_item() for s in bridge.list_sessions()]
        items += [held.list_item() for held in bridge.list_held_sessions()]
        return {"success": True, "sessions": items}

    @app.delete("/api/sessions/")
    async def delete_all_sessions() -> dict[str, Any]:
        """Delete every session and its device (``?force=true`` forgets undeletable ones)."""
        count = await bridge.delete_all_sessions(force=_force_flag())
        return {"success": True, "deleted_count": count, "message": f"Deleted {count} sessions"}

    @app.post("/api/sessions/recover-orphaned")
    async def recover_orphaned() -> dict[str, Any]:
        """Adopt devices this server created earlier that no session holds."""
        count = await bridge.recover_orphaned()
        return {
            "success": True,
            "message": f"Recovered {count} orphaned simulator sessions",
            "recovered_count": count,
        }

    @app.post("/api/sessions/cleanup-recordings")
    async def cleanup_recordings() -> dict[str, Any]:
        """Recordings are not supported; there is never anything to clean up."""
        await trio.lowlevel.checkpoint()
        return {"success": True, "message": "No recordings to clean up"}

    @app.get("/api/sessions/<session_id>")
    async def session_info(session_id: str) -> dict[str, Any]:
        """One session, with its device size."""
        session = bridge.get_session(session_id)
        info = session.info()
        return {
            "success": True,
            "session": info,
            "device_width": info["device_width"],
            "device_height": info["device_height"],
        }

    @app.delete("/api/sessions/<session_id>")
    async def delete_session(session_id: str) -> tuple[dict[str, Any], int]:
        """Delete one session and its device."""
        try:
            await bridge.delete_session(session_id, force=_force_flag())
        except SessionNotFound:
            return {"success": False, "detail": "Session not found"}, 404
        return {"success": True, "message": f"Session {session_id} deleted"}, 200

    @app.get("/api/sessions/<session_id>/screenshot")
    async def screenshot(session_id: str) -> Response:
        """The device's screen now, as an image attachment."""
        return await _screenshot_response(session_id, None)

    @app.post("/api/sessions/<session_id>/screenshot/download")
    @request_body(ScreenshotDownloadBody)
    async def screenshot_download(session_id: str) -> Response:
        """The device's screen as a download named ``filename``.

        A name ending in ``.png`` or ``.jpg`` picks the format, converted if need be."""
        bridge.get_session(session_id)  # 404 before reading a body we would not use
        fields = await _request_fields()
        filename = fields.get("filename")
        if filename in (None, ""):
            return await _screenshot_response(session_id, None)
        if not isinstance(filename, str) or not _SAFE_FILENAME.fullmatch(filename):
            raise BadInput(
                "filename",
                "must be 1 to 128 letters, digits, spaces, '.', '_' or '-', "
                "starting with a letter or digit",
            )
        return await _screenshot_response(session_id, filename)

    async def _screenshot_response(session_id: str, filename: str | None) -> Response:
        shot = await bridge.screenshot(session_id)
        data, fmt = shot.data, shot.format
        wanted = FORMAT_OF_EXTENSION.get(Path(filename).suffix.lower()) if filename else None
        if wanted is not None and wanted != fmt:
            # A page that names its download "x.png" saves whatever comes as x.png.
            data = await trio.to_thread.run_sync(_convert_screenshot, shot, wanted)
            fmt = wanted
        extension = SCREENSHOT_EXTENSIONS[fmt]
        if filename is None:
            filename = f"screenshot_{session_id[:8]}.{extension}"
        elif "." not in filename:
            filename = f"{filename}.{extension}"
        return Response(
            data,
            content_type=SCREENSHOT_TYPES[fmt],
            headers={"Content-Disposition": f"attachment; filename={_header_token(filename)}"},
        )

    @app.post("/api/sessions/<session_id>/recording/start")
    @app.post("/api/sessions/<session_id>/recording/stop")
    async def recording(session_id: str) -> tuple[dict[str, Any], int]:
        """Recording is not supported by this server: 501."""
        bridge.get_session(session_id)
        await trio.lowlevel.checkpoint()
        return {"success": False, "detail": RECORDING_UNSUPPORTED}, 501

    @app.get("/webrtc/quality/<session_id>/<quality>")
    async def webrtc_quality(session_id: str, quality: str) -> dict[str, Any]:
        """The WebRTC preset named ``quality`` (reported only; stream from the video socket)."""
        bridge.get_session(session_id)
        await trio.lowlevel.checkpoint()
        if quality not in WEBRTC_PRESETS:
            raise BadInput("quality", f"must be one of {', '.join(WEBRTC_PRESETS)}")
        return {
            "success": True,
            "session_id": session_id,
            "quality": quality,
            "settings": dict(WEBRTC_PRESETS[quality]),
        }

    # -- WebSockets ----------------------------------------------------------------------------

    @app.websocket("/ws/<session_id>/video")
    async def video_socket(session_id: str) -> None:
        """Frames of the device: JSON ``video_frame`` messages, or binary with ``?format=binary``.

        ``?fps=N`` caps this viewer's rate. Close codes: 4004 unknown or deleted session,
        4009 per-session cap, 4029 rate limited, 1013 server busy, 1008 evicted or bad input,
        1009 message too big, 1011 capture failed, 1001 shutting down."""
        await sockets.video(session_id)

    @app.websocket("/ws/<session_id>/control")
    async def control_socket(session_id: str) -> None:
        """Control messages (tap, swipe, text, button, key); those with an ``id`` are acknowledged.

        A bad message gets an ``{"type": "error"}`` reply naming what was wrong; 50 in a row
        close the socket with 1008."""
        await sockets.control(session_id)

    @app.websocket("/ws/<session_id>/screenshot")
    async def screenshot_socket(session_id: str) -> None:
        """A screenshot now and after every ``{"t": "refresh"}`` or control message."""
        await sockets.screenshot(session_id)

    @app.websocket("/ws/<session_id>/logs")
    async def logs_socket(session_id: str) -> None:
        """The device's log lines; ``{"type": "filter"}`` narrows them, ``{"type": "clear"}``."""
        await sockets.logs(session_id)

    @app.websocket("/ws/<session_id>/webrtc")
    async def webrtc_socket(session_id: str) -> None:
        """WebRTC signalling is not served: one error message naming the video socket instead."""
        await sockets.webrtc(session_id)

    @app.after_request
    async def json_redirects(response: Response) -> Response:
        # The router's own redirects (merging slashes) skip the error handlers and would
        # answer an HTML page; an API answers JSON.
        location = response.headers.get("Location")
        if 300 <= response.status_code < 400 and location and response.mimetype == "text/html":
            return _redirect_response(location, response.status_code)
        return response

    @app.after_request
    async def local_app_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin in LOCAL_APP_ORIGINS and _LOCAL_APP_ROUTES.fullmatch(request.path):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Content-Disposition"
            response.vary.add("Origin")
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type"
                response.headers["Access-Control-Max-Age"] = "600"
        return response

    return app


# --- errors -----------------------------------------------------------------------------------


def _register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(BadInput)
    async def bad_input(error: BadInput) -> Response:
        return _json_response({"success": False, "detail": str(error), "field": error.field}, 400)

    @app.errorhandler(SessionNotFound)
    async def session_not_found(error: SessionNotFound) -> Response:
        return _json_response({"success": False, "detail": "Session not found"}, 404)

    @app.errorhandler(DeviceError)
    async def device_error(error: DeviceError) -> Response:
        log.warning("device error on %s %s: %s", request.method, request.path, error)
        return _json_response({"success": False, "detail": f"device error: {error}"}, 502)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return _json_response(
            {"success": False, "detail": f"body: larger than {limit} bytes", "field": "body"}, 413
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        response = _json_response({"success": False, "detail": error.name}, error.code or 500)
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        where = request.path if has_request_context() else "websocket"
        log.error("unexpected error on %s", where, exc_info=error)
        return _json_response({"success": False, "detail": "internal server error"}, 500)


def _package_version() -> str:
    try:
        return importlib.metadata.version(SERVICE_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def _redirect_response(target: str, status: int) -> Response:
    """A redirect whose body is JSON, like every other answer of the API."""
    body = {"success": False, "detail": f"moved to {target}", "location": target}
    response = _json_response(body, status)
    response.headers["Location"] = target
    return response


def _json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=dict(headers or {}),
    )


# --- request helpers --------------------------------------------------------------------------


async def _request_fields() -> Mapping[str, Any]:
    """The body's fields: a form (urlencoded or multipart) or a JSON object."""
    if request.mimetype == "application/json":
        raw = await request.get_data(as_text=False)
        if not raw:
            return {}
        document = decode_json(raw, "body")
        if not isinstance(document, dict):
            raise BadInput("body", "must be a JSON object")
        return document
    form = await request.form
    return {key: form.get(key) for key in form}


def _text_field(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None or value == "":
        raise BadInput(name, "is required")
    if not isinstance(value, str):
        raise BadInput(name, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise BadInput(name, "must not be blank")
    if len(value) > MAX_FIELD_LENGTH:
        raise BadInput(name, f"must be at most {MAX_FIELD_LENGTH} characters")
    return value


def _force_flag() -> bool:
    """``?force=true`` on a delete: forget the session even if its device cannot be deleted."""
    value = request.args.get("force", "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadInput("force", f"must be true or false, not {value[:20]!r}")


def _client_ip(settings: Settings) -> str:
    return connection_client(request, settings.trusted_proxies)


def _convert_screenshot(shot: Screenshot, fmt: str) -> bytes:
    """``shot`` re-encoded as ``fmt`` ("png" or "jpeg"); CPU work, run in a worker thread."""
    try:
        with Image.open(io.BytesIO(shot.data)) as image:
            out = io.BytesIO()
            if fmt == "png":
                image.save(out, format="PNG")
            else:
                image.convert("RGB").save(out, format="JPEG", quality=CONVERTED_JPEG_QUALITY)
    except (UnidentifiedImageError, OSError) as exc:
        raise DeviceError(f"the device's screenshot is not a readable image: {exc}") from None
    return out.getvalue()


def _header_token(filename: str) -> str:
    """The filename as ios-bridge sends it (bare), quoted only when it holds a space."""
    return f'"{filename}"' if " " in filename else filename


# --- statistics as JSON -----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A statistics value as JSON-safe data: dataclasses, mappings, tuples, enums, paths."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _capture_view(capture) -> dict[str, Any]:
    view = _plain(capture)
    view["dropped_per_viewer"] = {
        str(viewer.key): viewer.dropped for viewer in capture.fanout.per_viewer
    }
    return view
