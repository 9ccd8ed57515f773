"""Bridge.h264_feed end to end: the real simulated device, the real PyAV encoder."""

from __future__ import annotations

import av
import pytest
import trio
from fakes import settings, simulated

from bridge_actors import CaptureStopped, SessionNotFound, open_bridge
from bridge_actors._video.h264 import NalType, parse_sps, split_annexb

DEVICE = "iPhone 15 (simulated)"


def decode(packets) -> list:
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for packet in packets:
        frames.extend(decoder.decode(av.Packet(packet.data)))
    return frames


async def test_a_feed_starts_at_an_idr_with_parameter_sets_and_decodes(tmp_path):
    async with open_bridge(
        settings(tmp_path, fps=15), backends={"simulated": simulated(inline=False)}
    ) as bridge:
        session = await bridge.create_session(DEVICE, "18.0")
        with trio.fail_after(30):
            async with bridge.h264_feed(session.session_id) as feed:
                packets = [await feed.receive() for _ in range(8)]
                codec = feed.codec
    first = packets[0]
    assert first.keyframe
    types = [unit[0] & 0x1F for unit in split_annexb(first.data)]
    assert types.index(NalType.SPS) < types.index(NalType.PPS) < types.index(NalType.SLICE_IDR)
    sps = parse_sps(next(u for u in split_annexb(first.data) if u[0] & 0x1F == NalType.SPS))
    assert codec == sps.codec
    assert codec.startswith("avc1.42")  # Baseline profile
    assert sps.width == session.device.pixel_width - session.device.pixel_width % 2
    numbers = [p.frame_number for p in packets]
    assert numbers == sorted(set(numbers))
    assert [p.pts for p in packets] == sorted(set(p.pts for p in packets))
    frames = decode(packets)
    assert len(frames) == len(packets)
    assert (frames[0].width, frames[0].height) == (sps.width, sps.height)


async def test_feeds_share_one_encoder_beside_jpeg_viewers_and_it_stops_when_idle(tmp_path):
    config = settings(tmp_path, fps=15, service_idle_timeout=0.2)
    async with open_bridge(config, backends={"simulated": simulated(inline=False)}) as bridge:
        sid = (await bridge.create_session(DEVICE, "18.0")).session_id
        with trio.fail_after(30):
            async with (
                bridge.h264_feed(sid) as one,
                bridge.h264_feed(sid) as two,
                bridge.watch(sid) as jpeg,
            ):
                assert (await one.receive()).keyframe
                assert (await two.receive()).keyframe
                assert (await jpeg.receive()).jpeg.startswith(b"\xff\xd8")
                assert len(bridge.encoders.services()) == 1
                service = bridge.encoders.services()[0]
                assert service.statistics().feeds == 2
            await service.done.wait()
            assert service.stop_reason == "idle for 0.2s"
            # The encoder let go of the capture when its last feed left: it goes idle too.
            assert all(c.statistics().viewers == 0 for c in bridge.pool.services())


async def test_the_encoder_takes_pixels_until_a_jpeg_viewer_comes_and_again_after(tmp_path):
    """No JPEG viewer: the simulated device skips the JPEG its encoder would decode again."""
    async with open_bridge(
        settings(tmp_path, fps=15), backends={"simulated": simulated(inline=False)}
    ) as bridge:
        sid = (await bridge.create_session(DEVICE, "18.0")).session_id
        with trio.fail_after(30):
            async with bridge.h264_feed(sid) as feed:
                before = [await feed.receive() for _ in range(4)]
                [capture] = bridge.pool.services()
                alone = capture.statistics()
                assert alone.frames_unencoded == alone.frames_in > 0
                async with bridge.watch(sid) as jpeg:
                    frame = await jpeg.receive()  # never a frame of pixels
                    assert frame.jpeg.startswith(b"\xff\xd8") and frame.rgb is None
                    during = [await feed.receive() for _ in range(4)]
                    watched = capture.statistics()
                    await jpeg.receive()
                    assert capture.statistics().frames_unencoded == watched.frames_unencoded
                after = [await feed.receive() for _ in range(6)]
                assert capture.statistics().frames_unencoded > watched.frames_unencoded
    packets = before + during + after
    assert [p.frame_number for p in packets] == sorted({p.frame_number for p in packets})
    assert len(decode(packets)) == len(packets)  # one stream across both kinds of frame


async def test_unknown_session_and_deleted_session(tmp_path):
    async with open_bridge(
        settings(tmp_path, fps=15), backends={"simulated": simulated(inline=False)}
    ) as bridge:
        with pytest.raises(SessionNotFound):
            async with bridge.h264_feed("nope"):
                pass
        sid = (await bridge.create_session(DEVICE, "18.0")).session_id
        with trio.fail_after(30), pytest.raises((SessionNotFound, CaptureStopped)):
            async with bridge.h264_feed(sid) as feed:
                await feed.receive()
                service = bridge.encoders.services()[0]
                await bridge.delete_session(sid)
                while True:
                    await feed.receive()
        await service.done.wait()
        assert not bridge.encoders.services()


async def test_request_keyframe_gives_an_idr_soon_and_is_rate_limited(tmp_path):
    config = settings(tmp_path, fps=15, h264_keyframe_interval=30.0)
    async with open_bridge(config, backends={"simulated": simulated(inline=False)}) as bridge:
        sid = (await bridge.create_session(DEVICE, "18.0")).session_id
        with trio.fail_after(30):
            async with bridge.h264_feed(sid) as feed:
                assert (await feed.receive()).keyframe
                assert not (await feed.receive()).keyframe
                assert feed.request_keyframe() is True
                while not (await feed.receive()).keyframe:
                    pass
                # One forced IDR per interval: the second request waits for the next.
                assert feed.request_keyframe() is False
                service = bridge.encoders.services()[0]
                assert (service.gate.granted, service.gate.refused) == (1, 1)
