"""Embedding the bridge and its server in an application's own Trio code.

A cancellation from outside (the application's ``move_on_after``, its nursery
being cancelled) must leave ``open_bridge`` and ``serve`` as that cancellation,
so the application's cancel scope simply ends; a real failure inside still comes
out as one plain exception, never a group and never a ``BridgeError`` wrapping
a ``Cancelled``.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio
from fakes import settings, simulated

from bridge_actors import BridgeError, open_bridge, serve
from bridge_actors._checks import one_exception
from bridge_actors._services.warden import MemorySample


class FailingProbe:
    """A memory probe that works until told to fail, then fails as a broken /proc would."""

    def __init__(self) -> None:
        self.broken = False
        self.calls_since_broken = 0

    def __call__(self) -> MemorySample:
        if self.broken:
            self.calls_since_broken += 1
            raise RuntimeError("memory probe broke")
        return MemorySample(rss_mb=100.0, vms_mb=200.0, percent=1.0, available_mb=9e3)


def bridge_settings(tmp_path, **overrides):
    return settings(tmp_path, initial_session=False, **overrides)


async def test_an_outer_move_on_after_just_ends_the_bridge(tmp_path, autojump_clock):
    reached = False
    with trio.move_on_after(math.inf) as scope:
        async with open_bridge(bridge_settings(tmp_path), backends={"simulated": simulated()}):
            reached = True
            scope.deadline = trio.current_time() + 1  # move_on_after(1), counted from now
            await trio.sleep_forever()
    assert reached
    assert scope.cancelled_caught


async def test_an_outer_deadline_during_start_up_just_ends_it(tmp_path, autojump_clock):
    # Start-up waits on a worker thread (loading the session file): under the
    # autojumping clock the deadline passes right there, in the middle of it.
    with trio.move_on_after(1) as scope:
        async with open_bridge(bridge_settings(tmp_path), backends={"simulated": simulated()}):
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_an_outer_cancellation_comes_out_as_cancelled(tmp_path, autojump_clock):
    seen: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            async with open_bridge(
                bridge_settings(tmp_path), backends={"simulated": simulated()}
            ) as bridge:
                await bridge.create_session("iPhone 15 (simulated)", "18.0")
                scope.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            seen.append(exc)
            raise
    assert scope.cancelled_caught
    assert len(seen) == 1 and type(seen[0]) is trio.Cancelled, seen


async def test_cancelling_the_outer_nursery_ends_a_running_bridge(tmp_path, autojump_clock):
    stopped = trio.Event()

    async def run_bridge(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_bridge(
                bridge_settings(tmp_path), backends={"simulated": simulated()}
            ) as bridge:
                task_status.started(bridge)
                await trio.sleep_forever()
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        bridge = await nursery.start(run_bridge)
        assert bridge.started
        nursery.cancel_scope.cancel()
    assert stopped.is_set()
    assert nursery.cancel_scope.cancelled_caught


async def test_a_failing_actor_is_one_plain_exception(tmp_path, autojump_clock):
    config = bridge_settings(tmp_path, memory_check_interval=1.0)
    probe = FailingProbe()
    with pytest.raises(RuntimeError, match="memory probe broke") as caught:
        async with open_bridge(
            config, backends={"simulated": simulated()}, memory_probe=probe
        ) as bridge:
            assert bridge.started
            probe.broken = True
            await trio.sleep_forever()
    assert type(caught.value) is RuntimeError
    assert probe.calls_since_broken == 1


async def test_a_failure_inside_under_an_outer_deadline_is_still_the_failure(
    tmp_path, autojump_clock
):
    config = bridge_settings(tmp_path, memory_check_interval=1.0)
    probe = FailingProbe()
    with pytest.raises(RuntimeError, match="memory probe broke"), trio.CancelScope() as outer:
        async with open_bridge(config, backends={"simulated": simulated()}, memory_probe=probe):
            # Set once started: the mock clock jumps while startup waits on a worker
            # thread, and would reach a deadline set before it.
            outer.deadline = trio.current_time() + 60
            probe.broken = True
            await trio.sleep_forever()


async def test_a_failure_of_the_embedding_code_comes_out_as_it_is(tmp_path, autojump_clock):
    with pytest.raises(KeyError, match="from the application"):
        async with open_bridge(bridge_settings(tmp_path), backends={"simulated": simulated()}):
            raise KeyError("from the application")


async def caught_cancellation() -> trio.Cancelled:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as cancelled:
            caught = cancelled
            raise
    return caught


async def test_one_exception_keeps_cancellation_and_leaves_out_its_echoes():
    cancelled = [await caught_cancellation() for _ in range(3)]
    only_cancelled = BaseExceptionGroup("g", [cancelled[0], BaseExceptionGroup("h", cancelled[1:])])
    assert one_exception(only_cancelled, "bridge") is cancelled[0]

    failure = ValueError("the real one")
    echoed = BaseExceptionGroup("g", [cancelled[0], BaseExceptionGroup("h", [failure])])
    assert one_exception(echoed, "bridge") is failure

    second = OSError("another")
    several = BaseExceptionGroup("g", [failure, cancelled[1], second])
    error = one_exception(several, "bridge")
    assert type(error) is BridgeError
    assert str(error) == "bridge failed: ValueError: the real one; OSError: another"
    assert error.__cause__ is several


# --- serve --------------------------------------------------------------------------------------


async def test_serve_under_an_outer_move_on_after_just_ends(tmp_path):
    served = False
    with trio.move_on_after(30) as deadline:
        async with (
            open_bridge(bridge_settings(tmp_path), backends={"simulated": simulated()}) as bridge,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(partial(serve, bridge, host="127.0.0.1", port=0))
            served = True
            deadline.cancel()
    assert served
    assert deadline.cancelled_caught


async def test_serve_cancelled_from_outside_comes_out_as_cancelled(tmp_path):
    seen: list[BaseException] = []
    async with open_bridge(
        bridge_settings(tmp_path), backends={"simulated": simulated()}
    ) as bridge:
        with trio.CancelScope() as scope:

            async def stop_once_listening() -> None:
                scope.cancel()
                await trio.sleep_forever()

            try:
                await serve(bridge, host="127.0.0.1", port=0, shutdown_trigger=stop_once_listening)
            except BaseException as exc:
                seen.append(exc)
                raise
        assert scope.cancelled_caught
    assert len(seen) == 1 and type(seen[0]) is trio.Cancelled, seen


async def test_a_failure_inside_serve_is_one_plain_exception(tmp_path):
    async def broken_trigger() -> None:
        await trio.lowlevel.checkpoint()
        raise OSError("the trigger broke")

    async with open_bridge(
        bridge_settings(tmp_path), backends={"simulated": simulated()}
    ) as bridge:
        with pytest.raises(OSError, match="the trigger broke"), trio.move_on_after(30):
            await serve(bridge, host="127.0.0.1", port=0, shutdown_trigger=broken_trigger)
