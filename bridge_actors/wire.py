"""The WebSocket wire format: what a video, screenshot or control client reads.

The one definition of the messages of docs/protocol.md that are more than plain
JSON objects, for the server and for any client (the benchmarks use it too):

* the binary video message (``?format=binary``): a 32-byte big-endian header,
  then the JPEG, or with ``&codec=h264`` one H.264 access unit in Annex B.
  :func:`encode_binary_header` and :func:`parse_binary_header`;
* the JSON ``video_frame`` text, keys in the order ios-bridge clients know:
  :func:`video_frame_text`;
* the ``screenshot`` message: :func:`screenshot_message`;
* the close codes a socket ends with.

What is the same for every viewer of a frame (its base64 text, its binary
message) is made once per frame, by the first viewer that sends it, through
:meth:`Frame.shared <bridge_actors.Frame.shared>`; the others reuse it.

Binary header layout (all big-endian)::

    offset size field
         0    4 magic "BAV1"
         4    4 seq            uint32, capture sequence number (wraps at 2**32)
         8    8 timestamp      float64, capture wall clock, epoch seconds
        16    2 pixel_width    uint16
        18    2 pixel_height   uint16
        20    2 point_width    uint16
        22    2 point_height   uint16
        24    4 input_seq      uint32, last control applied before capture
        28    1 codec          1 = JPEG, 2 = H.264 (Annex B)
        29    1 flags          bit 0: keyframe (an IDR, SPS and PPS in front); JPEG: always 1
        30    2 reserved       zero
"""

from __future__ import annotations

import base64
import math
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._device import Frame, Screenshot

__all__ = [
    "BINARY_HEADER",
    "BINARY_HEADER_SIZE",
    "BINARY_MAGIC",
    "CODEC_H264",
    "CODEC_JPEG",
    "FLAG_KEYFRAME",
    "FORBIDDEN",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "MESSAGE_TOO_BIG",
    "MISDIRECTED",
    "NORMAL",
    "NOT_FOUND",
    "POLICY",
    "PROTOCOL_ERROR",
    "RATE_LIMITED",
    "SESSION_FULL",
    "TRY_AGAIN_LATER",
    "UNAUTHORIZED",
    "binary_frame",
    "binary_message",
    "encode_binary_header",
    "h264_message",
    "jpeg_base64",
    "parse_binary_header",
    "screenshot_message",
    "video_frame_text",
]

# --- close codes ------------------------------------------------------------------------------

NORMAL = 1000  # the client closed, or the socket's work is done
GOING_AWAY = 1001  # the server is shutting down, or the capture stopped (idle, session ended)
PROTOCOL_ERROR = 1002  # the client broke RFC 6455 framing (sent by the WebSocket layer)
INVALID_DATA = 1007  # a text message that is not UTF-8 (sent by the WebSocket layer)
POLICY = 1008  # bad input, too many bad messages, a viewer evicted for falling behind
MESSAGE_TOO_BIG = 1009  # a message over the size limit (sent by the WebSocket layer)
INTERNAL_ERROR = 1011  # the capture failed, a device error, or a bug of ours
TRY_AGAIN_LATER = 1013  # the server is at its limit of connections or captures
NOT_FOUND = 4004  # no such session, or it was deleted while connected
SESSION_FULL = 4009  # the session has as many connections as it may
RATE_LIMITED = 4029  # too many connections from this client; reason "retry_after=N"
UNAUTHORIZED = 4401  # no credentials, or invalid or expired ones (HTTP 401)
FORBIDDEN = 4403  # the role may not, the session is not granted, or the Origin is not allowed
MISDIRECTED = 4421  # the Host header names no name of this server (HTTP 421)

# --- the binary video message -----------------------------------------------------------------

BINARY_MAGIC = b"BAV1"
CODEC_JPEG = 1
CODEC_H264 = 2
FLAG_KEYFRAME = 1
BINARY_HEADER = struct.Struct(">4sIdHHHHIBB2x")
BINARY_HEADER_SIZE = BINARY_HEADER.size
assert BINARY_HEADER_SIZE == 32


def encode_binary_header(
    *,
    seq: int,
    timestamp: float,
    pixel_width: int,
    pixel_height: int,
    point_width: int,
    point_height: int,
    input_seq: int,
    codec: int = CODEC_JPEG,
    keyframe: bool = True,
) -> bytes:
    """The 32-byte header of a binary video message; seq and input_seq wrap at 2**32.

    Every JPEG is a keyframe (a viewer may start at any of them)."""
    return BINARY_HEADER.pack(
        BINARY_MAGIC,
        seq & 0xFFFFFFFF,
        timestamp,
        pixel_width,
        pixel_height,
        point_width,
        point_height,
        input_seq & 0xFFFFFFFF,
        codec,
        FLAG_KEYFRAME if keyframe else 0,
    )


