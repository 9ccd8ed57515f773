"""The WebSocket routes of a session; what each socket does is :class:`~..ws.SocketHandlers`."""

from __future__ import annotations

from quart import Blueprint

from ..authz import requires
from ..state import current_state

__all__ = ["sockets"]

sockets = Blueprint("sockets", __name__)


@sockets.websocket("/ws/<session_id>/video")
@requires("watch")
async def video_socket(session_id: str) -> None:
    """Frames of the device: JSON ``video_frame`` messages, or binary with ``?format=binary``.

    ``?fps=N`` caps this viewer's rate. Close codes: 4004 unknown or deleted session,
    4009 per-session cap, 4029 rate limited, 1013 server busy, 1008 evicted or bad input,
    1009 message too big, 1011 capture failed, 1001 shutting down."""
    await current_state().handlers.video(session_id)


@sockets.websocket("/ws/<session_id>/control")
@requires("watch")
async def control_socket(session_id: str) -> None:
    """Control messages (tap, swipe, text, button, key); those with an ``id`` are acknowledged.

    A bad message gets an ``{"type": "error"}`` reply naming what was wrong; 50 in a row
    close the socket with 1008."""
    await current_state().handlers.control(session_id)


@sockets.websocket("/ws/<session_id>/screenshot")
@requires("watch")
async def screenshot_socket(session_id: str) -> None:
    """A screenshot now and after every ``{"t": "refresh"}`` or control message."""
    await current_state().handlers.screenshot(session_id)


@sockets.websocket("/ws/<session_id>/logs")
@requires("watch")
async def logs_socket(session_id: str) -> None:
    """The device's log lines; ``{"type": "filter"}`` narrows them, ``{"type": "clear"}``."""
    await current_state().handlers.logs(session_id)


@sockets.websocket("/ws/<session_id>/webrtc")
@requires("watch")
async def webrtc_socket(session_id: str) -> None:
    """WebRTC signalling is not served: one error message naming the video socket instead."""
    await current_state().handlers.webrtc(session_id)
