"""The H.264 bitstream as far as a relay needs it: Annex B units, their types, the SPS.

Pure functions over bytes. A relay never decodes pictures; it only has to know
where one NAL unit ends, whether an access unit starts a GOP (an IDR slice),
that an IDR carries its parameter sets, and what the SPS says a decoder must
support: the WebCodecs codec string ``avc1.PPCCLL`` (profile, constraint flags,
level, as hex) and the picture size.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "TIME_BASE",
    "H264Error",
    "NalType",
    "SequenceParameterSet",
    "access_unit_is_keyframe",
    "join_annexb",
    "nal_type",
    "parse_sps",
    "split_annexb",
    "with_parameter_sets",
]


class H264Error(ValueError):
    """Bytes that are not the H.264 a relay expects (a truncated or damaged unit)."""


class NalType(enum.IntEnum):
    SLICE = 1
    SLICE_IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9


# The 90 kHz clock of RTP video; WebCodecs and aiortc take timestamps in it directly.
TIME_BASE = Fraction(1, 90000)

START_CODE = b"\x00\x00\x00\x01"


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream, start codes removed.

    Both 3- and 4-byte start codes are recognised; zero bytes before a start
    code (``trailing_zero_8bits``) are not part of the unit before it. Bytes
    before the first start code are not a unit and are ignored.
    """
    units: list[bytes] = []
    start = _next_start(data, 0)
    while start is not None:
        begin = start[1]
        following = _next_start(data, begin)
        end = following[0] if following is not None else len(data)
        unit = data[begin:end].rstrip(b"\x00")
        if unit:
            units.append(unit)
        start = following
    return units


def _next_start(data: bytes, offset: int) -> tuple[int, int] | None:
    """(index of the start code, index just after it) of the first start code from offset."""
    found = data.find(b"\x00\x00\x01", offset)
    if found < 0:
        return None
    return found, found + 3


def join_annexb(units: Iterable[bytes]) -> bytes:
    """An Annex B byte stream of ``units``, each after a 4-byte start code."""
    return b"".join(START_CODE + unit for unit in units)


def nal_type(unit: bytes) -> int:
    """The ``nal_unit_type`` of one unit (its header's low five bits)."""
    if not unit:
        raise H264Error("empty NAL unit")
    if unit[0] & 0x80:
        raise H264Error("forbidden_zero_bit is set")
    return unit[0] & 0x1F


def access_unit_is_keyframe(units: Iterable[bytes]) -> bool:
    """True if the access unit holds an IDR slice: a decoder may start there."""
    return any(unit and unit[0] & 0x1F == NalType.SLICE_IDR for unit in units)


def with_parameter_sets(units: list[bytes], sps: bytes, pps: bytes) -> list[bytes]:
    """``units`` with the given SPS and PPS in front when it lacks its own.

    An IDR a late joiner starts from must carry them; encoders that emit them
    only once (global headers) would leave that viewer unable to decode.
    """
    types = {unit[0] & 0x1F for unit in units if unit}
    if NalType.SPS in types and NalType.PPS in types:
        return units
    kept = [unit for unit in units if unit and unit[0] & 0x1F not in (NalType.SPS, NalType.PPS)]
    leading = [unit for unit in kept if unit[0] & 0x1F == NalType.AUD]
    rest = [unit for unit in kept if unit[0] & 0x1F != NalType.AUD]
    return [*leading, sps, pps, *rest]


@dataclass(frozen=True, slots=True)
class SequenceParameterSet:
    profile_idc: int
    constraint_flags: int
    level_idc: int
    width: int
    height: int

    @property
    def codec(self) -> str:
        """The RFC 6381 / WebCodecs codec string, ``avc1.PPCCLL``."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


# Profiles whose SPS carries chroma format, bit depths and scaling matrices.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def parse_sps(unit: bytes) -> SequenceParameterSet:
    """The profile, level and cropped picture size of an SPS NAL unit (header included)."""
    if nal_type(unit) != NalType.SPS:
        raise H264Error(f"not an SPS: NAL type {unit[0] & 0x1F}")
    if len(unit) < 4:
        raise H264Error("SPS shorter than its profile and level")
    profile, constraints, level = unit[1], unit[2], unit[3]
    bits = _BitReader(_unescape(unit[4:]))
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in _HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format > 3:
            raise H264Error(f"chroma_format_idc {chroma_format} out of range")
        separate_planes = chroma_format == 3 and bits.bit()
        if separate_planes:
            chroma_format = 0
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.bit():
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif order_type == 1:
        bits.bit()  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        cycle = bits.ue()
        if cycle > 255:
            raise H264Error(f"num_ref_frames_in_pic_order_cnt_cycle {cycle} out of range")
        for _ in range(cycle):
            bits.se()
    elif order_type != 2:
        raise H264Error(f"pic_order_cnt_type {order_type} out of range")
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field_flag
    bits.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.bit():  # frame_cropping_flag
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    field_factor = 2 - frame_mbs_only
    if chroma_format == 0:
        crop_x, crop_y = 1, field_factor
    else:
        crop_x = 1 if chroma_format == 3 else 2
        crop_y = (2 if chroma_format == 1 else 1) * field_factor
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = height_units * 16 * field_factor - crop_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise H264Error(f"cropping leaves no picture ({width}x{height})")
    return SequenceParameterSet(profile, constraints, level, width, height)


def _skip_scaling_list(bits: _BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se()) % 256
        last = next_scale or last


def _unescape(payload: bytes) -> bytes:
    """The RBSP of a NAL payload: every emulation-prevention 0x03 after 00 00 removed."""
    if b"\x00\x00\x03" not in payload:
        return payload
    out = bytearray()
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def escape_rbsp(rbsp: bytes) -> bytes:
    """The NAL payload of an RBSP: 0x03 inserted wherever 00 00 is followed by 0..3."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _BitReader:
    """Big-endian bits and Exp-Golomb codes, raising H264Error past the end."""

    __slots__ = ("_bits", "_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._bits = len(data) * 8
        self._position = 0

    def bit(self) -> int:
        if self._position >= self._bits:
            raise H264Error("SPS ends too early")
        byte = self._data[self._position >> 3]
        value = (byte >> (7 - (self._position & 7))) & 1
        self._position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise H264Error("Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def iter_units_of_type(units: Iterable[bytes], wanted: int) -> Iterator[bytes]:
    """The units of one NAL type, in order."""
    return (unit for unit in units if unit and unit[0] & 0x1F == wanted)
