"""A session's extras: its screenshot as a file and the WebRTC presets.

These answer what the compatible clients ask for beyond docs/protocol.md: a
download name ending in ``.png`` (the screenshot converted to match) and the
WebRTC quality presets (reported only; the video socket streams). Recording
lives in :mod:`.recording`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from PIL import Image, UnidentifiedImageError
from quart import Blueprint, Response

from ..._device import Screenshot
from ..._errors import BadInput, DeviceError
from ..authz import requires
from ..fields import ScreenshotDownloadBody, request_fields
from ..openapi import request_body
from ..state import current_state

__all__ = ["WEBRTC_PRESETS", "extras"]

SCREENSHOT_EXTENSIONS = {"jpeg": "jpg", "png": "png"}
SCREENSHOT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
# A requested download name with one of these endings gets that format, converted if need be.
FORMAT_OF_EXTENSION = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
CONVERTED_JPEG_QUALITY = 90
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")

# The presets of the compatible route; only reported, WebRTC itself is a later milestone.
WEBRTC_PRESETS: Mapping[str, Mapping[str, float]] = {
    "low": {"fps": 30, "resolution": 1.0, "quality": 70},
    "medium": {"fps": 45, "resolution": 1.5, "quality": 85},
    "high": {"fps": 60, "resolution": 2.0, "quality": 95},
    "ultra": {"fps": 60, "resolution": 2.5, "quality": 98},
}

extras = Blueprint("extras", __name__)


@extras.get("/api/sessions/<session_id>/screenshot")
@requires("watch")
async def screenshot(session_id: str) -> Response:
    """The device's screen now, as an image attachment."""
    return await _screenshot_response(session_id, None)


@extras.post("/api/sessions/<session_id>/screenshot/download")
@request_body(ScreenshotDownloadBody)
@requires("watch")
async def screenshot_download(session_id: str) -> Response:
    """The device's screen as a download named ``filename``.

    A name ending in ``.png`` or ``.jpg`` picks the format, converted if need be."""
    current_state().bridge.get_session(session_id)  # 404 before reading a body we would not use
    fields = await request_fields()
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
    shot = await current_state().bridge.screenshot(session_id)
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


@extras.get("/webrtc/quality/<session_id>/<quality>")
@requires("watch")
async def webrtc_quality(session_id: str, quality: str) -> dict[str, Any]:
    """The WebRTC preset named ``quality`` (reported only; stream from the video socket)."""
    current_state().bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    if quality not in WEBRTC_PRESETS:
        raise BadInput("quality", f"must be one of {', '.join(WEBRTC_PRESETS)}")
    return {
        "success": True,
        "session_id": session_id,
        "quality": quality,
        "settings": dict(WEBRTC_PRESETS[quality]),
    }
