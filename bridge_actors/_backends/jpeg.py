"""JPEG encoding with FFmpeg's ``mjpeg`` encoder, kept open for a whole capture.

Opening a codec, building its quantisation tables and a colour converter costs
far more than encoding one small frame, so a capture makes one ``JpegEncoder``
and reuses it for every frame. Encoding is CPU work (PyAV releases the GIL while
FFmpeg runs), so callers run ``encode`` in a worker thread; one encoder is not
safe to share between threads at the same time.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .._errors import BadInput

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_ENCODER_PIXEL_FORMAT = "yuvj420p"  # full-range 4:2:0, what baseline JPEG decoders expect

# The mjpeg encoder multiplies its base table by qscale / 8: qscale 8 is libjpeg's
# quality 50, and FFmpeg accepts qscale 1 (finest) to 31 (coarsest).
_BASE_QSCALE = 8
_QSCALE_RANGE = (1, 31)


def qscale_for_quality(quality: int) -> int:
    """Map a libjpeg-style quality (1..100, higher is better) to an mjpeg qscale.

    Uses libjpeg's own scaling of its base table (``5000 / q`` below 50,
    ``200 - 2q`` from 50), so quality 80 here looks about like quality 80 from
    Pillow or libjpeg. Qualities below about 13 all reach the coarsest qscale.
    """
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise BadInput("quality", f"must be an integer from 1 to 100, not {quality!r}")
    percent = 5000 / quality if quality < 50 else 200 - 2 * quality
    low, high = _QSCALE_RANGE
    return max(low, min(high, round(_BASE_QSCALE * percent / 100)))


class JpegEncoder:
    """Turns RGB frames of one fixed size into complete JPEG files (SOI..EOI)."""

    def __init__(self, width: int, height: int, quality: int = 80) -> None:
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8192:
                raise BadInput(name, f"must be an integer from 1 to 8192, not {value!r}")
        self.width = width
        self.height = height
        self.quality = quality
        self.qscale = qscale_for_quality(quality)
        context = av.CodecContext.create("mjpeg", "w")
        context.width = width
        context.height = height
        context.pix_fmt = _ENCODER_PIXEL_FORMAT
        context.time_base = Fraction(1, 1000)
        # Parallelism comes from running many encoders at once under a limiter;
        # FFmpeg's own slice threads would multiply the thread count per capture.
        context.thread_count = 1
        # Fixed quantiser, no rate control. With the qscale flag FFmpeg takes each
        # frame's quality, which PyAV cannot set, and clamps it into qmin..qmax;
        # pinning both to our qscale makes every frame use exactly it.
        context.qscale = True
        context.global_quality = self.qscale
        context.qmin = self.qscale
        context.qmax = self.qscale
        context.open()
        self._context = context
        self._reformatter = VideoReformatter()  # keeps its swscale context between frames
        self._pts = 0

    def encode(self, rgb: np.ndarray) -> bytes:
        """Encode one ``(height, width, 3)`` uint8 RGB array; return the JPEG bytes."""
        expected = (self.height, self.width, 3)
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != expected:
            got = (
                f"{rgb.dtype} array of shape {rgb.shape}"
                if isinstance(rgb, np.ndarray)
                else type(rgb).__name__
            )
            raise BadInput("rgb", f"must be a uint8 array of shape {expected}, not {got}")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame = self._reformatter.reformat(
            frame, format=_ENCODER_PIXEL_FORMAT, dst_color_range="JPEG", threads=1
        )
        frame.pts = self._pts
        self._pts += 1
        jpeg = b"".join(bytes(packet) for packet in self._context.encode(frame))
        if not (jpeg.startswith(_SOI) and jpeg.endswith(_EOI)):
            raise RuntimeError(f"mjpeg encoder returned {len(jpeg)} bytes that are not one JPEG")
        return jpeg


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode one JPEG into a ``(height, width, 3)`` uint8 RGB array (for clients and tests)."""
    if not data.startswith(_SOI):
        raise ValueError("not a JPEG: it does not start with the SOI marker")
    decoder = av.CodecContext.create("mjpeg", "r")
    frames = decoder.decode(av.Packet(data))
    if not frames:
        frames = decoder.decode(None)
    if not frames:
        raise ValueError(f"{len(data)} bytes decoded to no picture")
    return frames[0].to_ndarray(format="rgb24")
