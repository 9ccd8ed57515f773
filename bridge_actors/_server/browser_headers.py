"""The headers a browser reads: CORS for listed origins only, and the viewer's security headers.

CORS answers name the requesting origin, and only when the operator listed it
(``BRIDGE_ALLOWED_ORIGINS``; the compatible desktop viewer's ``null`` and
``file://`` among them, if wanted): never ``*``, never an origin merely because
it asked. The viewer's pages get a Content-Security-Policy that allows no inline
script and no framing, so an injected string cannot run and a page cannot be
laid under another site's clicks.
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

__all__ = ["CONTENT_SECURITY_POLICY", "install"]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_ALLOWED_METHODS = "GET, POST, DELETE"
_ALLOWED_HEADERS = "Authorization, Content-Type"


def install(app: QuartTrio, allowed_origins: tuple[str, ...]) -> None:
    listed = {origin.strip().rstrip("/").lower(): origin for origin in allowed_origins}

    @app.after_request
    async def browser_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            response.headers.setdefault("X-Frame-Options", "DENY")
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().rstrip("/").lower() in listed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Content-Disposition"
            response.vary.add("Origin")
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = _ALLOWED_METHODS
                response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        return response
