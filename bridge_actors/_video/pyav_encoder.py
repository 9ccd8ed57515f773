"""The H.264 encoder itself: JPEG frames or RGB pixels in, Annex B access units out, through PyAV.

Blocking and CPU-bound: the encoder service calls it from a worker thread, one
frame at a time, never from two threads at once. It owns the choice of codec
(libx264 where PyAV has it, else libopenh264), and the settings every viewer
relies on: Constrained Baseline (WebCodecs and every WebRTC peer decode it), no
B-frames (a frame is sent the moment it is encoded), ``tune=zerolatency`` (no
look-ahead) and SPS/PPS in front of every IDR (a viewer may start at any IDR).
Keyframes are placed by the caller (``keyframe=True``); the codec's own GOP is
set longer than any interval so it never adds one by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import av.video.frame
import numpy as np

from .h264 import TIME_BASE

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = ["H264_CODECS", "PyAVH264Encoder", "available_h264_codec", "pyav_encoder_factory"]

H264_CODECS = ("libx264", "libopenh264")


def available_h264_codec() -> str:
    """The first of H264_CODECS this PyAV build can encode with."""
    for name in H264_CODECS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"PyAV has no H.264 encoder (looked for {', '.join(H264_CODECS)})")


class PyAVH264Encoder:
    """One encoder context for one picture size; make a new one when the size changes."""

    def __init__(
        self,
        width: int,
        height: int,
        *,
        fps: int,
        preset: str = "veryfast",
        crf: int = 23,
        codec_name: str | None = None,
    ) -> None:
        self.codec_name = codec_name or available_h264_codec()
        # 4:2:0 needs even sides: an odd screen (1179 wide) loses its last column.
        self.width = max(2, width - width % 2)
        self.height = max(2, height - height % 2)
        self._decoder = av.CodecContext.create("mjpeg", "r")
        context = av.CodecContext.create(self.codec_name, "w")
        context.width = self.width
        context.height = self.height
        context.pix_fmt = "yuv420p"
        context.time_base = TIME_BASE
        context.framerate = Fraction(fps, 1)
        context.max_b_frames = 0
        context.thread_count = 1
        # Far longer than any keyframe interval: the caller places every IDR.
        context.gop_size = 100_000
        if self.codec_name == "libx264":
            context.options = {
                "profile": "baseline",
                "preset": preset,
                "tune": "zerolatency",
                "crf": str(crf),
                "forced-idr": "1",
                "x264-params": "repeat-headers=1:scenecut=0:bframes=0:annexb=1",
            }
        else:
            context.options = {"profile": "constrained_baseline", "allow_skip_frames": "0"}
        context.open()
        self._context = context

    def encode(
        self, picture: bytes | np.ndarray, pts: int, keyframe: bool
    ) -> list[tuple[bytes, int]]:
        """Encode one JPEG (bytes) or ``(height, width, 3)`` RGB array at ``pts``
        (1/90000 s), an IDR if ``keyframe``.

        Returns ``(Annex B access unit, pts)`` for each packet the codec gives back.
        """
        if isinstance(picture, np.ndarray):
            pictures = [self._from_rgb(picture)]
        else:
            pictures = [
                self._from_jpeg(decoded) for decoded in self._decoder.decode(av.Packet(picture))
            ]
        packets = []
        for frame in pictures:
            frame.pts = pts
            frame.time_base = TIME_BASE
            frame.pict_type = (
                av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
            )
            for packet in self._context.encode(frame):
                packets.append((bytes(packet), pts if packet.pts is None else int(packet.pts)))
        return packets

    def _from_jpeg(self, picture: av.VideoFrame) -> av.VideoFrame:
        # A JPEG is full range (yuvj420p); H.264 decoders assume limited range unless
        # told otherwise, so convert, or every viewer sees washed-out colours.
        if (picture.width, picture.height) == (self.width, self.height):
            return picture.reformat(
                format="yuv420p", src_color_range="JPEG", dst_color_range="MPEG"
            )
        return self._from_rgb(picture.to_ndarray(format="rgb24"))

    def _from_rgb(self, rgb: np.ndarray) -> av.VideoFrame:
        # Cropped, not scaled: scaling a screen by one pixel blurs every edge.
        if rgb.shape[:2] != (self.height, self.width):
            rgb = np.ascontiguousarray(rgb[: self.height, : self.width])
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_color_range="MPEG"
        )

    def close(self) -> None:
        """Free the codec (the remaining buffered frames, if any, are dropped)."""
        self._context = None  # type: ignore[assignment]
        self._decoder = None  # type: ignore[assignment]


def pyav_encoder_factory(settings: Settings) -> Callable[[int, int], PyAVH264Encoder]:
    """What the encoder service calls for each picture size, from the bridge's settings.

    Checks at start that PyAV can encode H.264 at all, so a missing codec is a
    start-up error, not a failure of the first viewer.
    """
    codec_name = available_h264_codec()
    return functools.partial(
        PyAVH264Encoder,
        fps=settings.fps,
        preset=settings.h264_preset,
        crf=settings.h264_crf,
        codec_name=codec_name,
    )
