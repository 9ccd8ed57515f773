"""Cut a byte stream of concatenated JPEGs (MJPEG) into frames, as it arrives.

``idb video-stream --format mjpeg`` writes JPEG after JPEG to a pipe; a read
returns whatever the pipe holds, so a frame may be split across reads, several
may arrive in one, and a stream may carry multipart boundaries and headers, or
garbage, between frames. Searching for the end-of-image bytes ``FF D9`` is not
enough: an EXIF thumbnail is a whole JPEG inside the APP1 segment of its
parent. So the parser walks the marker segments by their lengths and scans
only entropy-coded data for markers, which also yields each frame's pixel size
from its SOF segment at no extra cost.

Pure code, no I/O: feed bytes, get frames.
"""

from __future__ import annotations

from dataclasses import dataclass

SOI = b"\xff\xd8"
DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024

_EOI = 0xD9
_SOS = 0xDA
_TEM = 0x01
_RST = range(0xD0, 0xD8)
# Start-of-frame markers: baseline, extended, progressive, lossless, hierarchical, arithmetic.
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


@dataclass(frozen=True, slots=True)
class JpegFrame:
    data: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class MjpegStatistics:
    frames: int
    bytes_in: int
    skipped_bytes: int  # between frames: boundaries, headers, garbage
    malformed: int  # frames abandoned because their structure was broken or too large
    truncated: int  # incomplete frames left when the stream ended
    buffered: int


class _Malformed(Exception):
    pass


def _frame_size(segment: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Width and height from an SOF segment whose length field is at ``offset``."""
    if segment[offset] << 8 | segment[offset + 1] < 8:
        raise _Malformed("SOF segment too short")
    height = segment[offset + 3] << 8 | segment[offset + 4]
    width = segment[offset + 5] << 8 | segment[offset + 6]
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of one complete JPEG, read from its SOF marker (no decoding).

    Raises ValueError if ``data`` is not a JPEG or has no usable frame header.
    """
    parser = MjpegParser()
    frames = parser.feed(data)
    if data[:2] != SOI or not frames:
        raise ValueError(f"{len(data)} bytes are not one complete JPEG with a frame header")
    return frames[0].width, frames[0].height


class MjpegParser:
    """Incremental splitter of concatenated JPEGs.

    ``feed`` returns the frames completed by the new bytes; ``close`` reports
    how many bytes of an incomplete last frame were dropped. Work per byte is
    constant: the scan resumes where the previous ``feed`` stopped.
    """

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 4:
            raise ValueError("max_frame_bytes must be at least 4")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False  # the buffer starts with an SOI being parsed
        self._pos = 0  # next byte to examine
        self._in_scan = False  # inside entropy-coded data
        self._size: tuple[int, int] | None = None
        self._frames = 0
        self._bytes_in = 0
        self._skipped = 0
        self._malformed = 0
        self._truncated = 0

    def statistics(self) -> MjpegStatistics:
        return MjpegStatistics(
            frames=self._frames,
            bytes_in=self._bytes_in,
            skipped_bytes=self._skipped,
            malformed=self._malformed,
            truncated=self._truncated,
            buffered=len(self._buffer),
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[JpegFrame]:
        self._bytes_in += len(data)
        self._buffer += data
        frames: list[JpegFrame] = []
        while True:
            if not self._in_frame and not self._seek_start():
                return frames
            try:
                frame = self._advance()
            except _Malformed:
                self._malformed += 1
                self._resync()
                continue
            if frame is None:
                if len(self._buffer) > self._max_frame_bytes:
                    self._malformed += 1
                    self._resync()
                    continue
                return frames
            frames.append(frame)

    def close(self) -> int:
        """The stream ended: drop any incomplete frame and return its length in bytes."""
        dropped = len(self._buffer) if self._in_frame else 0
        if self._in_frame:
            self._truncated += 1
        else:
            self._skipped += len(self._buffer)
        self._buffer.clear()
        self._in_frame = False
        self._pos = 0
        self._in_scan = False
        self._size = None
        return dropped

    # -- the state machine --

    def _seek_start(self) -> bool:
        """Drop bytes before the next SOI; True when the buffer now starts with one."""
        start = self._buffer.find(SOI)
        if start < 0:
            # Keep a trailing FF: it may be the first half of an SOI.
            keep = 1 if self._buffer.endswith(b"\xff") else 0
            self._skipped += len(self._buffer) - keep
            del self._buffer[: len(self._buffer) - keep]
            return False
        self._skipped += start
        del self._buffer[:start]
        self._in_frame = True
        self._pos = 2
        self._in_scan = False
        self._size = None
        return True

    def _resync(self) -> None:
        """Abandon the frame at the start of the buffer; look for the next SOI after it."""
        del self._buffer[:2]
        self._skipped += 2
        self._in_frame = False
        self._pos = 0
        self._in_scan = False
        self._size = None

    def _advance(self) -> JpegFrame | None:
        """Walk the current frame as far as the buffer allows; the frame when its EOI is seen."""
        buffer = self._buffer
        while True:
            if self._in_scan and not self._skip_scan_data():
                return None
            pos = self._pos
            # A marker: one or more FF fill bytes, then the marker code.
            while pos < len(buffer) and buffer[pos] == 0xFF:
                pos += 1
            if pos >= len(buffer):
                return None
            if pos == self._pos:
                raise _Malformed(f"expected a marker at offset {pos}")
            marker = buffer[pos]
            pos += 1
            if marker == _EOI:
                return self._emit(pos)
            if marker == 0x00 or marker == 0xD8:
                raise _Malformed(f"marker {marker:#04x} inside a frame")
            if marker == _TEM or marker in _RST:
                self._pos = pos
                continue
            if pos + 2 > len(buffer):
                return None
            length = buffer[pos] << 8 | buffer[pos + 1]
            if length < 2:
                raise _Malformed(f"segment length {length}")
            end = pos + length
            if end > len(buffer):
                return None
            if marker in _SOF:
                self._size = _frame_size(buffer, pos)
            self._pos = end
            self._in_scan = marker == _SOS

    def _skip_scan_data(self) -> bool:
        """Move ``_pos`` to the marker ending the entropy-coded data; False if not yet here.

        Inside scan data FF is followed by 00 (a stuffed FF), by a restart
        marker, or by more FF fill bytes before a real marker.
        """
        buffer = self._buffer
        pos = self._pos
        while True:
            pos = buffer.find(b"\xff", pos)
            if pos < 0:
                self._pos = len(buffer)
                return False
            if pos + 1 >= len(buffer):
                self._pos = pos
                return False
            following = buffer[pos + 1]
            if following == 0x00 or following in _RST:
                pos += 2
            elif following == 0xFF:
                pos += 1
            else:
                self._pos = pos
                self._in_scan = False
                return True

    def _emit(self, end: int) -> JpegFrame:
        size = self._size
        if size is None or size[0] == 0 or size[1] == 0:
            raise _Malformed("frame without a usable SOF header")
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        self._in_frame = False
        self._pos = 0
        self._in_scan = False
        self._size = None
        self._frames += 1
        return JpegFrame(data, size[0], size[1])
