"""ios H.264 passthrough: idb's own H.264 relayed undecoded while no JPEG viewer watches.

The fake idb serves a real libx264 stream (``fakes.h264_clip``: 64x128, 30 frames,
an IDR every 10, SPS/PPS on each) for ``video-stream --format h264``, one access unit
per 1/fps, in a loop. Through the real server, an H.264 viewer must receive exactly
those access units, switch to the encoder's stream (starting at an IDR) while a JPEG
viewer watches, and back again, and survive the idb process being killed.
"""

from __future__ import annotations

import itertools
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
from test_h264_flow import FPS, FakeCapture, encoder_pool
from test_ios import ios, our_device

from bridge_actors import DeviceError, parse_binary_header
from bridge_actors._video.access_units import AccessUnitSplitter, starts_picture
from bridge_actors._video.h264 import join_annexb, split_annexb
from bridge_actors._video.passthrough import JpegDemand, Passthrough

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


# --- the encoder service's passthrough, under a MockClock -------------------------------------

SPS = bytes.fromhex("6742c01eda0641af9ae10000030001000003003c8f162ea0")
PPS = bytes.fromhex("68ce0fc8")


def relayed_unit(number: int, keyframe: bool, *, parameter_sets: bool = True) -> bytes:
    slice_ = (b"\x65\x88" if keyframe else b"\x41\x9a") + b"%06d\x80" % number
    leading = [SPS, PPS] if keyframe and parameter_sets else []
    return join_annexb([*leading, slice_])


def number_of(packet) -> int:
    return int(split_annexb(packet.data)[-1][2:8])


class FakeStream:
    """A device's own H.264: access unit ``n`` every 1/30 s, an IDR every ``gop``."""

    def __init__(self, gop: int, *, first: int = 0, fail_after: int | None = None) -> None:
        self.gop, self.first, self.fail_after = gop, first, fail_after
        self.runs = 0
        self.running = False

    async def __call__(self, emit) -> None:
        self.runs += 1
        self.running = True
        try:
            for number in itertools.count(self.first):
                await trio.sleep(1 / FPS)
                if self.fail_after is not None and number - self.first >= self.fail_after:
                    raise DeviceError("idb: companion connection lost")
                keyframe = number % self.gop == 0
                # Only the first IDR carries SPS/PPS, as an encoder with global headers sends.
                emit(relayed_unit(number, keyframe, parameter_sets=number - self.first < self.gop))
        finally:
            self.running = False


def passthrough_of(stream: FakeStream, demand: JpegDemand | None = None) -> Passthrough:
    return Passthrough("U", stream, demand or JpegDemand(), lambda: 7)


async def take(feed, count: int) -> list:
    with trio.fail_after(60):  # virtual seconds: a feed that never gets its packets fails
        return [await feed.receive() for _ in range(count)]


async def test_a_relayed_stream_starts_at_its_first_idr_and_joiners_get_the_gop(autojump_clock):
    stream = FakeStream(gop=10, first=4)  # starts mid-GOP: 4..9 cannot be decoded
    capture = FakeCapture()
    async with encoder_pool(join="idr") as pool:
        async with pool.subscribe("U", capture.subscribe, passthrough_of(stream)) as first:
            packets = await take(first, 9)
            assert [number_of(p) for p in packets] == list(range(10, 19))
            assert packets[0].keyframe and not any(p.keyframe for p in packets[1:])
            assert packets[0].input_seq == 7 and packets[0].frame_number == 1
            async with pool.subscribe("U", capture.subscribe) as late:
                assert not late.request_keyframe()  # idb's IDRs cannot be forced
                replayed = await take(late, 10)
            service = pool.get("U")
            stats = service.statistics()
        # Joined at 18: the GOP from 10, then live; the later IDR got the SPS/PPS put back.
        assert [number_of(p) for p in replayed] == list(range(10, 20))
        assert capture.subscriptions == 0
        assert stats.h264_source == "passthrough" and stats.passthrough_dropped == 6
        assert stats.frames_encoded == 0 and stats.frames_passed_through >= 10
    units = split_annexb(relayed_unit(20, True, parameter_sets=False))
    fixed = service._with_parameter_sets(join_annexb(units), units)
    assert split_annexb(fixed)[:2] == [SPS, PPS]


async def test_a_gop_too_long_to_keep_makes_joiners_wait_for_the_next_idr(autojump_clock):
    stream = FakeStream(gop=10)
    capture = FakeCapture()
    async with (
        encoder_pool(replay_max_frames=4) as pool,
        pool.subscribe("U", capture.subscribe, passthrough_of(stream)) as first,
    ):
        await take(first, 6)  # 0..5: the GOP outgrew four frames
        async with pool.subscribe("U", capture.subscribe) as late:
            [packet] = await take(late, 1)
    assert packet.keyframe and number_of(packet) == 10


async def test_a_jpeg_viewer_switches_to_the_encoder_and_back_each_from_an_idr(autojump_clock):
    demand = JpegDemand()
    stream = FakeStream(gop=30)
    capture = FakeCapture()
    async with (
        encoder_pool() as pool,
        pool.subscribe("U", capture.subscribe, passthrough_of(stream, demand)) as feed,
    ):
        before = await take(feed, 5)
        with demand.held("U"):
            after = []
            while not after or number_of_or_none(after[-1]) is not None:
                after += await take(feed, 1)
            encoded = after[-1]
            after += await take(feed, 4)
            assert not stream.running and pool.get("U").source == "encoder"
        back = []
        while not back or number_of_or_none(back[-1]) is None:
            back += await take(feed, 1)
        assert stream.runs == 2 and pool.get("U").statistics().source_switches == 2
    assert all(number_of_or_none(p) is not None for p in before)
    assert encoded.keyframe and all(number_of_or_none(p) is None for p in after[-4:])
    assert back[-1].keyframe and number_of(back[-1]) == 0  # the new stream's first IDR
    assert capture.subscriptions == 1


def number_of_or_none(packet) -> int | None:
    """The relayed stream's number of a packet, None for one the (fake) encoder made."""
    payload = split_annexb(packet.data)[-1][2:8]
    return int(payload) if payload.isdigit() else None


async def test_a_stream_that_keeps_failing_leaves_the_encoder_in_charge(autojump_clock):
    stream = FakeStream(gop=5, fail_after=3)
    capture = FakeCapture()
    async with (
        encoder_pool(restart_max=2, restart_period=60.0, restart_backoff_initial=0.1) as pool,
        pool.subscribe("U", capture.subscribe, passthrough_of(stream)) as feed,
    ):
        while number_of_or_none(packet := (await take(feed, 1))[0]) is not None:
            pass
        stats = pool.get("U").statistics()
    assert packet.keyframe and stream.runs == 3
    assert stats.h264_source == "encoder" and "crashed 3 times" in stats.passthrough_failure
    assert stats.passthrough_restarts == 2
