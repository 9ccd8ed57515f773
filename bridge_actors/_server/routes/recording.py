"""Recording a session's screen: start, stop (the MP4 as a download), status, cleanup.

The shapes are ios-bridge's: ``{"success": true, "message": …, "session_id": …}``
on start, the MP4 as an attachment named ``ios-recording_<id8>_<time>.mp4`` on
stop, ``is_recording`` in the status (ours adds the state, why it stopped, what
was written and the caps), and ``{"success": true, "message": …}`` from
``cleanup-recordings``. Refusals are ``{"success": false, "detail": …}``: 409 for
a second start, 400 for a stop with nothing recorded, 503 when no H.264 feed
can start. The file is removed as its download begins and streamed from the open file.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response

from ..._errors import CaptureFailed, CaptureStopped, ServerBusy
from ..._video.recorder import NoRecording, Recording, RecordingInProgress
from ..audit import record
from ..authz import requires
from ..responses import json_response
from ..state import current_state

__all__ = ["recording"]

recording = Blueprint("recording", __name__)

CHUNK_BYTES = 1 << 20


@recording.errorhandler(RecordingInProgress)
async def in_progress(error: RecordingInProgress) -> Response:
    return json_response({"success": False, "detail": str(error)}, 409)


@recording.errorhandler(NoRecording)
async def nothing_recorded(error: NoRecording) -> Response:
    return json_response({"success": False, "detail": str(error)}, 400)


@recording.post("/api/sessions/<session_id>/recording/start")
@requires("control")
async def start_recording(session_id: str) -> Response:
    """Start recording the session's screen (409 if it already is)."""
    try:
        await current_state().bridge.start_recording(session_id)
    except (CaptureFailed, CaptureStopped, ServerBusy) as error:
        return json_response({"success": False, "detail": f"recording: {error}"}, 503)
    record("recording.start", session_id)
    return json_response(
        {"success": True, "message": "Recording started", "session_id": session_id}, 200
    )


@recording.post("/api/sessions/<session_id>/recording/stop")
@requires("control")
async def stop_recording(session_id: str) -> Response:
    """Stop the recording and answer the MP4 as a download; the file is then removed."""
    bridge = current_state().bridge
    finished = await bridge.stop_recording(session_id)
    record(
        "recording.stop",
        session_id,
        frames=finished.frames,
        bytes=finished.bytes,
        reason=finished.stop_reason,
    )
    if bridge.recordings.get(session_id) is not finished:
        raise NoRecording("No recording in progress")  # a concurrent stop took it
    if finished.state != "finished":
        bridge.recordings.discard(session_id)
        raise NoRecording(f"No recording to download: {finished.stop_reason}")
    size = (await trio.Path(finished.path).stat()).st_size
    handle = await trio.open_file(finished.path, "rb")
    # Removed now: the open handle keeps the bytes until they are sent, and nothing is
    # left behind if the client goes away halfway.
    bridge.recordings.discard(session_id)
    filename = f"ios-recording_{session_id[:8]}_{int(time.time())}.mp4"
    return Response(
        _streamed(handle),
        content_type="video/mp4",
        headers={
            "Content-Disposition": f"attachment; filename={filename}",
            "Content-Length": str(size),
        },
    )


async def _streamed(handle: Any) -> AsyncIterator[bytes]:
    """The file in chunks, never whole in memory (a recording may be a gigabyte)."""
    try:
        while chunk := await handle.read(CHUNK_BYTES):
            yield chunk
    finally:
        await handle.aclose()


@recording.get("/api/sessions/<session_id>/recording/status")
@requires("control")
async def recording_status(session_id: str) -> dict[str, Any]:
    """Whether the session is being recorded, for how long, and why a recording stopped."""
    bridge = current_state().bridge
    bridge.get_session(session_id)
    await trio.lowlevel.checkpoint()
    current = bridge.recordings.get(session_id)
    return {
        "success": True,
        "session_id": session_id,
        "is_recording": current is not None and current.active,
        **_describe(current),
        "max_duration_seconds": bridge.recordings.caps.max_seconds,
        "max_bytes": bridge.recordings.caps.max_bytes,
    }


def _describe(current: Recording | None) -> dict[str, Any]:
    if current is None:
        return {"state": "idle", "stop_reason": None, "elapsed_seconds": 0.0, "frames": 0,
                "bytes": 0}  # fmt: skip
    return {
        "state": current.state,
        "stop_reason": current.stop_reason,
        "elapsed_seconds": round(current.elapsed(), 3),
        "frames": current.frames,
        "bytes": current.bytes,
    }


@recording.post("/api/sessions/cleanup-recordings")
@requires("admin")
async def cleanup_recordings() -> dict[str, Any]:
    """Stop every recording and remove every recorded file."""
    removed = await current_state().bridge.recordings.cleanup()
    record("recording.cleanup", None, removed=removed)
    return {"success": True, "message": "All recordings cleaned up", "removed": removed}
