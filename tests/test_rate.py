"""The constant-memory rate meter behind fps figures."""

import pytest

from bridge_actors._services.meter import RateMeter


def test_the_rate_meter_counts_about_the_last_second():
    rate = RateMeter()
    seen = []
    for t in (0.0, 0.5, 0.9):
        rate.add(t)
        seen.append(rate.rate(t))
    assert seen == [1, 2, 3]
    rate.add(1.2)
    assert rate.rate(1.2) == pytest.approx(1 + 3 * 0.8)
    assert rate.rate(1.9) == pytest.approx(1 + 3 * 0.1)
    assert rate.rate(2.5) == pytest.approx(0.5)  # only second 1's event, half inside
    assert rate.rate(4.0) == 0.0
    rate.add(5.0)
    assert rate.rate(5.0) == 1


def test_the_rate_meter_reads_thirty_for_a_steady_thirty_per_second():
    rate = RateMeter()
    for frame in range(300):
        rate.add(frame / 30)
    assert rate.rate(299 / 30) == pytest.approx(30, abs=1)
