"""The encoder service's policies under a MockClock: keyframes on join, lagging and evicted feeds.

A fake capture publishes numbered frames at 30 fps and a fake codec turns each into a
one-slice access unit, so what is checked is the service alone: when IDRs are made, and
which packets each feed receives.
"""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from fakes import SocketLikeSink

from bridge_actors import CaptureFailed, ViewerEvicted
from bridge_actors._backends.simulated import run_on_event_loop
from bridge_actors._device import Frame
from bridge_actors._video.encoder import (
    EncodedPacket,
    EncoderConfig,
    EncoderPool,
    FeedSlot,
    KeyframeGate,
)
from bridge_actors._video.h264 import TIME_BASE, escape_rbsp, join_annexb

SPS = bytes.fromhex("6742c01eda0641af9ae10000030001000003003c8f162ea0")
PPS = bytes.fromhex("68ce0fc8")
FPS = 30


class FakeCodec:
    """Every frame becomes one access unit; an IDR carries SPS and PPS, as x264 writes it."""

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.keyframes = 0

    def encode(self, jpeg: bytes, pts: int, keyframe: bool) -> list[tuple[bytes, int]]:
        payload = escape_rbsp(jpeg + b"\x80")
        if keyframe:
            self.keyframes += 1
            return [(join_annexb([SPS, PPS, b"\x65\x88" + payload]), pts)]
        return [(join_annexb([b"\x41\x9a" + payload]), pts)]

    def close(self) -> None:
        pass


class FakeCapture:
    def __init__(self) -> None:
        self.subscriptions = 0

    @asynccontextmanager
    async def subscribe(self):
        self.subscriptions += 1
        yield self._frames()

    async def _frames(self):
        seq = 0
        while True:
            await trio.sleep(1 / FPS)
            seq += 1
            yield Frame(
                seq=seq,
                timestamp=0.0,
                captured_at=trio.current_time(),
                jpeg=seq.to_bytes(4, "big"),
                pixel_width=390,
                pixel_height=844,
                point_width=390,
                point_height=844,
                input_seq=0,
            )


