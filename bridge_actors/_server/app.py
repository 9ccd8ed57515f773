"""The Quart-Trio application: the blueprints of :mod:`.routes`, composed.

Every HTTP route of docs/protocol.md and the WebSocket routes live in one
blueprint per part of the API. What the app itself adds is what holds for every
route: errors are mapped in one place (:func:`_register_error_handlers`), so bad
input is a 4xx whose JSON body names the field, an unknown session is a 404,
and nothing, not even our own bug, answers with a stack trace; redirects answer
JSON; and the desktop viewer of the compatible clients passes its CORS checks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from quart import Response, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .._bridge import Bridge
from .._errors import BadInput, DeviceError, SessionNotFound
from .responses import json_response, redirect_response
from .routes import BLUEPRINTS
from .state import AppState, app_state
from .uploads import upload_request_class

log = logging.getLogger("bridge_actors.http")

__all__ = ["AppState", "app_state", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The desktop viewer of the compatible clients is a local page (``file://``, whose
# origin browsers send as "null" or "file://") that fetches these per-session routes
# cross-origin, so they answer its CORS checks. Only the routes it fetches are opened,
# and each needs a session id: a page cannot learn the ids through them.
LOCAL_APP_ORIGINS = frozenset({"null", "file://"})
_LOCAL_APP_ROUTES = re.compile(
    r"/api/sessions/[^/]+/(?:screenshot/download|recording/(?:start|stop))"
)


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
    app.request_class = upload_request_class(app.request_class, settings.upload_max_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented key order
    AppState(bridge).install(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    _register_error_handlers(app)
    app.after_request(_json_redirects)
    app.after_request(_local_app_cors)
    return app


async def _json_redirects(response: Response) -> Response:
    """The router's own redirects (merging slashes) skip the error handlers and would
    answer an HTML page; an API answers JSON."""
    location = response.headers.get("Location")
    if 300 <= response.status_code < 400 and location and response.mimetype == "text/html":
        return redirect_response(location, response.status_code)
    return response


async def _local_app_cors(response: Response) -> Response:
    """Open the routes the compatible desktop viewer fetches to its local page's origin."""
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


def _register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(BadInput)
    async def bad_input(error: BadInput) -> Response:
        return json_response({"success": False, "detail": str(error), "field": error.field}, 400)

    @app.errorhandler(SessionNotFound)
    async def session_not_found(error: SessionNotFound) -> Response:
        return json_response({"success": False, "detail": "Session not found"}, 404)

    @app.errorhandler(DeviceError)
    async def device_error(error: DeviceError) -> Response:
        log.warning("device error on %s %s: %s", request.method, request.path, error)
        return json_response({"success": False, "detail": f"device error: {error}"}, 502)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return json_response(
            {"success": False, "detail": f"body: larger than {limit} bytes", "field": "body"}, 413
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        response = json_response({"success": False, "detail": error.name}, error.code or 500)
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        where = request.path if has_request_context() else "websocket"
        log.error("unexpected error on %s", where, exc_info=error)
        return json_response({"success": False, "detail": "internal server error"}, 500)
