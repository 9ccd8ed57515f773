"""An H.264 Annex B byte stream, as it arrives from a pipe, cut into access units.

``idb video-stream --format h264`` writes one endless Annex B stream; a viewer
needs it one access unit (one picture, with the parameter sets and SEI in front
of it) at a time. Pure and incremental: bytes go in as the pipe gives them, in
chunks of any size; whole access units come out.

A NAL unit is complete when the start code of the next one arrives, and an
access unit is complete when the first unit of the next one does (H.264
7.4.1.2.3): an AUD, SPS, PPS or SEI after a slice, or a slice whose
``first_mb_in_slice`` is 0 (a new picture) after a slice. So each access unit
comes out when the next one begins, one picture late: the stream has no other
mark of its end.
"""

from __future__ import annotations

from .h264 import START_CODE, NalType

__all__ = ["AccessUnitSplitter", "starts_picture"]

_VCL = frozenset({NalType.SLICE, NalType.SLICE_IDR})
# Non-VCL units that may only come before the first slice of an access unit.
_LEADING = frozenset({NalType.AUD, NalType.SPS, NalType.PPS, NalType.SEI})


def starts_picture(unit: bytes) -> bool:
    """True if a slice unit is the first slice of its picture (``first_mb_in_slice`` == 0).

    ``first_mb_in_slice`` is the first Exp-Golomb code after the one-byte header;
    it is 0 exactly when its first bit is 1.
    """
    return unit[0] & 0x1F in _VCL and len(unit) > 1 and bool(unit[1] & 0x80)


class AccessUnitSplitter:
    """Feed it bytes; it returns each access unit (Annex B, 4-byte start codes) once complete.

    Bytes before the first start code are not H.264 and are dropped. ``max_unit``
    bounds the bytes held for one NAL unit: a stream that never sends another
    start code is not H.264, and must not grow the buffer without end.
    """

    __slots__ = (
        "_buffer",
        "_current",
        "_current_has_slice",
        "_scanned",
        "_synced",
        "bytes_dropped",
        "max_unit",
    )

    def __init__(self, max_unit: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()  # once synced, it begins with a start code
        self._synced = False
        self._scanned = 0  # where the search for the next start code resumes
        self._current: list[bytes] = []
        self._current_has_slice = False
        self.bytes_dropped = 0
        self.max_unit = max_unit

    def feed(self, data: bytes) -> list[bytes]:
        """The access units ``data`` completes, in order."""
        self._buffer += data
        if not self._synced and not self._sync():
            return []
        done: list[bytes] = []
        while True:
            # The buffer begins with the next unit: its header (and for a slice, the
            # first bit after it) says whether the current access unit is over.
            if self._current_has_slice and self._next_unit_begins_access_unit():
                done.append(self._finish())
            following = self._buffer.find(b"\x00\x00\x01", max(3, self._scanned))
            if following < 0:
                # The last two bytes may be the beginning of a start code.
                self._scanned = max(3, len(self._buffer) - 2)
                if len(self._buffer) > self.max_unit:
                    self._lose_sync()
                return done
            unit = bytes(self._buffer[3:following]).rstrip(b"\x00")
            del self._buffer[:following]
            self._scanned = 0
            if unit:
                self._current.append(unit)
                if unit[0] & 0x1F in _VCL:
                    self._current_has_slice = True

    def _sync(self) -> bool:
        first = self._buffer.find(b"\x00\x00\x01")
        if first < 0:
            keep = min(2, len(self._buffer))
            self.bytes_dropped += len(self._buffer) - keep
            del self._buffer[: len(self._buffer) - keep]
            return False
        self.bytes_dropped += first
        del self._buffer[:first]
        self._synced = True
        return True

    def _lose_sync(self) -> None:
        """A unit longer than ``max_unit``: not H.264. Drop it and the access unit it was in."""
        self.bytes_dropped += len(self._buffer) + sum(len(unit) for unit in self._current)
        self._buffer.clear()
        self._synced = False
        self._scanned = 0
        self._current = []
        self._current_has_slice = False

    def _next_unit_begins_access_unit(self) -> bool:
        """False also when too few of its bytes are here yet to tell (asked again later)."""
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        kind = buffer[3] & 0x1F
        if kind in _LEADING:
            return True
        return kind in _VCL and len(buffer) >= 5 and bool(buffer[4] & 0x80)

    def _finish(self) -> bytes:
        access_unit = b"".join(START_CODE + unit for unit in self._current)
        self._current = []
        self._current_has_slice = False
        return access_unit
