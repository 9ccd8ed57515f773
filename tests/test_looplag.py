"""The event-loop lag meter: quantiles over its sliding window, and saturation."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from bridge_actors._services.looplag import LoopLag


def test_quantiles_are_nearest_rank_over_the_window_only():
    lag = LoopLag(window=10.0, threshold=0.25)
    for second, value in enumerate([0.01] * 98 + [0.5, 0.9]):
        lag.record(100.0 + second * 0.01, value)
    assert lag.quantile(0.5) == 0.01
    assert lag.quantile(0.99) == 0.5
    assert lag.saturated
    lag.record(200.0, 0.02)  # everything before 190 s has left the window
    stats = lag.statistics()
    assert (stats.samples, stats.p50, stats.p99, stats.max, stats.saturated) == (
        1,
        0.02,
        0.02,
        0.02,
        False,
    )


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200))
def test_the_quantiles_are_samples_and_ordered(values):
    lag = LoopLag(window=1e9, threshold=1.0)
    for index, value in enumerate(values):
        lag.record(float(index), value)
    assert lag.quantile(0.5) in values and lag.quantile(0.99) in values
    assert min(values) <= lag.quantile(0.5) <= lag.quantile(0.99) <= max(values)


async def test_a_loop_held_past_the_threshold_reads_saturated(mock_clock):
    # pytest-trio's MockClock: time moves only when the test moves it.
    lag = LoopLag(interval=0.1, window=30.0, threshold=0.25)
    async with trio.open_nursery() as nursery:
        await nursery.start(lag.run)
        mock_clock.jump(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert lag.statistics().samples == 1 and not lag.saturated
        mock_clock.jump(0.6)  # the loop was held: the wake-up comes 0.5 s late
        await trio.testing.wait_all_tasks_blocked()
        assert lag.statistics().max == pytest.approx(0.5)
        assert lag.saturated
        nursery.cancel_scope.cancel()
