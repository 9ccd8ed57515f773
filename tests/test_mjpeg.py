"""The MJPEG stream parser, driven with real JPEGs and no event loop."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from bridge_actors._backends.mjpeg import MjpegParser, jpeg_size


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0, **options) -> bytes:
    """Noise compresses badly, so the scan data is full of stuffed FF bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """The JPEG with an APP1 segment holding a whole other JPEG, as camera EXIF does."""
    payload = b"Exif\x00\x00" + thumbnail
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def frames_of(parser: MjpegParser, *chunks: bytes) -> list[bytes]:
    return [frame.data for chunk in chunks for frame in parser.feed(chunk)]


def test_one_jpeg_in_one_read():
    jpeg = make_jpeg()
    parser = MjpegParser()
    [frame] = parser.feed(jpeg)
    assert frame.data == jpeg
    assert (frame.width, frame.height) == (64, 48)
    stats = parser.statistics()
    assert (stats.frames, stats.skipped_bytes, stats.malformed, stats.buffered) == (1, 0, 0, 0)


def test_scan_data_really_contains_stuffed_ff_bytes():
    assert b"\xff\x00" in make_jpeg()


def test_a_frame_split_at_every_possible_byte():
    jpeg = make_jpeg(seed=1)
    for cut in range(1, len(jpeg)):
        parser = MjpegParser()
        assert frames_of(parser, jpeg[:cut]) == []
        assert frames_of(parser, jpeg[cut:]) == [jpeg]


def test_byte_by_byte():
    jpegs = [make_jpeg(seed=seed) for seed in range(3)]
    stream = b"".join(jpegs)
    parser = MjpegParser()
    got = frames_of(parser, *(stream[i : i + 1] for i in range(len(stream))))
    assert got == jpegs


def test_several_frames_in_one_read():
    jpegs = [make_jpeg(seed=seed) for seed in range(5)]
    assert frames_of(MjpegParser(), b"".join(jpegs)) == jpegs


def test_garbage_between_frames_is_skipped_and_counted():
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    garbage = b"\x00\x01junk\xff\xff\xfe" + bytes(range(200, 256))
    parser = MjpegParser()
    assert frames_of(parser, garbage + a + garbage + b + garbage) == [a, b]
    assert parser.close() == 0
    assert parser.statistics().skipped_bytes == 3 * len(garbage)


def test_multipart_boundaries_and_headers():
    jpegs = [make_jpeg(seed=seed) for seed in range(3)]
    stream = b"".join(
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
        + jpeg
        + b"\r\n"
        for jpeg in jpegs
    )
    parser = MjpegParser()
    # Reads that cut through headers, boundaries and frames alike.
    chunks = [stream[i : i + 777] for i in range(0, len(stream), 777)]
    assert frames_of(parser, *chunks) == jpegs


def test_a_truncated_last_frame_is_dropped_at_close():
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    parser = MjpegParser()
    assert frames_of(parser, a + b[:-100]) == [a]
    assert parser.close() == len(b) - 100
    stats = parser.statistics()
    assert (stats.frames, stats.truncated, stats.buffered) == (1, 1, 0)


def test_a_frame_cut_short_by_the_next_one_is_abandoned():
    a, b, c = (make_jpeg(seed=seed) for seed in range(3))
    parser = MjpegParser()
    assert frames_of(parser, a + b[: len(b) // 2] + c) == [a, c]
    assert parser.statistics().malformed == 1


def test_an_embedded_thumbnail_does_not_end_the_frame():
    thumbnail = make_jpeg(16, 12, seed=9)
    jpeg = with_exif_thumbnail(make_jpeg(seed=3), thumbnail)
    parser = MjpegParser()
    [frame] = parser.feed(jpeg)
    assert frame.data == jpeg
    assert (frame.width, frame.height) == (64, 48)


def test_progressive_jpegs_with_many_scans():
    jpeg = make_jpeg(seed=4, progressive=True)
    assert jpeg.count(b"\xff\xda") > 1
    assert frames_of(MjpegParser(), jpeg + jpeg) == [jpeg, jpeg]


def test_restart_markers_inside_scan_data():
    jpeg = make_jpeg(seed=5, restart_marker_blocks=1)
    assert b"\xff\xd0" in jpeg
    parser = MjpegParser()
    assert frames_of(parser, jpeg[:1000], jpeg[1000:]) == [jpeg]


def test_a_false_start_of_image_in_garbage_is_recovered_from():
    jpeg = make_jpeg(seed=6)
    false_start = b"\xff\xd8\xff\xe0\x00\x01 not a segment"
    parser = MjpegParser()
    assert frames_of(parser, false_start + jpeg) == [jpeg]
    assert parser.statistics().malformed == 1


def test_a_frame_without_a_size_is_malformed():
    no_sof = b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9"
    jpeg = make_jpeg(seed=7)
    parser = MjpegParser()
    assert frames_of(parser, no_sof + jpeg) == [jpeg]
    assert parser.statistics().malformed == 1


def test_an_oversized_frame_is_dropped_and_the_stream_recovers():
    big = make_jpeg(320, 240, seed=8)
    small = make_jpeg(seed=9)
    parser = MjpegParser(max_frame_bytes=len(big) // 2)
    assert frames_of(parser, big[:-10], big[-10:], small) == [small]
    assert parser.statistics().malformed == 1
    assert parser.statistics().buffered == 0


def test_memory_stays_bounded_on_endless_garbage():
    parser = MjpegParser()
    for _ in range(100):
        assert parser.feed(b"\x00" * 10_000 + b"\xff") == []
    assert parser.statistics().buffered <= 1


def test_jpeg_size_reads_the_sof_marker():
    assert jpeg_size(make_jpeg(123, 45)) == (123, 45)
    assert jpeg_size(make_jpeg(30, 20, progressive=True)) == (30, 20)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xd9", b"\xff\xd8\xff"])
def test_jpeg_size_rejects_what_is_not_a_complete_jpeg(data):
    with pytest.raises(ValueError, match="not one complete JPEG"):
        jpeg_size(data)
