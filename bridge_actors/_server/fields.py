"""What a request's body and query say, checked once: each bad field is a BadInput naming it.

A body may come as a form (urlencoded or multipart) or as a JSON object; both
reach the same checks, so the compatible clients (forms) and scripts (JSON) get
the same answers. The pydantic models here document the fields in the OpenAPI
reference and take their limits from the same constants the checks use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from quart import request

from .._device import Configurations
from .._errors import BadInput
from .json_codec import decode_json

__all__ = [
    "MAX_FIELD_LENGTH",
    "CreateSessionBody",
    "ScreenshotDownloadBody",
    "force_flag",
    "request_fields",
    "session_request",
    "text_field",
]

MAX_FIELD_LENGTH = 200


class CreateSessionBody(pydantic.BaseModel):
    """The fields of ``POST /api/sessions/create`` (a form or a JSON object)."""

    device_type: str = pydantic.Field(
        description="one of /api/sessions/configurations' device_types",
        max_length=MAX_FIELD_LENGTH,
    )
    ios_version: str = pydantic.Field(
        description="one of /api/sessions/configurations' ios_versions",
        max_length=MAX_FIELD_LENGTH,
    )


class ScreenshotDownloadBody(pydantic.BaseModel):
    """The fields of ``POST /api/sessions/{session_id}/screenshot/download``."""

    filename: str | None = pydantic.Field(
        None,
        description="1 to 128 letters, digits, spaces, '.', '_' or '-'; "
        "ending in .png or .jpg picks the format",
    )


async def request_fields() -> Mapping[str, Any]:
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


def text_field(fields: Mapping[str, Any], name: str) -> str:
    """The required text field ``name``, stripped, at most ``MAX_FIELD_LENGTH`` characters."""
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


def session_request(fields: Mapping[str, Any], offered: Configurations) -> tuple[str, str]:
    """``(device_type, ios_version)`` of a session-create body, both among those ``offered``.

    The one check of a create request, whichever encoding its body came in."""
    device_type = text_field(fields, "device_type")
    ios_version = text_field(fields, "ios_version")
    if device_type not in offered.device_types:
        known = ", ".join(offered.device_types)
        raise BadInput("device_type", f"unknown device type {device_type!r}; known: {known}")
    if ios_version not in offered.ios_versions:
        known = ", ".join(offered.ios_versions)
        raise BadInput("ios_version", f"unknown iOS version {ios_version!r}; known: {known}")
    return device_type, ios_version


def force_flag() -> bool:
    """``?force=true`` on a delete: forget the session even if its device cannot be deleted."""
    value = request.args.get("force", "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadInput("force", f"must be true or false, not {value[:20]!r}")
