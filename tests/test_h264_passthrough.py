"""ios H.264 passthrough: idb's own H.264 relayed undecoded while no JPEG viewer watches.

The fake idb serves a real libx264 stream (``fakes.h264_clip``: 64x128, 30 frames,
an IDR every 10, SPS/PPS on each) for ``video-stream --format h264``, one access unit
per 1/fps, in a loop. Through the real server, an H.264 viewer must receive exactly
those access units, switch to the encoder's stream (starting at an IDR) while a JPEG
viewer watches, and back again, and survive the idb process being killed.
"""

from __future__ import annotations

import os
import signal

import av
import pytest
import trio
from conftest import open_ws
from fakes import FakeTools, h264_clip
from hypothesis import given
from hypothesis import strategies as st
from test_backends_server import IOS, IPHONE, create, serving
from test_ios import ios, our_device

from bridge_actors import DeviceError, parse_binary_header
from bridge_actors._video.access_units import AccessUnitSplitter, starts_picture
from bridge_actors._video.h264 import split_annexb

# --- the access unit splitter (pure) ------------------------------------------------------------

# A NAL payload without 00 00 0x inside it and not ending in 00, as escaping guarantees.
_payload = (
    st.binary(min_size=1, max_size=40)
    .map(lambda b: b.replace(b"\x00\x00", b"\x00\x01") + b"\x80")
    .filter(lambda b: b"\x00\x00" not in b)
)


@st.composite
def access_units(draw) -> list[list[bytes]]:
    """A stream of access units, each its NAL units (header byte included)."""
    stream = []
    for _ in range(draw(st.integers(1, 8))):
        leading = draw(st.lists(st.sampled_from([9, 7, 8, 6]), max_size=3))
        slices = draw(st.integers(1, 3))
        idr = draw(st.booleans())
        units = [bytes([0x60 | kind]) + draw(_payload) for kind in leading]
        for index in range(slices):
            # first_mb_in_slice == 0 (first bit 1) on the first slice of a picture only.
            first = 0x80 if index == 0 else draw(st.integers(0, 0x7F))
            units.append(bytes([0x65 if idr else 0x41, first]) + draw(_payload))
        stream.append(units)
    return stream


@given(
    access_units(),
    st.lists(st.booleans(), min_size=1),
    st.lists(st.integers(1, 50), min_size=1),
    st.binary(max_size=5).filter(lambda b: b"\x00\x00" not in b),
)
def test_the_splitter_gives_back_each_access_unit_however_the_bytes_are_cut(
    stream, long_codes, cuts, garbage
):
    data = garbage
    for number, units in enumerate(stream):
        for index, unit in enumerate(units):
            long = long_codes[(number + index) % len(long_codes)]
            data += (b"\x00\x00\x00\x01" if long else b"\x00\x00\x01") + unit
    data += b"\x00\x00\x01\x09\xf0"  # the next access unit begins: the last one is complete
    splitter = AccessUnitSplitter()
    out, offset, turn = [], 0, 0
    while offset < len(data):
        size = cuts[turn % len(cuts)]
        out += splitter.feed(data[offset : offset + size])
        offset, turn = offset + size, turn + 1
    assert [split_annexb(unit) for unit in out] == stream
    assert all(unit.startswith(b"\x00\x00\x00\x01") for unit in out)


@given(st.binary(max_size=300), st.integers(1, 64))
def test_the_splitter_never_fails_on_garbage_and_stays_bounded(data, chunk):
    splitter = AccessUnitSplitter(max_unit=100)
    for offset in range(0, len(data), chunk):
        for unit in splitter.feed(data[offset : offset + chunk]):
            assert unit.startswith(b"\x00\x00\x00\x01")
        assert len(splitter._buffer) <= 100 + chunk


def test_the_libx264_clip_splits_into_its_own_packets():
    clip = h264_clip()
    splitter = AccessUnitSplitter()
    out = splitter.feed(b"".join(clip) + clip[0][:5])
    assert [split_annexb(unit) for unit in out] == [split_annexb(unit) for unit in clip]
    assert starts_picture(split_annexb(clip[1])[0])


# --- the backend's H.264 stream ---------------------------------------------------------------


async def test_stream_h264_emits_idbs_access_units_and_raises_when_idb_dies(tools: FakeTools):
    clip = tools.add_h264_stream()
    backend, device = ios(tools), our_device(tools)
    units: list[bytes] = []
    enough = trio.Event()

    def emit(unit: bytes) -> None:
        units.append(unit)
        if len(units) == 12:
            enough.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def stream() -> None:
                with pytest.raises(DeviceError, match=r"H\.264 stream .* stopped"):
                    await backend.stream_h264(device, emit, fps=60)

            nursery.start_soon(stream)
            await enough.wait()
            [pid] = tools.h264_pids()
            os.kill(pid, signal.SIGKILL)
    assert [split_annexb(u) for u in units[:12]] == [split_annexb(u) for u in clip[:12]]
    assert ["video-stream", "--udid", device.udid, "--format", "h264", "--fps", "30"] in (
        tools.calls("idb")
    )


