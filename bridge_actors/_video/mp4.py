"""An MP4 file from the shared encoder's H.264 packets, muxed by PyAV without re-encoding.

Blocking: the recorder calls it from a worker thread, one call at a time. The
stream is declared from the first IDR's SPS (its size) and PPS (Annex B
extradata, which FFmpeg's mp4 muxer turns into the avcC box, converting each
Annex B access unit to length-prefixed NAL units as it writes it). Every packet's
pts and dts are its capture time (1/90000 s, no B-frames, so dts = pts); a
packet is written once the next one arrives, so its duration is the time until
the next frame and the file's length is the time the screen was recorded, the
last frame lasting as long as the one before it. :meth:`Mp4Writer.finish` writes
the index (moov); a file is playable only once it returned.
"""

from __future__ import annotations

from pathlib import Path

import av

from .encoder import EncodedPacket
from .h264 import H264Error, NalType, join_annexb, nal_type, parse_sps, split_annexb

__all__ = ["Mp4Writer"]

# The last frame's duration when the recording holds a single frame.
_SINGLE_FRAME_TICKS = 9000  # 0.1 s at 1/90000


class Mp4Writer:
    """One MP4 file being written; ``write`` each packet in order, then ``finish``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container = None
        self._stream = None
        self._held: EncodedPacket | None = None
        self._first_pts: int | None = None
        self._last_duration = _SINGLE_FRAME_TICKS
        self.frames = 0
        self.bytes_muxed = 0
        self.finished = False

    def write(self, packet: EncodedPacket) -> None:
        """Add one access unit; the first must be a keyframe carrying SPS and PPS."""
        if self.finished:
            raise RuntimeError("the MP4 file is already finished")
        if self._container is None:
            self._open(packet)
        elif packet.keyframe:
            self._check_size(packet)
        assert self._first_pts is not None
        if packet.pts - self._first_pts <= self._last_pts():
            return  # not after the frame before it: the muxer would refuse the file
        if self._held is not None:
            self._mux(self._held, packet.pts - self._held.pts)
        self._held = packet

    def finish(self) -> None:
        """Write the last frame and the index; the file is complete and playable after this."""
        if self.finished:
            return
        self.finished = True
        if self._container is None:
            return
        try:
            if self._held is not None:
                self._mux(self._held, self._last_duration)
                self._held = None
        finally:
            self._container.close()

    def _last_pts(self) -> int:
        if self._held is None:
            return -1
        assert self._first_pts is not None
        return self._held.pts - self._first_pts

    def _open(self, packet: EncodedPacket) -> None:
        if not packet.keyframe:
            raise H264Error("a recording must start at a keyframe")
        units = split_annexb(packet.data)
        sps = next((u for u in units if nal_type(u) == NalType.SPS), None)
        pps = next((u for u in units if nal_type(u) == NalType.PPS), None)
        if sps is None or pps is None:
            raise H264Error("the first keyframe of a recording came without SPS and PPS")
        size = parse_sps(sps)
        container = av.open(str(self.path), "w", format="mp4")
        try:
            stream = container.add_stream("h264")
            stream.width = size.width
            stream.height = size.height
            stream.time_base = packet.time_base
            stream.codec_context.extradata = join_annexb([sps, pps])
        except BaseException:
            container.close()
            raise
        self._container = container
        self._stream = stream
        self._first_pts = packet.pts

    def _check_size(self, packet: EncodedPacket) -> None:
        sps = next((u for u in split_annexb(packet.data) if nal_type(u) == NalType.SPS), None)
        if sps is None or self._stream is None:
            return
        size = parse_sps(sps)
        if (size.width, size.height) != (self._stream.width, self._stream.height):
            # One MP4 track has one picture size; a rotated screen ends the recording.
            raise H264Error(
                f"the screen changed size ({self._stream.width}x{self._stream.height} "
                f"to {size.width}x{size.height})"
            )

    def _mux(self, packet: EncodedPacket, duration: int) -> None:
        assert self._container is not None and self._first_pts is not None
        out = av.Packet(packet.data)
        out.pts = out.dts = packet.pts - self._first_pts
        out.duration = duration
        out.time_base = packet.time_base
        out.is_keyframe = packet.keyframe
        out.stream = self._stream
        self._container.mux(out)
        self._last_duration = duration
        self.frames += 1
        self.bytes_muxed += len(packet.data)
