"""JSON answers built by hand, for the routes and handlers that must fix their bytes.

Quart's own JSON provider is used for ordinary bodies; these are for answers
whose encoding must be compact and exact (errors, redirects, the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Response

from .json_codec import encode_json

__all__ = ["json_response", "redirect_response"]


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        encode_json(body, compact=True),
        status=status,
        content_type="application/json",
        headers=dict(headers or {}),
    )


def redirect_response(target: str, status: int) -> Response:
    """A redirect whose body is JSON, like every other answer of the API."""
    body = {"success": False, "detail": f"moved to {target}", "location": target}
    response = json_response(body, status)
    response.headers["Location"] = target
    return response
