"""The PyAV encoder: Constrained Baseline Annex B with SPS/PPS on every IDR, true colours."""

from __future__ import annotations

import av
import numpy as np
import pytest

from bridge_actors._backends.jpeg import JpegEncoder, decode_jpeg
from bridge_actors._video.h264 import NalType, parse_sps, split_annexb
from bridge_actors._video.pyav_encoder import PyAVH264Encoder


def picture(width: int, height: int, shift: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 2 + shift) % 256, (y + shift) % 256, np.full_like(x, 200)], axis=-1)
    rgb[height // 3 : height // 2, width // 4 : width // 2] = (20, 20, 20)
    return rgb.astype(np.uint8)


@pytest.mark.parametrize(("width", "height"), [(390, 844), (201, 99)])
def test_every_idr_carries_parameter_sets_and_colours_survive(width, height):
    jpeg = JpegEncoder(width, height, 90)
    encoder = PyAVH264Encoder(width, height, fps=30)
    decoder = av.CodecContext.create("h264", "r")
    keyframes = [0, 5]
    for index in range(8):
        source = jpeg.encode(picture(width, height, index * 4))
        [(data, pts)] = encoder.encode(source, index * 3000, index in keyframes)
        assert pts == index * 3000
        types = [unit[0] & 0x1F for unit in split_annexb(data)]
        assert (NalType.SLICE_IDR in types) == (index in keyframes)
        assert (NalType.SPS in types and NalType.PPS in types) == (index in keyframes)
        if index == 0:
            sps = parse_sps(next(u for u in split_annexb(data) if u[0] & 0x1F == NalType.SPS))
            assert sps.codec.startswith("avc1.42")  # Baseline, constraint_set1: Constrained
            assert sps.constraint_flags & 0x40
            assert (sps.width, sps.height) == (width - width % 2, height - height % 2)
        [decoded] = decoder.decode(av.Packet(data))
        got = decoded.to_ndarray(format="rgb24").astype(float)
        want = decode_jpeg(source)[: got.shape[0], : got.shape[1]].astype(float)
        # Full-range JPEG converted to limited-range H.264: no washed-out offset.
        assert np.abs((got - want).mean(axis=(0, 1))).max() < 2.5  # unconverted: 5 to 7
        error = np.mean((got - want) ** 2)
        assert 10 * np.log10(255**2 / error) > 35
    encoder.close()