@asynccontextmanager
async def encoder_pool(**config):
    pool = EncoderPool(
        EncoderConfig(**{"keyframe_interval": 2.0, "backlog": 5, **config}),
        FakeCodec,
        trio.CapacityLimiter(1),
        run_on_event_loop,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


def assert_decodable(packets: list[EncodedPacket]) -> None:
    """Starts at a keyframe, and every P-frame follows the frame before it: no half GOP."""
    assert packets[0].keyframe
    for before, after in itertools.pairwise(packets):
        assert after.keyframe or after.frame_number == before.frame_number + 1, (before, after)


def test_keyframe_gate_grants_one_request_per_interval():
    gate = KeyframeGate(2.0)
    assert gate.due(0.0)
    gate.keyframe_made(0.0)
    assert not gate.due(1.0)
    assert gate.request(1.0)
    assert gate.due(1.0)
    gate.keyframe_made(1.0)
    assert not gate.request(2.5)  # within 2 s of the last granted request
    assert gate.request(3.0)  # not granted: the natural keyframe is due anyway
    assert (gate.granted, gate.refused) == (1, 1)
    gate.keyframe_made(3.0)
    assert not gate.due(4.9)
    assert gate.due(5.0)  # the natural interval
    assert gate.request(3.5)
    assert (gate.granted, gate.refused) == (2, 1)
    with pytest.raises(ValueError):
        KeyframeGate(0)


def test_feed_slot_skips_to_the_next_keyframe_when_behind():
    def packet(number: int, keyframe: bool) -> EncodedPacket:
        return EncodedPacket(b"", keyframe, number, TIME_BASE, number, 0.0)

    slot = FeedSlot(1, backlog=3)
    slot.offer(packet(1, False), 0.0)  # not a keyframe: nothing to start from
    assert not slot.pending
    for number in range(2, 8):
        slot.offer(packet(number, number == 2), 0.0)
    # 2 (key), 3, 4 were waiting when 5 came: all dropped, waiting for a keyframe.
    assert [p.frame_number for p in slot.pending] == []
    assert slot.waiting_for_keyframe and slot.skips == 1
    slot.offer(packet(8, True), 0.0)
    slot.offer(packet(9, False), 0.0)
    assert [slot.take(1.0).frame_number, slot.take(1.0).frame_number] == [8, 9]
    assert slot.take(1.0) is None and slot.stalled_since is None


async def drain(feed, into: list[EncodedPacket] | None = None) -> None:
    async for packet in feed:
        if into is not None:
            into.append(packet)


@pytest.mark.parametrize("join", ["idr", "idr_or_gop"])
async def test_a_join_storm_costs_one_forced_idr_per_interval(autojump_clock, join):
    async with encoder_pool(join=join) as pool, trio.open_nursery() as nursery:
        capture = FakeCapture()
        firsts: list[tuple[float, EncodedPacket]] = []
        received = {21: trio.Event(), 22: trio.Event()}

        async def viewer(task_status=trio.TASK_STATUS_IGNORED):
            async with pool.subscribe("device", capture.subscribe) as feed:
                joined = trio.current_time()
                task_status.started()
                firsts.append((joined, await feed.receive()))
                if len(firsts) in received:
                    received[len(firsts)].set()
                await drain(feed)

        await nursery.start(viewer)
        await trio.sleep(0.5)  # mid-GOP
        for _ in range(20):
            await nursery.start(viewer)
            await trio.sleep(0.01)
        await received[21].wait()
        service = pool.get("device")
        assert all(packet.keyframe for _, packet in firsts)
        assert service.gate.granted == 1
        waits = [packet.captured_at - joined for joined, packet in firsts[1:]]
        if join == "idr":
            # Refused joiners wait for the natural keyframe, 2 s after the first one.
            assert max(waits) > 1.0
            assert service.gate.refused > 0
        else:
            # Refused joiners replay the GOP of the forced IDR, at most an interval old.
            assert all(wait <= 1 / FPS for wait in waits if wait >= 0)
        assert service.keyframes <= 3  # the first, the forced one, perhaps one natural
        await trio.sleep(2.5)  # past one interval
        joined_at = trio.current_time()
        await nursery.start(viewer)
        await received[22].wait()
        assert service.gate.granted == 2
        assert firsts[-1][1].captured_at - joined_at <= 1 / FPS
        assert capture.subscriptions == 1
        nursery.cancel_scope.cancel()


async def test_joins_within_an_interval_wait_for_the_next_keyframe_when_refused(autojump_clock):
    async with encoder_pool(keyframe_interval=10.0) as pool, trio.open_nursery() as nursery:
        capture = FakeCapture()
        async with pool.subscribe("device", capture.subscribe) as first:
            nursery.start_soon(drain, first)
            await trio.sleep(1.0)
            async with pool.subscribe("device", capture.subscribe) as second:
                packet = await second.receive()  # a forced IDR, at most a frame later
                assert packet.keyframe
                nursery.start_soon(drain, second)
                joined = trio.current_time()
                await trio.sleep(1.0)
                async with pool.subscribe("device", capture.subscribe) as third:
                    packet = await third.receive()
                    # refused: the next IDR is the natural one, 10 s after the forced one
                    assert packet.keyframe
                    assert trio.current_time() - joined >= 9.0
            service = pool.get("device")
            assert (service.gate.granted, service.gate.refused) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_gop_replay_starts_a_joiner_at_the_current_idr(autojump_clock):
    async with encoder_pool(join="gop") as pool, trio.open_nursery() as nursery:
        capture = FakeCapture()
        async with pool.subscribe("device", capture.subscribe) as first:
            nursery.start_soon(drain, first)
            await trio.sleep(1.0)
            async with pool.subscribe("device", capture.subscribe) as second:
                replay = [await second.receive() for _ in range(35)]
        nursery.cancel_scope.cancel()
        assert_decodable(replay)
        assert replay[0].frame_number == 1  # the GOP's IDR, a second old
        assert replay[0].captured_at < replay[-1].captured_at - 1.0
        assert pool.get("device").gate.granted == 0


async def test_a_joiner_with_a_sink_gets_its_replayed_gop_at_once_not_a_packet_a_time(
    autojump_clock,
):
    """A crowd of joiners each sending a replay packet by packet fell behind the live
    packets and skipped; with a sink the task hands the whole replay over in one go."""
    async with encoder_pool(join="gop", backlog=5) as pool, trio.open_nursery() as nursery:
        capture = FakeCapture()
        async with pool.subscribe("device", capture.subscribe) as first:
            nursery.start_soon(drain, first)
            await trio.sleep(1.0)  # 30 packets into the GOP: six times the backlog
            async with pool.subscribe("device", capture.subscribe) as joiner:
                sink = SocketLikeSink()
                joiner.deliver_to(sink)
                with trio.move_on_after(0.5) as waited:
                    await joiner.receive()  # hands everything over; nothing left to send
                assert waited.cancelled_caught
                assert joiner.statistics().skips == 0
                assert len(sink.taken) >= 30 + 14
        nursery.cancel_scope.cancel()
    assert_decodable(sink.taken)
    assert sink.taken[0].frame_number == 1  # the GOP's IDR


async def test_a_lagging_feed_skips_to_the_next_keyframe_never_a_half_gop(autojump_clock):
    async with encoder_pool(keyframe_interval=1.0, backlog=5, feed_deadline=5.0) as pool:
        capture = FakeCapture()
        received: list[EncodedPacket] = []
        async with pool.subscribe("device", capture.subscribe) as feed:
            for _ in range(3):
                for _ in range(10):
                    received.append(await feed.receive())
                await trio.sleep(0.7)  # 21 frames arrive: far more than the backlog
            for _ in range(60):
                received.append(await feed.receive())
            assert feed.statistics().skips >= 2
        assert_decodable(received)


async def test_a_feed_that_skips_asks_for_the_next_keyframe_within_the_gate(autojump_clock):
    async with encoder_pool(keyframe_interval=10.0, backlog=5, feed_deadline=5.0) as pool:
        capture = FakeCapture()
        received: list[EncodedPacket] = []
        async with pool.subscribe("device", capture.subscribe) as feed:
            received.append(await feed.receive())
            service = pool.get("device")
            lagged_at = trio.current_time()
            await trio.sleep(0.25)  # 7 frames: one more than the backlog holds
            received.extend([await feed.receive() for _ in range(5)])
            # Resumed at a forced IDR just after the skip, not the natural one 10 s on.
            resumed = next(p for p in received[1:] if p.keyframe)
            assert resumed.captured_at - lagged_at <= 0.25
            assert feed.statistics().skips == 1 and service.gate.granted == 1
            await trio.sleep(0.25)  # behind again within the interval: the gate refuses
            received.extend([await feed.receive() for _ in range(2)])
            assert feed.statistics().skips == 2 and service.gate.granted == 1
            assert service.gate.refused == 0  # the encoder's own asking is no viewer's refusal
            assert received[-2].keyframe and received[-2].captured_at >= 10.0  # the natural IDR
        assert_decodable(received)


async def test_a_feed_that_takes_nothing_is_evicted_after_the_deadline(autojump_clock):
    async with encoder_pool(feed_deadline=2.0) as pool:
        capture = FakeCapture()
        with pytest.raises(ViewerEvicted, match="more than 2s"):
            async with pool.subscribe("device", capture.subscribe) as stuck:
                await stuck.receive()
                started = trio.current_time()
                await trio.sleep(10)
        assert 2.0 < trio.current_time() - started < 3.0
        assert pool.get("device").evicted == 1


class BrokenCodec(FakeCodec):
    def encode(self, jpeg: bytes, pts: int, keyframe: bool) -> list[tuple[bytes, int]]:
        if jpeg == (3).to_bytes(4, "big"):
            raise RuntimeError("codec crashed")
        return super().encode(jpeg, pts, keyframe)


async def test_a_codec_failure_ends_every_feed_with_capture_failed(autojump_clock):
    pool = EncoderPool(EncoderConfig(), BrokenCodec, trio.CapacityLimiter(1), run_on_event_loop)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        capture = FakeCapture()
        with pytest.raises(CaptureFailed, match="codec crashed"):
            async with pool.subscribe("device", capture.subscribe) as feed:
                while True:
                    await feed.receive()
        assert pool.get("device") is None  # gone: the next feed starts a new encoder
        async with pool.subscribe("device", capture.subscribe) as feed:
            assert (await feed.receive()).keyframe
            assert pool.get("device").state == "running"
        nursery.cancel_scope.cancel()


async def test_a_sleeping_viewer_is_delivered_to_by_its_sink_and_hands_it_what_waited(
    autojump_clock,
):
    async with encoder_pool(keyframe_interval=1.0, backlog=5, feed_deadline=5.0) as pool:
        capture = FakeCapture()
        sink = SocketLikeSink()
        woken: list[EncodedPacket] = []
        async with (
            pool.subscribe("device", capture.subscribe) as feed,
            trio.open_nursery() as nursery,
        ):
            feed.deliver_to(sink)

            async def viewer() -> None:
                while True:
                    woken.append(await feed.receive())

            nursery.start_soon(viewer)
            await trio.sleep(1)
            assert len(sink.taken) >= 25 and woken == []
            sink.full = True
            await sink.finishing.wait()  # one packet went in part: the viewer finishes it
            taken_before = len(sink.taken)
            await trio.sleep(0.1)
            waiting = feed.statistics().pending
            assert woken == [] and waiting >= 2
            sink.full = False
            sink.drained.set()
            await trio.sleep(1)
            # The packets published meanwhile the task hands to the sink itself, all at once.
            assert woken == [] and len(sink.taken) > taken_before + 25
            nursery.cancel_scope.cancel()
        delivered = sink.taken  # in the order published, each once
        assert_decodable(delivered)
        numbers = [packet.frame_number for packet in delivered]
        assert numbers == list(range(numbers[0], numbers[-1] + 1))
        assert feed.statistics().delivered == len(delivered)


async def test_a_viewer_whose_sink_never_drains_skips_then_is_evicted(autojump_clock):
    async with encoder_pool(keyframe_interval=1.0, backlog=5, feed_deadline=2.0) as pool:
        capture = FakeCapture()
        sink = SocketLikeSink()
        with pytest.raises(ViewerEvicted, match="more than 2s"):
            async with (
                pool.subscribe("device", capture.subscribe) as feed,
                trio.open_nursery() as nursery,
            ):
                feed.deliver_to(sink)
                sink.full = True
                nursery.start_soon(feed.receive)
                await sink.finishing.wait()
                started = trio.current_time()
                await trio.sleep(10)
        assert 2.0 < trio.current_time() - started < 3.0
        assert feed.statistics().skips >= 1
        assert pool.get("device").evicted == 1
