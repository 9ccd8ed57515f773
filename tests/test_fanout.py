"""The fan-out drop policy, driven without an event loop, and what a capture may publish."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import trio
import trio.testing
from fakes import SocketLikeSink, make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge_actors import DeviceInfo, Frame, ViewerEvicted
from bridge_actors._services.capture import CaptureConfig, CaptureService
from bridge_actors._services.fanout import Fanout, ViewerSlot


def frame(seq: int) -> Frame:
    return make_frame(
        seq,
        timestamp=1000.0 + seq,
        captured_at=float(seq),
        jpeg=b"\xff\xd8" + bytes([seq % 256]) + b"\xff\xd9",
    )


def test_slot_of_one_keeps_only_the_latest_frame():
    slot = ViewerSlot(1, capacity=1)
    for seq in range(1, 6):
        slot.offer(frame(seq), now=seq)
    assert [f.seq for f in slot.pending] == [5]
    assert slot.dropped == 4
    assert slot.take(now=5).seq == 5
    assert slot.take(now=5) is None
    assert slot.delivered == 1


def test_slot_of_two_drops_the_oldest_unsent_frame():
    slot = ViewerSlot(1, capacity=2)
    for seq in range(1, 5):
        slot.offer(frame(seq), now=seq)
    assert [f.seq for f in slot.pending] == [3, 4]
    assert slot.dropped == 2
    assert slot.take(now=4).seq == 3
    assert slot.take(now=4).seq == 4


def test_take_latest_skips_to_the_newest_frame_and_counts_the_rest():
    slot = ViewerSlot(1, capacity=2)
    slot.offer(frame(1), now=0)
    slot.offer(frame(2), now=0)
    assert slot.take_latest(now=0).seq == 2
    assert slot.dropped == 1


def test_capacity_is_one_or_two():
    with pytest.raises(ValueError, match="capacity"):
        ViewerSlot(1, capacity=3)


def test_stall_clock_runs_only_while_a_frame_waits_and_resets_on_progress():
    slot = ViewerSlot(1, capacity=2)
    assert not slot.is_stalled(now=100, deadline=5)
    slot.offer(frame(1), now=10)
    assert not slot.is_stalled(now=15, deadline=5)
    assert slot.is_stalled(now=15.1, deadline=5)
    slot.offer(frame(2), now=12)
    slot.take(now=14)  # progress, but a frame still waits: the clock restarts
    assert slot.stalled_since == 14
    assert not slot.is_stalled(now=18, deadline=5)
    slot.take(now=18)
    assert slot.stalled_since is None
    assert not slot.is_stalled(now=1000, deadline=5)


def test_fanout_gives_every_keeping_up_viewer_every_frame():
    fanout = Fanout(capacity=1, deadline=5)
    viewers = [fanout.add() for _ in range(50)]
    for seq in range(1, 101):
        fanout.publish(frame(seq), now=seq * 0.033)
        for viewer in viewers:
            assert viewer._slot.take(now=seq * 0.033).seq == seq
    stats = fanout.statistics()
    assert stats.frames_in == 100
    assert stats.frames_delivered == 50 * 100
    assert stats.frames_dropped == 0
    assert all(v.delivered == 100 for v in stats.per_viewer)


def test_a_viewer_that_never_takes_costs_others_nothing_and_is_evicted_after_the_deadline():
    fanout = Fanout(capacity=2, deadline=2.0)
    stalled = fanout.add()
    others = [fanout.add() for _ in range(5)]
    received = {v.key: [] for v in others}
    evicted_at = None
    for seq in range(1, 301):
        now = seq / 30
        fanout.publish(frame(seq), now=now)
        for viewer in others:
            received[viewer.key].append(viewer._slot.take(now=now).seq)
        if evicted_at is None and stalled.lifeline.cut_already:
            evicted_at = now
    assert all(seqs == list(range(1, 301)) for seqs in received.values())
    assert evicted_at is not None
    # first frame offered at 1/30 s; eviction on the first publish past the 2 s deadline
    assert 2.0 < evicted_at - 1 / 30 <= 2.0 + 1 / 30 + 1e-9
    assert isinstance(stalled.lifeline.reason, ViewerEvicted)
    assert len(fanout) == 5
    assert fanout.statistics().evicted == 1


def test_a_slow_viewer_skips_frames_but_is_not_evicted_while_it_makes_progress():
    fanout = Fanout(capacity=1, deadline=1.0)
    slow = fanout.add()
    got = []
    for seq in range(1, 301):
        now = seq / 30
        fanout.publish(frame(seq), now=now)
        if seq % 10 == 0:  # takes one frame in ten: 3 fps against 30
            got.append(slow._slot.take(now=now).seq)
    assert got == list(range(10, 301, 10))
    assert not slow.lifeline.cut_already
    assert slow._slot.dropped == 300 - 30


def pixels_frame(seq: int) -> Frame:
    return make_frame(seq, captured_at=float(seq), jpeg=None, rgb=np.zeros((4, 2, 3), np.uint8))


def test_a_frame_without_jpeg_reaches_only_viewers_that_encode_pictures_themselves():
    fanout = Fanout(capacity=2, deadline=1.0)
    assert fanout.jpeg_viewers == 0
    encoder = fanout.add(capacity=1, needs_jpeg=False)
    assert fanout.jpeg_viewers == 0
    jpeg_viewer = fanout.add()
    assert fanout.jpeg_viewers == 1
    fanout.publish(pixels_frame(1), now=0.0)  # made before the JPEG viewer was counted
    fanout.publish(frame(2), now=0.1)
    assert [f.seq for f in jpeg_viewer._slot.pending] == [2]
    assert encoder._slot.take(now=0.1).seq == 2 and encoder._slot.dropped == 1
    assert jpeg_viewer._slot.take(now=0.1).seq == 2
    # Frames it is never offered do not count against the JPEG viewer's deadline.
    for seq in range(3, 40):
        fanout.publish(pixels_frame(seq), now=seq * 0.1)
        assert encoder._slot.take(now=seq * 0.1).seq == seq
    assert not jpeg_viewer.lifeline.cut_already and not jpeg_viewer._slot.pending
    fanout.remove(jpeg_viewer)
    fanout.remove(jpeg_viewer)  # twice: still counted once
    assert fanout.jpeg_viewers == 0
    fanout.remove(encoder)
    assert len(fanout) == 0 and fanout.jpeg_viewers == 0


def test_a_frame_carries_exactly_one_of_jpeg_and_pixels():
    with pytest.raises(ValueError, match="exactly one"):
        make_frame(1, jpeg=None)
    with pytest.raises(ValueError, match="exactly one"):
        make_frame(1, rgb=np.zeros((4, 2, 3), np.uint8))
    assert isinstance(pixels_frame(1).picture, np.ndarray)
    assert frame(1).picture == frame(1).jpeg
    assert "rgb (4, 2, 3)" in repr(pixels_frame(1))


def test_close_all_gives_each_viewer_its_own_exception():
    fanout = Fanout()
    a, b = fanout.add(), fanout.add()
    fanout.close_all(ViewerEvicted, "bye")
    assert isinstance(a.lifeline.reason, ViewerEvicted)
    assert a.lifeline.reason is not b.lifeline.reason
    assert len(fanout) == 0


def test_a_rate_capped_viewer_waiting_between_frames_is_not_stalled():
    fanout = Fanout(capacity=1, deadline=0.5)
    capped = fanout.add(max_fps=1.0)
    taken = []
    for seq in range(1, 301):
        now = seq / 30
        fanout.publish(frame(seq), now=now)
        if seq % 30 == 0:  # one frame a second, as its cap allows
            taken.append(capped._slot.take_latest(now=now).seq)
    assert taken == list(range(30, 301, 30))
    assert not capped.lifeline.cut_already
    # but one that stops taking altogether is still evicted, one pause later than others
    for seq in range(301, 360):
        fanout.publish(frame(seq), now=seq / 30)
    assert isinstance(capped.lifeline.reason, ViewerEvicted)


# --- viewers written to at once (a handoff sink), under a MockClock ---


async def publish_at_30_fps(fanout: Fanout, count: int) -> None:
    for seq in range(1, count + 1):
        fanout.publish(frame(seq))
        await trio.sleep(1 / 30)


async def test_a_sleeping_viewer_is_written_to_by_its_sink_and_woken_for_what_is_left(
    autojump_clock,
):
    fanout = Fanout(capacity=2, deadline=5.0)
    viewer = fanout.add()
    sink = SocketLikeSink()
    viewer.deliver_to(sink)
    woken: list[Frame] = []

    async def watch() -> None:
        while True:
            woken.append(await viewer.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(publish_at_30_fps, fanout, 150)
        await trio.sleep(1)
        assert len(sink.taken) >= 29 and woken == []  # not one wake-up for 30 frames
        sink.full = True
        await sink.finishing.wait()  # a frame went in part: the viewer's task finishes it
        taken_before = len(sink.taken)
        await trio.sleep(0.5)
        assert woken == [] and len(viewer._slot.pending) == 2  # the slot's policy holds
        sink.full = False
        sink.drained.set()
        await trio.sleep(1)
        # What waited is sent the ordinary way, then the sink takes over again.
        assert len(woken) == 2 and len(sink.taken) >= taken_before + 29
        nursery.cancel_scope.cancel()
    before, after = sink.taken[:taken_before], sink.taken[taken_before:]
    assert before[-1].seq < woken[0].seq < woken[1].seq < after[0].seq  # in the order published
    stats = viewer.statistics()
    seqs = [f.seq for f in sorted(sink.taken + woken, key=lambda f: f.seq)]
    assert seqs == sorted(set(seqs))
    assert stats.delivered == len(seqs) and stats.delivered + stats.dropped + stats.pending == (
        fanout.frames_in
    )
    assert stats.dropped >= 10  # the half second the socket was full


async def test_a_viewer_whose_sink_never_drains_is_evicted_after_the_deadline(autojump_clock):
    fanout = Fanout(capacity=2, deadline=2.0)
    viewer = fanout.add()
    keeping_up = fanout.add()
    sink, other = SocketLikeSink(), SocketLikeSink()
    sink.full = True
    viewer.deliver_to(sink)
    keeping_up.deliver_to(other)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeping_up.receive)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(publish_at_30_fps, fanout, 300)
        with pytest.raises(ViewerEvicted, match="more than 2s"), viewer.lifeline.held():
            async for _ in viewer:  # until a frame is left over, then stuck finishing it
                pass
        assert 2.0 < trio.current_time() < 2.2
        await trio.sleep(1)  # the viewer that keeps up is still written to
        nursery.cancel_scope.cancel()
    assert len(other.taken) == fanout.frames_in and not keeping_up.lifeline.cut_already
    assert fanout.statistics().evicted == 1


async def test_a_viewer_cut_while_finishing_shielded_ends_by_its_lifeline(autojump_clock):
    """The cut is seen as the cancellation of the viewer's scope, never as a bare
    exception out of receive() that a nursery in that scope would wrap in a group."""
    fanout = Fanout(capacity=1, deadline=1.0)
    viewer = fanout.add()
    sink = SocketLikeSink(shielded=True)
    sink.full = True
    viewer.deliver_to(sink)
    viewer.lifeline.on_cut(sink.drained.set)  # an evicted viewer's socket is aborted
    with pytest.raises(ViewerEvicted, match="more than 1s"), viewer.lifeline.held():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_at_30_fps, fanout, 100)
            async for _ in viewer:
                pass


async def test_a_busy_viewer_is_woken_not_written_to(autojump_clock):
    """The sink is used only while the viewer's task sleeps in receive(): one that is
    still sending the ordinary way takes its next frame itself."""
    fanout = Fanout(capacity=1, deadline=5.0)
    viewer = fanout.add()
    sink = SocketLikeSink()
    viewer.deliver_to(sink)
    fanout.publish(frame(1))  # nobody waits yet
    assert sink.taken == [] and (await viewer.receive()).seq == 1


def test_a_rate_capped_viewer_takes_no_sink():
    fanout = Fanout()
    capped = fanout.add(max_fps=5)
    with pytest.raises(ValueError, match="max_fps"):
        capped.deliver_to(SocketLikeSink())
    capped.deliver_to(None)


async def test_sinks_change_only_between_frames(autojump_clock):
    fanout = Fanout(capacity=2, deadline=5.0)
    viewer = fanout.add()
    sink = SocketLikeSink()
    sink.full = True
    viewer.deliver_to(sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(viewer.receive)
        await trio.testing.wait_all_tasks_blocked()
        fanout.publish(frame(1))  # written in part: the viewer's task must finish it
        with pytest.raises(RuntimeError, match="finish"):
            viewer.deliver_to(SocketLikeSink())
        await sink.finishing.wait()
        viewer.deliver_to(None)  # the task has taken the rest over
        nursery.cancel_scope.cancel()


# --- what a capture may publish ------------------------------------------------------------


def _capture_service() -> CaptureService:
    device = DeviceInfo(
        udid="U",
        name="n",
        device_type="t",
        ios_version="18.0",
        point_width=2,
        point_height=4,
        pixel_width=2,
        pixel_height=4,
        backend="simulated",
    )
    return CaptureService(device, None, CaptureConfig(), lambda: 0)


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
@settings(max_examples=100, deadline=None)
def test_publish_rgb_takes_a_picture_or_names_what_it_was_given(array):
    async def publish_one():
        service = _capture_service()
        encoder = service.attach(capacity=1, needs_jpeg=False)
        jpeg_viewer = service.attach()
        assert service.wants_jpeg
        good = array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and array.size
        if not good:
            with pytest.raises(ValueError, match=r"publish_rgb takes a \(height, width, 3\) uint8"):
                service.publish_rgb(array)
            assert service.statistics().frames_in == service.frames_unencoded == 0
        else:
            service.publish_rgb(array, point_size=(7, 9))
            [frame] = encoder._slot.pending
            assert frame.rgb is array and frame.jpeg is None and frame.seq == 1
            assert (frame.pixel_height, frame.pixel_width) == array.shape[:2]
            assert (frame.point_width, frame.point_height) == (7, 9)
            assert not jpeg_viewer._slot.pending
            assert service.frames_unencoded == 1
        # Whatever came before, a JPEG still reaches both and numbering goes on.
        service.publish(b"\xff\xd8\xff\xd9", pixel_width=2, pixel_height=4)
        assert jpeg_viewer._slot.take(now=0).seq == (2 if good else 1)
        service.detach(jpeg_viewer)
        assert not service.wants_jpeg

    trio.run(publish_one)
