"""The wire format of bridge_actors.wire: one header, encodings made once per frame."""

from __future__ import annotations

import base64

import pytest
from fakes import make_frame

from benchmarks._wire import verify_binary_frame
from bridge_actors import BINARY_HEADER_SIZE, Frame, parse_binary_header
from bridge_actors.wire import (
    BINARY_HEADER,
    CODEC_H264,
    binary_frame,
    encode_binary_header,
    h264_message,
    jpeg_base64,
    video_frame_text,
)

# The header fields of every frame here (``seq`` aside): a 3x screen, so a swapped
# point and pixel size shows.
HEADER_FIELDS = {
    "timestamp": 1_700_000_000.5,
    "pixel_width": 1170,
    "pixel_height": 2532,
    "point_width": 390,
    "point_height": 844,
    "input_seq": 3,
}


def frame_of(seq: int = 5) -> Frame:
    return make_frame(
        seq, captured_at=1.0, jpeg=b"\xff\xd8" + bytes(100) + b"\xff\xd9", **HEADER_FIELDS
    )


def test_the_header_is_32_bytes_and_reads_back():
    assert BINARY_HEADER.size == BINARY_HEADER_SIZE == 32
    frame = frame_of(seq=2**32 + 7)
    message = binary_frame(frame)
    assert message[:4] == b"BAV1"
    assert message[BINARY_HEADER_SIZE:] == frame.jpeg
    header = parse_binary_header(message)
    assert header == {
        "seq": 7,
        **HEADER_FIELDS,
        "codec": 1,
        "keyframe": True,
        "payload": frame.jpeg,
        "jpeg": frame.jpeg,
    }
    assert message[:BINARY_HEADER_SIZE] == encode_binary_header(seq=7, **HEADER_FIELDS)
    assert message[28:32] == b"\x01\x01\x00\x00"  # codec JPEG, keyframe, reserved


def test_an_h264_message_carries_its_codec_and_key_flag():
    unit = b"\x00\x00\x00\x01\x41\x9a"
    for keyframe in (True, False):
        message = h264_message(unit, keyframe=keyframe, seq=9, **HEADER_FIELDS)
        header = parse_binary_header(message)
        assert (header["codec"], header["keyframe"]) == (CODEC_H264, keyframe)
        assert header["payload"] == unit
        assert header["seq"] == 9 and header["input_seq"] == HEADER_FIELDS["input_seq"]
        assert message[29] == (1 if keyframe else 0)


def test_the_benchmark_clients_check_each_payload_against_its_codec():
    unit = b"\x00\x00\x00\x01\x41\x9a"
    assert verify_binary_frame(h264_message(unit, keyframe=True, seq=1, **HEADER_FIELDS)) is None
    jpeg_header = encode_binary_header(seq=1, **HEADER_FIELDS)
    assert verify_binary_frame(jpeg_header + b"\xff\xd8\xff") is None
    assert "not a JPEG" in verify_binary_frame(jpeg_header + unit)
    wrong = h264_message(b"\xff\xd8\xff", keyframe=True, seq=1, **HEADER_FIELDS)
    assert "Annex B" in verify_binary_frame(wrong)


def test_a_short_or_foreign_message_is_refused():
    with pytest.raises(ValueError, match="shorter"):
        parse_binary_header(b"BAV1")
    with pytest.raises(ValueError, match="magic"):
        parse_binary_header(b"XXXX" + bytes(40))


def test_every_viewer_shares_one_encoding_of_a_frame():
    frame = frame_of()
    assert binary_frame(frame) is binary_frame(frame)
    assert jpeg_base64(frame) is jpeg_base64(frame)
    assert base64.b64decode(jpeg_base64(frame)) == frame.jpeg
    first, second = video_frame_text(frame, 1, 30), video_frame_text(frame, 2, 30)
    assert jpeg_base64(frame) in first and jpeg_base64(frame) in second


def test_shared_calls_each_maker_once():
    frame = frame_of()
    calls: list[int] = []

    def make(f: Frame) -> int:
        calls.append(f.seq)
        return len(calls)

    assert [frame.shared(make) for _ in range(3)] == [1, 1, 1]
    assert calls == [5]