def parse_binary_header(message: bytes) -> dict[str, Any]:
    """Decode a binary video message: its header fields, and what follows as ``payload``
    (also as ``jpeg``, the name older clients know).

    Raises ValueError for a message shorter than the header or with another magic.
    """
    if len(message) < BINARY_HEADER_SIZE:
        raise ValueError(f"binary frame shorter than its {BINARY_HEADER_SIZE}-byte header")
    magic, seq, timestamp, pw, ph, ptw, pth, input_seq, codec, flags = BINARY_HEADER.unpack_from(
        message
    )
    if magic != BINARY_MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    return {
        "seq": seq,
        "timestamp": timestamp,
        "pixel_width": pw,
        "pixel_height": ph,
        "point_width": ptw,
        "point_height": pth,
        "input_seq": input_seq,
        "codec": codec,
        "keyframe": bool(flags & FLAG_KEYFRAME),
        "payload": message[BINARY_HEADER_SIZE:],
        "jpeg": message[BINARY_HEADER_SIZE:],
    }


def binary_message(frame: Frame) -> bytes:
    """The ``?format=binary`` message of ``frame``, made anew (see :func:`binary_frame`)."""
    header = encode_binary_header(
        seq=frame.seq,
        timestamp=frame.timestamp,
        pixel_width=frame.pixel_width,
        pixel_height=frame.pixel_height,
        point_width=frame.point_width,
        point_height=frame.point_height,
        input_seq=frame.input_seq,
    )
    return header + _jpeg_of(frame)


def _jpeg_of(frame: Frame) -> bytes:
    if frame.jpeg is None:
        raise ValueError(f"frame {frame.seq} has no JPEG (it was captured for an encoder)")
    return frame.jpeg


def binary_frame(frame: Frame) -> bytes:
    """The ``?format=binary`` message of ``frame``: made once, shared by every viewer."""
    return frame.shared(binary_message)


def h264_message(
    data: bytes,
    *,
    keyframe: bool,
    seq: int,
    timestamp: float,
    pixel_width: int,
    pixel_height: int,
    point_width: int,
    point_height: int,
    input_seq: int,
) -> bytes:
    """The ``?format=binary&codec=h264`` message of one access unit (Annex B ``data``)."""
    header = encode_binary_header(
        seq=seq,
        timestamp=timestamp,
        pixel_width=pixel_width,
        pixel_height=pixel_height,
        point_width=point_width,
        point_height=point_height,
        input_seq=input_seq,
        codec=CODEC_H264,
        keyframe=keyframe,
    )
    return header + data


# --- the JSON messages ------------------------------------------------------------------------


def _base64(frame: Frame) -> str:
    return base64.b64encode(_jpeg_of(frame)).decode("ascii")


def jpeg_base64(frame: Frame) -> str:
    """The base64 text of ``frame``'s JPEG: made once, shared by every viewer."""
    return frame.shared(_base64)


def video_frame_text(frame: Frame, number: int, fps: int) -> str:
    """The JSON ``video_frame`` message, keys in protocol order, built around the shared base64.

    ``number`` counts the frames of this connection, ``fps`` is the rate this
    viewer receives. Concatenation instead of ``json.dumps``: the base64 text
    (tens of kilobytes, computed once per frame for every viewer) is copied
    once, never re-escaped.
    """
    return (
        f'{{"type":"video_frame","data":"{jpeg_base64(frame)}",'
        f'"pixel_width":{int(frame.pixel_width)},"pixel_height":{int(frame.pixel_height)},'
        f'"point_width":{int(frame.point_width)},"point_height":{int(frame.point_height)},'
        f'"frame":{int(number)},"timestamp":{_json_number(frame.timestamp)},"fps":{int(fps)},'
        f'"format":"jpeg","seq":{int(frame.seq)},"input_seq":{int(frame.input_seq)}}}'
    )


def _json_number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else "null"


def screenshot_message(shot: Screenshot) -> dict[str, Any]:
    """The ``screenshot`` message of the screenshot socket (also the REST screenshot's shape)."""
    return {
        "type": "screenshot",
        "data": base64.b64encode(shot.data).decode("ascii"),
        "pixel_width": shot.pixel_width,
        "pixel_height": shot.pixel_height,
        "point_width": shot.point_width,
        "point_height": shot.point_height,
        "format": shot.format,
    }