async def test_stream_h264_that_sends_nothing_times_out(tools: FakeTools):
    tools.add_h264_stream()
    tools.behave(h264="silent")
    backend, device = ios(tools, command_timeout=0.5), our_device(tools)
    with trio.fail_after(10), pytest.raises(DeviceError, match=r"no H\.264"):
        await backend.stream_h264(device, lambda unit: None, fps=30)


# --- end to end through the server ------------------------------------------------------------


def nal_units(header: dict) -> tuple[bytes, ...]:
    return tuple(split_annexb(header["payload"]))


async def source_of(server, udid: str) -> dict:
    return (await server.stats())["h264"][udid]


async def test_an_h264_viewer_gets_idbs_own_stream_and_the_encoder_while_jpeg_watches(
    tmp_path, ios_tools
):
    clip = [tuple(split_annexb(unit)) for unit in ios_tools.add_h264_stream()]
    relayed = set(clip)
    ios_tools.behave(stream="loop")  # the JPEG capture: idb's MJPEG, paced, endless
    async with serving(tmp_path / "state", "ios", fps=30) as server:
        sid = (await create(server, IPHONE, IOS))["session_id"]
        udid = server.bridge.get_session(sid).device.udid
        received: list[dict] = []
        with trio.fail_after(30):
            async with open_ws(server.ws_url(sid, "video", "format=binary&codec=h264")) as h264:

                async def packet() -> dict:
                    header = parse_binary_header(await h264.get_message())
                    received.append(header)
                    return header

                # Passthrough: idb's access units, byte for byte, from an IDR with SPS/PPS.
                first = await packet()
                assert first["keyframe"] and [u[0] & 0x1F for u in nal_units(first)][:2] == [7, 8]
                start = clip.index(nal_units(first))
                for step in range(1, 15):
                    assert nal_units(await packet()) == clip[(start + step) % len(clip)]
                stats = await source_of(server, udid)
                assert stats["h264_source"] == "passthrough" and stats["frames_encoded"] == 0
                assert stats["frames_passed_through"] >= 15

                # A JPEG viewer: the encoder takes over, starting at an IDR.
                async with open_ws(server.ws_url(sid, "video", "format=binary")) as jpeg:
                    assert parse_binary_header(await jpeg.get_message())["payload"][:2] == (
                        b"\xff\xd8"
                    )
                    while nal_units(header := await packet()) in relayed:
                        pass
                    assert header["keyframe"]
                    for _ in range(3):
                        assert nal_units(await packet()) not in relayed
                    stats = await source_of(server, udid)
                    assert stats["h264_source"] == "encoder" and stats["frames_encoded"] >= 4

                # The JPEG viewer gone: idb's stream again, from its first IDR.
                while nal_units(header := await packet()) not in relayed:
                    pass
                assert header["keyframe"] and nal_units(header) == clip[0]
                stats = await source_of(server, udid)
                assert stats["h264_source"] == "passthrough" and stats["source_switches"] == 2

                # idb killed: restarted under supervision; the viewer goes on, from an IDR.
                pids = ios_tools.h264_pids()
                os.kill(pids[-1], signal.SIGKILL)
                while len(ios_tools.h264_pids()) == len(pids):
                    assert nal_units(await packet()) in relayed
                while nal_units(header := await packet()) != clip[0]:
                    assert nal_units(header) in relayed
                for step in range(1, 5):
                    assert nal_units(await packet()) == clip[step]
                stats = await source_of(server, udid)
                assert stats["passthrough_restarts"] == 1 and stats["feeds"] == 1

    # Every message was one access unit, and the whole stream plays.
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for h in received for p in decoder.decode(av.Packet(h["payload"]))]
    pictures += decoder.decode(None)
    assert len(pictures) == len(received)
    assert {(p.width, p.height) for p in pictures} >= {(64, 128), (40, 30)}


async def test_never_keeps_the_encoder(tmp_path, ios_tools):
    ios_tools.add_h264_stream()
    ios_tools.behave(stream="loop")
    async with serving(tmp_path / "state", "ios", fps=30, h264_passthrough="never") as server:
        sid = (await create(server, IPHONE, IOS))["session_id"]
        udid = server.bridge.get_session(sid).device.udid
        with trio.fail_after(20):
            async with open_ws(server.ws_url(sid, "video", "format=binary&codec=h264")) as h264:
                headers = [parse_binary_header(await h264.get_message()) for _ in range(5)]
                stats = await source_of(server, udid)
    assert headers[0]["keyframe"]
    assert stats["h264_source"] == "encoder" and stats["frames_passed_through"] == 0
    assert ios_tools.h264_pids() == []
