"""Races and cancellation around starting a capture and deleting a session."""

from __future__ import annotations

import trio
import trio.testing
from fakes import settings, simulated

from bridge_actors import open_bridge
from bridge_actors._backends.simulated import SimulatedBackend, run_on_event_loop

DEVICE = "iPhone 15 (simulated)"
VERSION = "18.0"
# The races below depend on the order Trio runs the tasks of one batch, which it
# shuffles on purpose; each round loses with probability about one half, so twenty
# rounds make a pass by luck about one in a million.
ROUNDS = 20


async def first_frame_or_error(bridge, session_id: str) -> str:
    try:
        with trio.fail_after(10):
            async with bridge.watch(session_id) as viewer:
                await viewer.receive()
    except Exception as exc:
        return repr(exc)
    return "frame"


async def test_the_first_viewer_of_a_new_capture_is_never_stopped_as_idle(tmp_path, autojump_clock):
    # service_idle_timeout=0 is a valid setting: stop a capture as soon as its last
    # viewer leaves. The first viewer has not left; it has not even arrived yet when
    # the idle timer starts.
    config = settings(tmp_path, service_idle_timeout=0)
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        outcomes = []
        for _ in range(ROUNDS):
            session = await bridge.create_session(DEVICE, VERSION)
            outcomes.append(await first_frame_or_error(bridge, session.session_id))
        assert outcomes == ["frame"] * ROUNDS


async def test_a_viewer_leaving_while_the_capture_starts_does_not_stop_it_for_another(
    tmp_path, autojump_clock
):
    async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}) as bridge:
        outcomes = []
        for _ in range(ROUNDS):
            sid = (await bridge.create_session(DEVICE, VERSION)).session_id
            staying: list[str] = []

            async def leaving(sid: str = sid) -> None:
                # A client that disconnects at once (its handler is cancelled).
                with trio.move_on_after(0):
                    async with bridge.watch(sid):
                        await trio.sleep_forever()

            async def stays(sid: str = sid, out: list[str] = staying) -> None:
                out.append(await first_frame_or_error(bridge, sid))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaving)
                nursery.start_soon(stays)
            outcomes.extend(staying)
        assert outcomes == ["frame"] * ROUNDS


class _WardenStrikesAtStart(SimulatedBackend):
    """The simulated device; the memory warden's tick lands just as a capture starts
    (what the warden does then is ``pool.stop_service`` on every idle capture)."""

    def __init__(self) -> None:
        super().__init__(encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop)
        self.pool = None
        self.stopped: list[bool] = []

    async def capture(self, device, sink, *, fps: int) -> None:
        if self.pool is not None:
            for key, _ in self.pool.idle_services():
                self.stopped.append(self.pool.stop_service(key, "memory elevated: rss 900 MB"))
        await super().capture(device, sink, fps=fps)


async def test_the_warden_never_stops_a_capture_its_first_viewer_is_joining(
    tmp_path, autojump_clock
):
    backend = _WardenStrikesAtStart()
    async with open_bridge(settings(tmp_path), backends={"simulated": backend}) as bridge:
        backend.pool = bridge.pool
        sid = (await bridge.create_session(DEVICE, VERSION)).session_id
        assert await first_frame_or_error(bridge, sid) == "frame"
        assert backend.stopped == []


class _SlowDelete(SimulatedBackend):
    """The simulated device, whose deletion takes a while (as ``simctl delete`` does)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop)
        self.seconds = seconds
        self.deleted = trio.Event()

    async def delete_device(self, device) -> None:
        await trio.sleep(self.seconds)
        await super().delete_device(device)
        self.deleted.set()


async def test_a_delete_whose_caller_gives_up_still_deletes_the_device(tmp_path):
    # Real time, not MockClock: the registry saves through a worker thread, and the
    # autojumping clock would cut those saves short.
    backend = _SlowDelete(seconds=0.3)
    async with open_bridge(settings(tmp_path), backends={"simulated": backend}) as bridge:
        sid = (await bridge.create_session(DEVICE, VERSION)).session_id
        # An HTTP client that disconnects (or times out) during DELETE cancels the handler.
        with trio.move_on_after(0.05):
            await bridge.delete_session(sid)
        assert bridge.list_sessions() == []  # the session is gone from the bridge ...
        # ... so its device must go too, instead of running on with no session owning it.
        with trio.fail_after(3):
            await backend.deleted.wait()
        assert backend.statistics().devices == 0
        assert bridge.registry.statistics().deleted == 1
