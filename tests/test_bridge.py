"""The actors running together: open_bridge with the real simulated backend."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from fakes import CrashingBackend, settings, simulated

from bridge_actors import (
    BadInput,
    CaptureFailed,
    CaptureStopped,
    RateLimited,
    ServerBusy,
    SessionFull,
    SessionNotFound,
    ViewerEvicted,
    open_bridge,
)
from bridge_actors._backends.jpeg import decode_jpeg
from bridge_actors._backends.simulated import SimulatedBackend, run_on_event_loop
from bridge_actors._server.views import (
    connection_manager,
    resource_manager,
    session_info,
    session_list_item,
)
from bridge_actors._services.sessions import (
    FIRST_CHECK_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    HEALTH_CHECK_TIMEOUT,
    Session,
)
from bridge_actors._services.warden import MemorySample

DEVICE = "iPhone 15 (simulated)"
VERSION = "18.0"


async def new_session(bridge) -> str:
    session = await bridge.create_session(DEVICE, VERSION)
    return session.session_id


class FakeProbe:
    def __init__(self, rss_mb: float = 100.0) -> None:
        self.rss_mb = rss_mb

    def __call__(self) -> MemorySample:
        return MemorySample(
            rss_mb=self.rss_mb, vms_mb=2 * self.rss_mb, percent=1.0, available_mb=9e3
        )


async def test_fifty_viewers_each_receive_every_frame(tmp_path, autojump_clock):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        seqs: list[list[int]] = [[] for _ in range(50)]
        all_attached = trio.Event()
        attached = 0

        async def viewer(i: int) -> None:
            nonlocal attached
            async with bridge.watch(sid) as frames:
                attached += 1
                if attached == 50:
                    all_attached.set()
                async for frame in frames:
                    seqs[i].append(frame.seq)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(viewer, i)
            await all_attached.wait()
            await trio.sleep(5)
            nursery.cancel_scope.cancel()

        service_frames = bridge.pool.statistics()
        assert service_frames.services == 1
        assert service_frames.reuses == 49
        for received in seqs:
            assert len(received) >= 140  # 30 fps for 5 s
            assert received == list(range(received[0], received[0] + len(received)))
        # every viewer ends at the same latest frame: nobody took anyone's frames
        assert len({received[-1] for received in seqs}) == 1
        capture = bridge.statistics().captures[0]
        assert capture.frames_dropped == 0


async def test_frames_are_real_jpegs_with_the_device_geometry(tmp_path):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        with trio.fail_after(10):
            async with bridge.watch(sid) as frames:
                frame = await frames.receive()
        picture = decode_jpeg(frame.jpeg)
        assert picture.shape[:2] == (844, 390)
        assert (frame.pixel_width, frame.pixel_height) == (390, 844)
        assert (frame.point_width, frame.point_height) == (390, 844)


async def test_a_viewer_that_never_takes_frames_is_evicted_and_costs_others_nothing(
    tmp_path, autojump_clock
):
    config = settings(tmp_path, viewer_deadline=2.0)
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        received: list[int] = []
        outcome: list[BaseException] = []
        evicted = trio.Event()
        stalled_attached = trio.Event()

        async def stalled() -> None:
            try:
                async with bridge.watch(sid):
                    stalled_attached.set()
                    await trio.sleep_forever()
            except ViewerEvicted as exc:
                outcome.append(exc)
                evicted.set()

        async def keeping_up() -> None:
            async with bridge.watch(sid) as frames:
                async for frame in frames:
                    received.append(frame.seq)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stalled)
            await stalled_attached.wait()
            started = trio.current_time()
            nursery.start_soon(keeping_up)
            await evicted.wait()
            evicted_after = trio.current_time() - started
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

        assert isinstance(outcome[0], ViewerEvicted)
        assert 2.0 < evicted_after < 2.5
        assert received == list(range(received[0], received[0] + len(received)))
        assert len(received) >= 85  # ~3 s at 30 fps, none lost to the stalled viewer
        assert bridge.pool.statistics().viewers == 0


async def test_idle_capture_is_reused_before_the_timeout_and_cancelled_after(
    tmp_path, autojump_clock
):
    config = settings(tmp_path, service_idle_timeout=60.0)
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)

        async def watch_one_frame() -> None:
            async with bridge.watch(sid) as frames:
                await frames.receive()

        await watch_one_frame()
        await trio.sleep(59)
        await watch_one_frame()
        pool = bridge.pool.statistics()
        assert (pool.services, pool.services_created, pool.reuses) == (1, 1, 1)
        assert pool.reuse_rate == 0.5

        await trio.sleep(59)
        assert bridge.pool.statistics().services == 1
        await trio.sleep(2)
        pool = bridge.pool.statistics()
        assert (pool.services, pool.services_destroyed) == (0, 1)
        assert pool.stopped_by_reason == {"idle": 1}

        await watch_one_frame()  # a new viewer starts a new capture
        assert bridge.pool.statistics().services_created == 2


async def test_memory_warden_stops_idle_captures_and_never_one_with_viewers(
    tmp_path, autojump_clock
):
    probe = FakeProbe(100)
    config = settings(tmp_path, max_memory_mb=1000, service_idle_timeout=600.0)
    async with open_bridge(
        config, backends={"simulated": simulated()}, memory_probe=probe
    ) as bridge:
        watched, idle, third = [await new_session(bridge) for _ in range(3)]
        async with bridge.watch(idle) as frames:
            await frames.receive()
        async with trio.open_nursery() as nursery:
            attached = trio.Event()

            async def keep_watching() -> None:
                async with bridge.watch(watched) as frames:
                    attached.set()
                    async for _ in frames:
                        pass

            nursery.start_soon(keep_watching)
            await attached.wait()
            assert bridge.pool.statistics().services == 2

            await bridge.warden.check()
            assert bridge.pool.statistics().services == 2
            assert bridge.ready

            probe.rss_mb = 850  # elevated: every zero-viewer capture goes
            await bridge.warden.check()
            await trio.sleep(0.1)
            services = {s.device.udid: s for s in bridge.pool.services()}
            assert list(services) == [bridge.get_session(watched).device.udid]
            assert resource_manager(bridge.resource_statistics())["metrics"]["memory_cleanups"] == 1
            assert bridge.ready

            probe.rss_mb = 1200  # critical: readiness false, no new capture may start
            await bridge.warden.check()
            assert not bridge.ready
            with pytest.raises(ServerBusy):
                async with bridge.watch(third):
                    pass
            assert bridge.pool.statistics().viewers == 1  # the watched capture is untouched

            probe.rss_mb = 300
            await bridge.warden.check()
            assert bridge.ready
            async with bridge.watch(third) as frames:
                await frames.receive()
            nursery.cancel_scope.cancel()


async def test_deleting_a_session_ends_its_viewers_connections_and_capture(
    tmp_path, autojump_clock
):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        other = await new_session(bridge)
        outcomes: list[BaseException] = []
        ready = trio.Event()
        count = 0

        async def viewer(session_id: str) -> None:
            nonlocal count
            try:
                async with (
                    bridge.connect(session_id, "video", "127.0.0.1"),
                    bridge.watch(session_id) as frames,
                ):
                    count += 1
                    if count == 4:
                        ready.set()
                    async for _ in frames:
                        pass
            except SessionNotFound as exc:
                outcomes.append(exc)

        async def log_reader() -> None:
            try:
                async with bridge.logs(sid) as lines:
                    async for _ in lines:
                        pass
            except SessionNotFound as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(viewer, sid)
            nursery.start_soon(viewer, other)
            nursery.start_soon(log_reader)
            await ready.wait()
            await trio.sleep(0.5)
            await bridge.delete_session(sid)
            assert len(outcomes) == 4
            assert all(exc.deleted for exc in outcomes)
            udids = [s.device.udid for s in bridge.pool.services()]
            assert udids == [bridge.get_session(other).device.udid]
            with pytest.raises(SessionNotFound):
                bridge.get_session(sid)
            with pytest.raises(SessionNotFound):
                async with bridge.connect(sid, "video", "127.0.0.1"):
                    pass
            nursery.cancel_scope.cancel()
        stats = connection_manager(bridge.connection_statistics())
        assert sid not in stats["sessions"]
        metrics = resource_manager(bridge.resource_statistics())["metrics"]
        assert metrics["client_connections"] == metrics["client_disconnections"] == 4


async def test_a_crashing_capture_is_restarted_and_viewers_keep_watching(tmp_path, autojump_clock):
    backend = CrashingBackend(frames_per_run=5, crashes=2)
    config = settings(tmp_path, restart_max=3, restart_period=30.0, restart_backoff_initial=0.5)
    async with open_bridge(config, backends={"simulated": backend}) as bridge:
        sid = await new_session(bridge)
        seqs = []
        with trio.fail_after(60):
            async with bridge.watch(sid) as frames:
                async for frame in frames:
                    seqs.append(frame.seq)
                    if len(seqs) == 20:
                        break
        assert seqs == list(range(1, 21))
        assert backend.runs == 3
        capture = bridge.pool.services()[0].statistics()
        assert capture.restarts == 2
        assert "crashed on run 2" in capture.last_error


async def test_a_capture_that_keeps_crashing_fails_its_viewers(tmp_path, autojump_clock):
    backend = CrashingBackend(frames_per_run=2, crashes=None)
    config = settings(tmp_path, restart_max=3, restart_period=30.0, restart_backoff_initial=0.1)
    async with open_bridge(config, backends={"simulated": backend}) as bridge:
        sid = await new_session(bridge)
        frames_seen = 0
        with trio.fail_after(60), pytest.raises(CaptureFailed, match="crashed 4 times"):
            async with bridge.watch(sid) as frames:
                async for _ in frames:
                    frames_seen += 1
        assert frames_seen == 8
        assert backend.runs == 4
        assert bridge.pool.statistics().services == 0
        # the next viewer gets a fresh capture (the device may have recovered)
        backend.crashes = 0
        async with bridge.watch(sid) as frames:
            await frames.receive()


async def test_rate_limits_and_caps_refuse_without_consuming(tmp_path, autojump_clock):
    config = settings(tmp_path, max_connections_per_minute=5, max_connections_per_session=3)
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        async with (
            bridge.connect(sid, "video", "10.0.0.1"),
            bridge.connect(sid, "control", "10.0.0.1"),
            bridge.connect(sid, "logs", "10.0.0.1"),
        ):
            with pytest.raises(SessionFull):
                async with bridge.connect(sid, "video", "10.0.0.2"):
                    pass
            stats = connection_manager(bridge.connection_statistics())["sessions"][sid]
            assert stats["active_connections"] == 3
            assert stats["connection_types"] == {"video": 1, "control": 1, "logs": 1}
        for _ in range(2):
            async with bridge.connect(sid, "video", "10.0.0.1"):
                pass
        await trio.sleep(10)
        with pytest.raises(RateLimited) as refused:
            async with bridge.connect(sid, "video", "10.0.0.1"):
                pass
        assert refused.value.retry_after == pytest.approx(50.0)
        async with bridge.connect(sid, "video", "10.0.0.2"):  # another address is unaffected
            pass
        await trio.sleep(50)
        async with bridge.connect(sid, "video", "10.0.0.1"):
            pass
        kpis = bridge.statistics().kpis
        assert kpis.connection_success_rate == pytest.approx(7 / 9)
        assert kpis.denied_share["rate_limited"] == pytest.approx(1 / 9)


async def test_unknown_session_and_bad_input_are_named(tmp_path):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        with pytest.raises(SessionNotFound):
            async with bridge.watch("nope"):
                pass
        with pytest.raises(BadInput, match="device_type"):
            await bridge.create_session("Nokia 3310", VERSION)
        with pytest.raises(BadInput, match="ios_version"):
            await bridge.create_session(DEVICE, "1.0")
        sid = await new_session(bridge)
        with pytest.raises(BadInput, match=r"^t: unknown control type 'dance'"):
            await bridge.control(sid, {"t": "dance"})
        with pytest.raises(BadInput, match=r"^x: must be a number"):
            await bridge.control(sid, {"t": "tap", "x": "left", "y": 3})
        assert len(bridge.list_sessions()) == 1
        assert await bridge.control(sid, {"t": "tap", "x": 10, "y": 20}) == 1


async def test_a_control_event_shows_up_in_later_frames(tmp_path, autojump_clock):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        async with bridge.watch(sid) as frames:
            first = await frames.receive()
            assert first.input_seq == 0
            before = decode_jpeg(first.jpeg)[400, 200].astype(int)
            input_seq = await bridge.control(sid, {"t": "tap", "x": 200, "y": 400})
            async for frame in frames:
                if frame.input_seq >= input_seq:
                    break
            after = decode_jpeg(frame.jpeg)[400, 200].astype(int)
        assert abs(after - before).sum() > 60  # the tap mark is drawn where it landed


async def test_sessions_persist_and_survive_a_crash_between_write_and_rename(tmp_path, monkeypatch):
    backend = simulated()
    async with open_bridge(settings(tmp_path), backends={"simulated": backend}) as bridge:
        first = await new_session(bridge)
        real_replace = os.replace

        def crash(*args):
            raise OSError("power cut between write and rename")

        monkeypatch.setattr(os, "replace", crash)
        await new_session(bridge)  # its save fails; the session itself lives on
        assert len(bridge.list_sessions()) == 2
        monkeypatch.setattr(os, "replace", real_replace)
        assert bridge.statistics().store.save_failures >= 1
        monkeypatch.setattr(os, "replace", crash)  # the shutdown save fails too
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]

    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        assert [s.session_id for s in bridge.list_sessions()] == [first]
        assert bridge.statistics().sessions.restored == 1
        async with bridge.watch(first) as frames:
            await frames.receive()


async def test_a_corrupt_session_file_is_reported_and_kept(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "sessions.json").write_text('{"version": 1, "sessions": [')
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        assert bridge.list_sessions() == []
        assert "truncated" in bridge.statistics().sessions.load_problem
    kept = [p for p in state.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1
    assert kept[0].read_text() == '{"version": 1, "sessions": ['


def _count_tasks(nursery_owner) -> int:
    total = 0
    for nursery in nursery_owner.child_nurseries:
        for task in nursery.child_tasks:
            total += 1 + _count_tasks(task)
    return total


async def test_a_thousand_connect_disconnect_cycles_balance_and_leave_nothing(
    tmp_path, autojump_clock
):
    config = settings(
        tmp_path,
        max_connections_per_minute=100_000,
        service_idle_timeout=5.0,
        max_connections_per_session=50,
    )
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        sid = await new_session(bridge)
        root = trio.lowlevel.current_root_task()
        await trio.sleep(1)
        tasks_before = _count_tasks(root)

        async def cycle(i: int) -> None:
            async with (
                bridge.connect(sid, "video", f"10.0.{i % 7}.1"),
                bridge.watch(sid) as frames,
            ):
                await frames.receive()

        for batch in range(50):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(cycle, batch * 20 + i)
        metrics = resource_manager(bridge.resource_statistics())["metrics"]
        assert metrics["client_connections"] == metrics["client_disconnections"] == 1000
        assert connection_manager(bridge.connection_statistics())["total_connections"] == 0
        assert bridge.pool.statistics().viewers == 0
        assert bridge.pool.statistics().reuse_rate > 0.99
        await trio.sleep(10)  # past the idle timeout
        assert bridge.pool.statistics().services == 0
        assert _count_tasks(root) == tasks_before
        assert bridge.limiter.statistics().active_connections == 0


async def test_shutdown_stops_viewers_with_capture_stopped(tmp_path, autojump_clock):
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
            sid = await new_session(bridge)
            attached = trio.Event()

            async def viewer() -> None:
                try:
                    async with bridge.watch(sid) as frames:
                        attached.set()
                        async for _ in frames:
                            pass
                except CaptureStopped as exc:
                    outcome.append(exc)

            nursery.start_soon(viewer)
            await attached.wait()
            await trio.sleep(1)
        await trio.sleep(1)
    assert not bridge.ready
    assert len(outcome) == 1


class _HangingState(SimulatedBackend):
    """The simulated device, whose state queries hang once ``hang`` is set."""

    hang = False

    async def device_state(self, device):
        if self.hang:
            await trio.sleep_forever()
        return await super().device_state(device)


async def test_the_session_keeps_its_device_state_fresh_without_views_asking(autojump_clock):
    # A Session on its own: no worker thread (the store's) to make the clock jump early.
    backend = _HangingState(encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop)
    device = await backend.create_device(DEVICE, VERSION)
    async with trio.open_nursery() as nursery:
        session = await nursery.start(Session("s1", device, backend).run)
        checked = trio.current_time()  # the session asked once, before it was shown
        assert (
            session_info(session)["state"] == "Booted"
            and session_list_item(session)["status"] == "healthy"
        )

        await backend.delete_device(session.device)  # the device vanishes behind its back
        await trio.sleep_until(checked + HEALTH_CHECK_INTERVAL - 0.1)
        assert session_list_item(session)["state"] == "Booted"  # a view reads, it never asks
        await trio.sleep_until(checked + HEALTH_CHECK_INTERVAL + 0.1)
        assert session_list_item(session)["state"] == "Missing"
        assert session_list_item(session)["status"] == "offline"

        await backend.restore_device(session.device)
        backend.hang = True  # and now the backend stops answering at all
        hung_from = checked + 2 * HEALTH_CHECK_INTERVAL
        await trio.sleep_until(hung_from + HEALTH_CHECK_TIMEOUT - 0.1)
        assert session_info(session)["state"] == "Missing"  # still the last answer
        await trio.sleep_until(hung_from + HEALTH_CHECK_TIMEOUT + 0.1)
        assert session_info(session)["state"] == "Unknown"
        assert session_info(session)["status"] == "offline"
        session.end()


async def test_a_first_state_check_that_hangs_does_not_hold_up_the_session(autojump_clock):
    backend = _HangingState(encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop)
    device = await backend.create_device(DEVICE, VERSION)
    backend.hang = True
    async with trio.open_nursery() as nursery:
        asked = trio.current_time()
        session = await nursery.start(Session("s1", device, backend).run)
        assert trio.current_time() - asked == pytest.approx(FIRST_CHECK_TIMEOUT)
        assert (session_info(session)["state"], session_info(session)["status"]) == (
            "Unknown",
            "offline",
        )
        backend.hang = False
        await trio.sleep_until(asked + FIRST_CHECK_TIMEOUT + HEALTH_CHECK_INTERVAL + 0.1)
        assert (session_info(session)["state"], session_info(session)["status"]) == (
            "Booted",
            "healthy",
        )
        session.end()
