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


@pytest.mark.parametrize(("width", "height"), [(390, 844), (201, 99)])
def test_rgb_pixels_encode_as_truly_as_a_jpeg_of_them(width, height):
    """A frame without a JPEG (only the encoder watched) goes straight from its pixels."""
    from_rgb = PyAVH264Encoder(width, height, fps=30)
    from_jpeg = PyAVH264Encoder(width, height, fps=30)
    jpeg = JpegEncoder(width, height, 90)
    decoders = [av.CodecContext.create("h264", "r") for _ in range(2)]
    for index in range(4):
        source = picture(width, height, index * 4)
        decoded = []
        for encoder, decoder, given in zip(
            (from_rgb, from_jpeg), decoders, (source, jpeg.encode(source)), strict=True
        ):
            [(data, _)] = encoder.encode(given, index * 3000, index == 0)
            [frame] = decoder.decode(av.Packet(data))
            decoded.append(frame.to_ndarray(format="rgb24").astype(float))
        got_rgb, got_jpeg = decoded
        want = source[: got_rgb.shape[0], : got_rgb.shape[1]].astype(float)
        assert got_rgb.shape == got_jpeg.shape == (height - height % 2, width - width % 2, 3)
        assert np.abs((got_rgb - want).mean(axis=(0, 1))).max() < 2.5
        psnr_rgb = 10 * np.log10(255**2 / np.mean((got_rgb - want) ** 2))
        psnr_jpeg = 10 * np.log10(255**2 / np.mean((got_jpeg - want) ** 2))
        # One lossy step fewer: at least as true to the source as the JPEG path.
        assert psnr_rgb > 35 and psnr_rgb >= psnr_jpeg - 0.5
