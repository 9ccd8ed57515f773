"""The REST reference, generated from the app's own routes: ``/openapi.json`` and ``/docs``.

Nothing here is a copy to keep in step: every HTTP and WebSocket rule the app
registers becomes an operation, its summary and description are the view's
docstring, its path parameters are the rule's, and a route that reads a body
names its fields with :func:`request_body` (a pydantic model, whose JSON schema
is the document's). Errors share one schema, the one every error body has.
WebSocket routes appear as ``GET`` operations answering ``101``, tagged
``websocket``, with their close codes in the description.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from quart_trio import QuartTrio

__all__ = ["ERROR_SCHEMA", "openapi_document", "request_body"]

OPENAPI_VERSION = "3.1.0"
_BODY_ATTRIBUTE = "_bridge_actors_request_body"
_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_HIDDEN_ENDPOINTS = frozenset({"static"})
_DOCUMENTED_METHODS = ("get", "post", "put", "delete", "patch")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer: what was wrong, and which field when one was.",
    "properties": {
        "success": {"const": False},
        "detail": {"type": "string"},
        "field": {"type": "string"},
    },
    "required": ["success", "detail"],
}

F = TypeVar("F", bound=Callable[..., Any])


def request_body(model: type[pydantic.BaseModel]) -> Callable[[F], F]:
    """Document the body a route reads (as a form or a JSON object) with ``model``'s fields."""

    def mark(view: F) -> F:
        setattr(view, _BODY_ATTRIBUTE, model)
        return view

    return mark


def _openapi_path(rule: str) -> str:
    return _PARAMETER.sub(r"{\1}", rule)


def _operation_id(endpoint: str) -> str:
    """The view's own name: which blueprint holds a route is not part of the API."""
    return endpoint.rpartition(".")[2]


def _docstring(view: Callable[..., Any], endpoint: str) -> tuple[str, str]:
    doc = inspect.getdoc(view) or endpoint.replace("_", " ")
    summary, _, description = doc.partition("\n\n")
    return " ".join(summary.split()), description.strip()


def _operation(rule, view: Callable[..., Any], tag: str) -> dict[str, Any]:
    summary, description = _docstring(view, _operation_id(rule.endpoint))
    operation: dict[str, Any] = {
        "operationId": _operation_id(rule.endpoint),
        "summary": summary,
        "tags": [tag],
    }
    if description:
        operation["description"] = description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in sorted(rule.arguments)
    ]
    if parameters:
        operation["parameters"] = parameters
    model = getattr(view, _BODY_ATTRIBUTE, None)
    if model is not None:
        schema = model.model_json_schema()
        operation["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": schema}
                for media in (
                    "application/json",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data",
                )
            },
        }
    error = {
        "description": "an error; see the detail",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if rule.websocket:
        operation["responses"] = {"101": {"description": "switched to the WebSocket protocol"}}
    else:
        operation["responses"] = {"200": {"description": "success"}, "4XX": error, "5XX": error}
    return operation


def _tag_of(path: str, websocket: bool) -> str:
    if websocket:
        return "websocket"
    if path.startswith("/api/sessions"):
        return "sessions"
    return "server"


def openapi_document(app: QuartTrio, *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` has registered."""
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in _HIDDEN_ENDPOINTS:
            continue
        view = app.view_functions[rule.endpoint]
        path = _openapi_path(rule.rule)
        tag = _tag_of(path, rule.websocket)
        methods = sorted(m.lower() for m in rule.methods or ())
        for method in methods:
            if method not in _DOCUMENTED_METHODS:
                continue
            operation = _operation(rule, view, tag)
            if operation["operationId"] in used_ids:  # one view serving several rules
                operation["operationId"] += "_" + path.rsplit("/", 1)[-1]
            used_ids.add(operation["operationId"])
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
