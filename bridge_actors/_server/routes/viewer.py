"""The built-in web viewer and the reference: ``/``, ``/docs`` and ``/openapi.json``.

The viewer's own files are the app's static folder (``/static``); these routes
serve its entry pages and the OpenAPI document generated from the app's routes.
"""

from __future__ import annotations

import importlib.metadata

import trio
from quart import Blueprint, Response, current_app

from ..openapi import openapi_document
from ..probes import SERVICE_NAME
from ..responses import json_response

__all__ = ["viewer"]

viewer = Blueprint("viewer", __name__)


@viewer.get("/")
async def index() -> Response:
    """The built-in web viewer."""
    return await current_app.send_static_file("index.html")


@viewer.get("/openapi.json")
async def openapi() -> Response:
    """This reference, as an OpenAPI 3.1 document generated from the routes."""
    await trio.lowlevel.checkpoint()
    document = openapi_document(current_app, title=SERVICE_NAME, version=_package_version())
    return json_response(document, 200)


@viewer.get("/docs")
async def docs() -> Response:
    """This reference, as a page (rendered locally from ``/openapi.json``)."""
    return await current_app.send_static_file("docs.html")


def _package_version() -> str:
    try:
        return importlib.metadata.version(SERVICE_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"
