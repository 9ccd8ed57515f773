import itertools

import pytest
import trio

from bridge_actors._errors import CaptureFailed, InvalidSettings
from bridge_actors._services.supervision import Backoff, RestartIntensity, Supervisor

# --- pure policy -----------------------------------------------------------------------------


def test_intensity_refuses_once_more_than_max_restarts_fall_in_period():
    intensity = RestartIntensity(max_restarts=2, period=10.0)
    assert intensity.allow_restart(0.0)
    assert intensity.allow_restart(1.0)
    assert not intensity.allow_restart(2.0)
    assert intensity.recent(2.0) == 3
    assert intensity.recent(10.0) == 2
    assert intensity.recent(12.0) == 0


def test_intensity_allows_failures_spread_wider_than_period():
    intensity = RestartIntensity(max_restarts=1, period=10.0)
    for t in range(0, 1000, 10):
        assert intensity.allow_restart(float(t))
    assert not intensity.allow_restart(995.0)


def test_zero_restarts_means_first_failure_is_final():
    assert not RestartIntensity(max_restarts=0, period=5.0).allow_restart(0.0)


def test_backoff_doubles_and_caps():
    backoff = Backoff(initial=1.0, maximum=10.0)
    assert [backoff.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(100_000) == 10.0
    assert Backoff(initial=0.5, maximum=100.0, factor=3.0).delay(2) == 4.5


def test_zero_initial_backoff_is_always_zero():
    assert {Backoff(initial=0.0, maximum=5.0).delay(n) for n in range(10)} == {0.0}


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: RestartIntensity(-1, 5.0), "max_restarts"),
        (lambda: RestartIntensity(1, 0), "period"),
        (lambda: Backoff(-1.0, 5.0), "initial"),
        (lambda: Backoff(5.0, 1.0), "maximum"),
        (lambda: Backoff(1.0, 5.0, factor=0.5), "factor"),
    ],
)
def test_bad_supervision_settings_are_named(make, name):
    with pytest.raises(InvalidSettings, match=name):
        make()


# --- Supervisor on the mock clock ------------------------------------------------------------


def make_supervisor(**overrides) -> Supervisor:
    settings = {
        "name": "capture:dev",
        "max_restarts": 3,
        "period": 60.0,
        "backoff_initial": 1.0,
        "backoff_max": 10.0,
    }
    settings.update(overrides)
    return Supervisor(**settings)


async def test_restarts_with_backoff_then_keeps_running(autojump_clock):
    supervisor = make_supervisor()
    starts: list[float] = []
    running = trio.Event()

    async def target() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 2:
            raise ValueError(f"boom {len(starts)}")
        running.set()
        await trio.sleep_forever()

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run, target)
            await running.wait()
            await trio.sleep(100)
            nursery.cancel_scope.cancel()

    origin = starts[0]
    assert [t - origin for t in starts] == [0.0, 1.0, 3.0]
    stats = supervisor.statistics()
    assert stats.failures == 2
    assert stats.restarts == 2
    assert not stats.failed_for_good
    assert stats.last_error == "ValueError('boom 2')"


async def test_backoff_is_capped(autojump_clock):
    supervisor = make_supervisor(max_restarts=6, backoff_max=3.0)
    starts: list[float] = []

    async def target() -> None:
        starts.append(trio.current_time())
        raise OSError("gone")

    with trio.fail_after(600), pytest.raises(CaptureFailed):
        await supervisor.run(target)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


async def test_gives_up_after_max_restarts_plus_one_failures(autojump_clock):
    supervisor = make_supervisor()
    calls = 0

    async def target() -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"crash {calls}")

    with trio.fail_after(600), pytest.raises(CaptureFailed) as info:
        await supervisor.run(target)
    assert calls == 4
    assert (
        str(info.value)
        == "capture:dev: crashed 4 times in 60.0s; last error: ValueError('crash 4')"
    )
    assert isinstance(info.value.__cause__, ValueError)
    stats = supervisor.statistics()
    assert (stats.failures, stats.restarts, stats.failed_for_good) == (4, 3, True)


async def test_failures_spread_beyond_period_never_exhaust_intensity(autojump_clock):
    supervisor = make_supervisor(max_restarts=1, period=60.0, backoff_initial=0.0)
    calls = 0
    done = trio.Event()

    async def target() -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            done.set()
            await trio.sleep_forever()
        await trio.sleep(100)
        raise ValueError("periodic")

    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run, target)
            await done.wait()
            nursery.cancel_scope.cancel()
    stats = supervisor.statistics()
    assert (stats.failures, stats.recent, stats.failed_for_good) == (9, 1, False)


async def test_a_return_is_a_failure(autojump_clock):
    supervisor = make_supervisor(max_restarts=1)
    calls = 0

    async def target() -> None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()

    with trio.fail_after(600), pytest.raises(CaptureFailed, match="returned"):
        await supervisor.run(target)
    assert calls == 2


async def test_cancellation_is_not_a_failure(autojump_clock):
    supervisor = make_supervisor(max_restarts=0)

    async def target() -> None:
        await trio.sleep_forever()

    with trio.move_on_after(5) as scope:
        await supervisor.run(target)
    assert scope.cancelled_caught
    stats = supervisor.statistics()
    assert (stats.failures, stats.restarts, stats.last_error) == (0, 0, None)


async def test_cancellation_during_backoff_propagates(autojump_clock):
    supervisor = make_supervisor(backoff_initial=100.0, backoff_max=100.0)

    async def target() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("once")

    with trio.move_on_after(5) as scope:
        await supervisor.run(target)
    assert scope.cancelled_caught
    stats = supervisor.statistics()
    assert (stats.failures, stats.restarts, stats.failed_for_good) == (1, 0, False)


async def _fail_in_two_children() -> None:
    # No checkpoint before raising: both children fail in the same scheduling
    # batch, before the first failure's cancellation can reach the second.
    async def fail(exc: Exception) -> None:
        raise exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail, ValueError("left"))
        nursery.start_soon(fail, OSError("right"))


async def test_an_exception_group_counts_as_one_failure(autojump_clock):
    supervisor = make_supervisor(max_restarts=0)
    with trio.fail_after(600), pytest.raises(CaptureFailed) as info:
        await supervisor.run(_fail_in_two_children)
    assert isinstance(info.value.__cause__, ExceptionGroup)
    stats = supervisor.statistics()
    assert stats.failures == 1
    assert "ValueError('left')" in stats.last_error
    assert "OSError('right')" in stats.last_error
    assert "crashed 1 times" in str(info.value)


async def test_supervisor_logs_each_crash(autojump_clock, caplog):
    supervisor = make_supervisor(max_restarts=1)

    async def target() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("logged")

    with (
        caplog.at_level("WARNING", logger="bridge_actors.supervision"),
        pytest.raises(CaptureFailed),
    ):
        await supervisor.run(target)
    levels = [record.levelname for record in caplog.records if record.name.endswith("supervision")]
    assert levels == ["WARNING", "ERROR"]
