"""The pure H.264 bitstream functions: Annex B splitting, NAL types, the SPS."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge_actors._video.h264 import (
    H264Error,
    NalType,
    access_unit_is_keyframe,
    escape_rbsp,
    join_annexb,
    nal_type,
    parse_sps,
    split_annexb,
    with_parameter_sets,
)

# Written by libx264 (Constrained Baseline) for a 1179x2556 screen (encoded as 1178x2556)
# and a 390x844 one (53 macroblock rows cropped by 4 lines).
SPS_1178x2556 = bytes.fromhex("6742c032da0128050792e10000030001000003003c8f1832a0")
SPS_390x844 = bytes.fromhex("6742c01eda0641af9ae10000030001000003003c8f162ea0")
PPS = bytes.fromhex("68ce0fc8")


def test_split_handles_three_and_four_byte_start_codes_and_trailing_zeros():
    stream = b"junk\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce\x00\x00\x00\x00\x01\x65\x88"
    assert split_annexb(stream) == [b"\x67\x42", b"\x68\xce", b"\x65\x88"]
    assert split_annexb(b"") == []
    assert split_annexb(b"no start code") == []


def test_nal_types_and_keyframes():
    assert nal_type(SPS_390x844) == NalType.SPS
    assert nal_type(PPS) == NalType.PPS
    assert access_unit_is_keyframe([SPS_390x844, PPS, b"\x65\x88"])
    assert not access_unit_is_keyframe([b"\x41\x9a"])
    with pytest.raises(H264Error):
        nal_type(b"")
    with pytest.raises(H264Error):
        nal_type(b"\xe5")  # forbidden_zero_bit


@pytest.mark.parametrize(
    ("sps", "codec", "size"),
    [
        (SPS_1178x2556, "avc1.42c032", (1178, 2556)),
        (SPS_390x844, "avc1.42c01e", (390, 844)),
    ],
)
def test_sps_gives_codec_string_and_cropped_size(sps, codec, size):
    parsed = parse_sps(sps)
    assert parsed.codec == codec
    assert (parsed.width, parsed.height) == size


@pytest.mark.parametrize("profile", ["baseline", "main", "high", "high444"])
@pytest.mark.parametrize(("width", "height"), [(64, 48), (390, 844), (202, 98)])
def test_sps_of_real_libx264_streams(profile, width, height):
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height = width, height
    context.pix_fmt = "yuv444p" if profile == "high444" else "yuv420p"
    context.time_base = Fraction(1, 90000)
    context.options = {"profile": profile, "x264-params": "repeat-headers=1"}
    context.open()
    frame = av.VideoFrame.from_ndarray(
        np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8),
        format="rgb24",
    ).reformat(format=context.pix_fmt)
    frame.pts = 0
    data = b"".join(bytes(p) for p in context.encode(frame) + context.encode(None))
    units = split_annexb(data)
    sps = parse_sps(next(u for u in units if nal_type(u) == NalType.SPS))
    assert (sps.width, sps.height) == (width, height)
    assert sps.profile_idc == {"baseline": 66, "main": 77, "high": 100, "high444": 244}[profile]
    assert sps.codec == f"avc1.{units[0][1]:02x}{units[0][2]:02x}{units[0][3]:02x}"


def test_parameter_sets_are_put_in_front_of_an_idr_that_lacks_them():
    aud, idr = b"\x09\xf0", b"\x65\x88\x84"
    assert with_parameter_sets([aud, idr], SPS_390x844, PPS) == [aud, SPS_390x844, PPS, idr]
    complete = [SPS_390x844, PPS, idr]
    assert with_parameter_sets(complete, SPS_1178x2556, PPS) is complete


# A NAL unit as an encoder writes it: a header byte, an escaped payload, never ending in 0.
nal_units = st.builds(
    lambda header, rbsp: bytes([header]) + escape_rbsp(rbsp + b"\x80"),
    st.integers(0, 0x7F).filter(lambda h: h & 0x1F != 0),
    st.binary(max_size=200),
)


@given(st.lists(nal_units, max_size=8))
def test_split_inverts_join(units):
    assert split_annexb(join_annexb(units)) == units


@given(st.binary(max_size=400))
def test_split_never_fails_and_finds_no_start_code_inside_a_unit(data):
    for unit in split_annexb(data):
        assert b"\x00\x00\x01" not in unit
        assert unit and unit[-1] != 0


@given(st.binary(max_size=64))
def test_parse_sps_of_garbage_raises_only_h264_error(payload):
    try:
        parsed = parse_sps(b"\x67" + payload)
    except H264Error:
        return
    assert parsed.width > 0 and parsed.height > 0
    assert parsed.codec.startswith("avc1.")


@given(st.integers(0, len(SPS_390x844) - 1))
def test_a_truncated_sps_is_an_error_unless_the_size_was_already_read(length):
    # The VUI after the size is not read: cutting it off changes nothing.
    try:
        parsed = parse_sps(SPS_390x844[:length])
    except H264Error:
        assert length < 10
        return
    assert parsed == parse_sps(SPS_390x844)
