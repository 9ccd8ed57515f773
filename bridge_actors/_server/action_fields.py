"""The checks of the device-action routes' fields: each bad value a BadInput naming its field.

Pure functions of the values a request carried, so the property tests call them
directly: a URL to open (dangerous schemes refused, ``https://`` added when
there is none), coordinates, an orientation, an APNs payload (at most 4 KB, as
APNs allows), a log query, and a path on the device (relative, no ``..``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .._actions import ORIENTATIONS, LogQuery, Orientation
from .._backends.archives import is_bundle_id
from .._errors import BadInput
from .json_codec import decode_json

__all__ = [
    "BLOCKED_SCHEMES",
    "MAX_PUSH_BYTES",
    "bundle_id_field",
    "coordinate",
    "device_path_parts",
    "log_query",
    "orientation_field",
    "push_payload",
    "url_to_open",
]

MAX_URL_LENGTH = 2048
MAX_PUSH_BYTES = 4096
MAX_LOG_LINES = 1000
BLOCKED_SCHEMES = ("file", "javascript", "data", "vbscript")
# Schemes whose URLs carry no "//" (tel:123, mailto:a@b); any other "name:" followed by
# digits is a host and port (localhost:8080), not a scheme.
_OPAQUE_SCHEMES = frozenset({"mailto", "tel", "sms", "facetime", "facetime-audio", "maps", "about"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
_PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._\-]{0,99}")
LOG_LEVELS = ("all", "error", "warning", "info", "debug")


def _required_text(fields: Mapping[str, Any], name: str, limit: int) -> str:
    value = fields.get(name)
    if value is None or value == "":
        raise BadInput(name, "is required")
    if not isinstance(value, str):
        raise BadInput(name, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise BadInput(name, "must not be blank")
    if len(value) > limit:
        raise BadInput(name, f"must be at most {limit} characters")
    return value


def url_to_open(fields: Mapping[str, Any]) -> str:
    """The ``url`` field, with ``https://`` in front when it names no scheme."""
    url = _required_text(fields, "url", MAX_URL_LENGTH)
    if any(not char.isprintable() or char.isspace() for char in url):
        raise BadInput("url", "must not contain spaces or control characters")
    match = _SCHEME.fullmatch(url)
    if match is not None:
        scheme, rest = match[1].lower(), match[2]
        if scheme in BLOCKED_SCHEMES:
            raise BadInput("url", f"the {scheme}: scheme is not allowed")
        if rest.startswith("//") or scheme in _OPAQUE_SCHEMES or not rest[:1].isdigit():
            return url
    return "https://" + url


def bundle_id_field(value: Any, name: str = "bundle_id") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(name, "is required")
    if not is_bundle_id(value.strip()):
        raise BadInput(name, f"is not a bundle id (letters, digits, '.', '-'): {value[:80]!r}")
    return value.strip()


def coordinate(fields: Mapping[str, Any], name: str, limit: float) -> float:
    value = fields.get(name)
    if value is None or value == "":
        raise BadInput(name, "is required")
    if isinstance(value, bool):
        raise BadInput(name, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(name, f"must be a number, not {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise BadInput(name, f"must be between {-limit:g} and {limit:g} degrees")
    return number


def orientation_field(fields: Mapping[str, Any]) -> Orientation:
    value = _required_text(fields, "orientation", 40).lower()
    if value not in ORIENTATIONS:
        raise BadInput("orientation", f"must be one of {', '.join(ORIENTATIONS)}")
    return value  # type: ignore[return-value]


def push_payload(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(bundle_id, payload)``: the payload an APNs JSON object with an ``aps`` dictionary,
    given as an object (JSON body) or as JSON text (form), at most 4 KB encoded."""
    bundle_id = bundle_id_field(fields.get("bundle_id"))
    payload = fields.get("payload")
    if isinstance(payload, str):
        if len(payload.encode()) > MAX_PUSH_BYTES:
            raise BadInput("payload", f"larger than {MAX_PUSH_BYTES} bytes")
        payload = decode_json(payload.encode(), "payload")
    if not isinstance(payload, dict):
        raise BadInput("payload", "must be a JSON object")
    aps = payload.get("aps")
    if not isinstance(aps, dict) or not aps:
        raise BadInput("payload", "must hold an 'aps' dictionary (alert, badge, sound...)")
    if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_PUSH_BYTES:
        raise BadInput("payload", f"larger than {MAX_PUSH_BYTES} bytes")
    return bundle_id, payload


def log_query(args: Mapping[str, Any]) -> LogQuery:
    raw_lines = args.get("lines") or "100"
    try:
        lines = int(raw_lines)
    except (TypeError, ValueError):
        raise BadInput("lines", f"must be a whole number, not {str(raw_lines)[:20]!r}") from None
    if not 1 <= lines <= MAX_LOG_LINES:
        raise BadInput("lines", f"must be from 1 to {MAX_LOG_LINES}")
    level = (args.get("level") or "all").strip().lower()
    if level not in LOG_LEVELS:
        raise BadInput("level", f"must be one of {', '.join(LOG_LEVELS)}")
    process = (args.get("process") or "").strip() or None
    if process is not None and not _PROCESS_NAME.fullmatch(process):
        raise BadInput("process", "must be a process name (letters, digits, space, '.', '_', '-')")
    return LogQuery(lines, level, process)  # type: ignore[arg-type]


def device_path_parts(value: Any) -> tuple[str, ...]:
    """The components of a ``device_path``, relative to the data directory or container.

    A leading ``/`` means that directory's top; ``..``, NUL and backslashes are refused
    (symlinks are refused where the path is resolved, on disk)."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput("device_path", "is required")
    if len(value) > 1024 or "\x00" in value or "\\" in value:
        raise BadInput("device_path", "must be at most 1024 characters, without NUL or '\\'")
    parts = tuple(part for part in value.strip().split("/") if part not in ("", "."))
    if ".." in parts:
        raise BadInput("device_path", "must not contain '..'")
    if not parts:
        raise BadInput("device_path", "must name a file")
    return parts
