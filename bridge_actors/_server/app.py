"""The Quart-Trio application: the blueprints of :mod:`.routes`, composed.

Every HTTP route of docs/protocol.md and the WebSocket routes live in one
blueprint per part of the API. What the app itself adds is what holds for every
route: errors are mapped in one place (:func:`_register_error_handlers`), so bad
input is a 4xx whose JSON body names the field, an unknown session is a 404,
and nothing, not even our own bug, answers with a stack trace; redirects answer
JSON; every route is behind the gate of :mod:`.guard` (Host, Origin, credentials,
role); and browsers get the headers of :mod:`.browser_headers`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from quart import Response, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .._bridge import Bridge
from .._errors import BadInput, DeviceError, SessionNotFound
from . import browser_headers, guard
from .latencies import ROUTE_KEY, UNMATCHED, RequestTimer
from .responses import json_response, redirect_response
from .routes import BLUEPRINTS
from .state import AppState, app_state
from .uploads import upload_request_class

log = logging.getLogger("bridge_actors.http")

__all__ = ["AppState", "app_state", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


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
    browser_headers.install(app, settings.allowed_origins)
    # Before the guard's own check, so a refused request still names its route.
    app.before_request(_name_the_route)
    guard.install(app, app_state(app).gate)
    app.asgi_app = RequestTimer(app.asgi_app, app_state(app).handlers.latencies)  # type: ignore[method-assign]
    return app


async def _name_the_route() -> None:
    """Tell the request timer which route this is: its template, so no id becomes a label."""
    rule = request.url_rule
    request.scope[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED


async def _json_redirects(response: Response) -> Response:
    """The router's own redirects (merging slashes) skip the error handlers and would
    answer an HTML page; an API answers JSON."""
    location = response.headers.get("Location")
    if 300 <= response.status_code < 400 and location and response.mimetype == "text/html":
        return redirect_response(location, response.status_code)
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
        app_state(app).bodies_too_large += 1
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
