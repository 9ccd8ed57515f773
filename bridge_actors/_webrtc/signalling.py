"""The messages of ``/ws/{id}/webrtc``, as ios-bridge's viewers send them, parsed strictly.

ios-bridge's signalling is JSON objects with a ``type``:

* ``{"type": "offer", "sdp": "v=0..."}``, answered ``{"type": "answer", "sdp", "connection_id"}``;
* ``{"type": "ice-candidate", "candidate": {"candidate", "sdpMid", "sdpMLineIndex"}}``,
  answered ``{"type": "ice-candidate-processed", ...}``; an empty or missing candidate is
  the end of the client's candidates;
* ``{"type": "quality-change", "quality": "high"}`` and the desktop viewer's
  ``{"type": "start-stream", "quality", "fps"}``: this viewer's preference. ios-bridge
  restarted its one shared stream for it, cutting every other viewer off; here the
  encoder is shared and stays as it is, the preference is recorded for this viewer only;
* ``{"type": "status-request"}``, answered ``{"type": "status-response", ...}``.

Everything here is pure: :func:`parse_signal` turns a decoded message into one of
the dataclasses below or raises :class:`~bridge_actors.BadInput` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import BadInput

__all__ = [
    "MAX_SDP_CHARS",
    "QUALITY_PRESETS",
    "Candidate",
    "Offer",
    "Preference",
    "Signal",
    "StatusRequest",
    "offer_problem",
    "parse_signal",
    "usable_offer_sdp",
]

MAX_SDP_CHARS = 60_000  # a browser's offer is 2-10 KB; anything near this is not one
MAX_CANDIDATE_CHARS = 1_000
MIN_FPS, MAX_FPS = 1, 120

# ios-bridge's presets, reported back as it does; the shared H.264 stream is not changed.
QUALITY_PRESETS: Mapping[str, Mapping[str, float]] = {
    "low": {"fps": 30, "resolution": 1.0, "quality": 70},
    "medium": {"fps": 45, "resolution": 1.5, "quality": 85},
    "high": {"fps": 60, "resolution": 2.0, "quality": 95},
    "ultra": {"fps": 60, "resolution": 2.5, "quality": 98},
}


@dataclass(frozen=True, slots=True)
class Offer:
    sdp: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One trickled ICE candidate; ``candidate`` None is the end of the candidates."""

    candidate: str | None
    sdp_mid: str | None
    sdp_mline_index: int | None


@dataclass(frozen=True, slots=True)
class Preference:
    """A viewer's quality/fps wish (``quality-change`` or ``start-stream``)."""

    kind: str
    quality: str | None
    fps: float | None


@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


Signal = Offer | Candidate | Preference | StatusRequest

SIGNAL_TYPES = ("offer", "ice-candidate", "quality-change", "start-stream", "status-request")


def parse_signal(message: Mapping[str, Any]) -> Signal:
    """One client message of the WebRTC socket. Raises BadInput naming what was wrong."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise BadInput("type", f"must be one of {', '.join(SIGNAL_TYPES)}")
    if kind == "offer":
        return Offer(_offer_sdp(message))
    if kind == "ice-candidate":
        return _candidate(message.get("candidate"))
    if kind in ("quality-change", "start-stream"):
        return Preference(kind, _quality(message.get("quality")), _fps(message.get("fps")))
    if kind == "status-request":
        return StatusRequest()
    shown = kind if len(kind) <= 40 else kind[:37] + "..."
    raise BadInput(
        "type", f"unknown message type {shown!r}; expected one of {', '.join(SIGNAL_TYPES)}"
    )


def _offer_sdp(message: Mapping[str, Any]) -> str:
    sdp = message.get("sdp")
    nested = message.get("offer")
    if sdp is None and isinstance(nested, Mapping):
        sdp = nested.get("sdp")  # {"type": "offer", "offer": RTCSessionDescription}
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadInput("sdp", "must be the offer's SDP text")
    if len(sdp) > MAX_SDP_CHARS:
        raise BadInput("sdp", f"must be at most {MAX_SDP_CHARS} characters")
    problem = offer_problem(sdp)
    if problem is not None:
        raise BadInput("sdp", problem)
    return sdp


def _candidate(value: Any) -> Candidate:
    if value is None or value == "":
        return Candidate(None, None, None)
    if isinstance(value, str):
        value = {"candidate": value}
    if not isinstance(value, Mapping):
        raise BadInput("candidate", "must be an object with a 'candidate' string")
    text = value.get("candidate")
    if text in (None, ""):
        return Candidate(None, None, None)
    if not isinstance(text, str):
        raise BadInput("candidate", "'candidate' must be a string")
    if len(text) > MAX_CANDIDATE_CHARS:
        raise BadInput("candidate", f"must be at most {MAX_CANDIDATE_CHARS} characters")
    body = text.removeprefix("a=").removeprefix("candidate:")
    if len(body.split()) < 8:
        raise BadInput("candidate", "is not an ICE candidate line (RFC 8839)")
    mid = value.get("sdpMid")
    if mid is not None and not isinstance(mid, str):
        raise BadInput("sdpMid", "must be a string or null")
    index = value.get("sdpMLineIndex")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise BadInput("sdpMLineIndex", "must be a non-negative integer or null")
    return Candidate(body, mid, index)


def _quality(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in QUALITY_PRESETS:
        raise BadInput("quality", f"must be one of {', '.join(QUALITY_PRESETS)}")
    return value


def _fps(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput("fps", f"must be a number from {MIN_FPS} to {MAX_FPS}")
    if not MIN_FPS <= value <= MAX_FPS:
        raise BadInput("fps", f"must be a number from {MIN_FPS} to {MAX_FPS}")
    return float(value)


_MEDIA_LINE = re.compile(r"^m=(\w+) ", re.MULTILINE)
_H264_RTPMAP = re.compile(r"^a=rtpmap:\d+ H264/90000", re.MULTILINE | re.IGNORECASE)


def offer_problem(sdp: str) -> str | None:
    """Why this offer cannot be answered with our H.264 video, or None if it can."""
    if not sdp.lstrip().startswith("v=0"):
        return "is not SDP (it must start with v=0)"
    if "video" not in _MEDIA_LINE.findall(sdp):
        return "offers no video (add a recvonly video transceiver)"
    if not _H264_RTPMAP.search(sdp):
        return "offers no H.264 video; this server sends H.264 only"
    return None


def usable_offer_sdp(sdp: str) -> str:
    """The offer without candidates we must not try: mDNS names (``.local``), which
    would make the ICE agent query multicast DNS, and TCP candidates, which aiortc
    does not use."""
    kept = [line for line in re.split(r"\r?\n", sdp) if not _unusable_candidate(line)]
    return "\r\n".join(kept)


def usable_candidate(candidate: Candidate) -> bool:
    return candidate.candidate is not None and not _unusable_candidate(
        "a=candidate:" + candidate.candidate
    )


def _unusable_candidate(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return False
    parts = line.split()
    if len(parts) < 8:
        return True
    return parts[2].lower() != "udp" or parts[4].lower().endswith(".local")
