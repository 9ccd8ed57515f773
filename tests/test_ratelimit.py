import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bridge_actors._errors import (
    BadInput,
    InvalidSettings,
    RateLimited,
    ServerBusy,
    SessionFull,
)
from bridge_actors._services.ratelimit import RateLimiter, SlidingWindow

# --- SlidingWindow: pure, driven with plain numbers -------------------------------------------


def test_retry_after_is_exact_time_until_oldest_attempt_leaves():
    window = SlidingWindow(limit=3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        assert window.retry_after("ip", t) == 0.0
        window.consume("ip", t)
    assert window.retry_after("ip", 30.0) == pytest.approx(30.0)
    assert window.retry_after("ip", 59.5) == pytest.approx(0.5)
    assert window.retry_after("ip", 60.0) == 0.0


def test_refused_attempts_consume_nothing():
    window = SlidingWindow(limit=2, window=10.0)
    window.consume("ip", 0.0)
    window.consume("ip", 1.0)
    for t in range(2, 10):
        assert window.retry_after("ip", float(t)) == pytest.approx(10.0 - t)
    with pytest.raises(RateLimited) as info:
        window.consume("ip", 5.0)
    assert info.value.retry_after == pytest.approx(5.0)
    # Had the refusals been recorded, the key would still be blocked at t=10.
    assert window.retry_after("ip", 10.0) == 0.0


def test_window_slides_one_attempt_at_a_time():
    window = SlidingWindow(limit=2, window=10.0)
    window.consume("ip", 0.0)
    window.consume("ip", 4.0)
    assert window.retry_after("ip", 9.0) == pytest.approx(1.0)
    window.consume("ip", 10.0)  # the attempt at 0 has left; 4 and 10 remain
    assert window.retry_after("ip", 11.0) == pytest.approx(3.0)
    window.consume("ip", 14.0)
    assert window.retry_after("ip", 14.0) == pytest.approx(6.0)


def test_keys_are_independent():
    window = SlidingWindow(limit=1, window=10.0)
    window.consume(("s1", "1.1.1.1"), 0.0)
    assert window.retry_after(("s1", "1.1.1.1"), 1.0) == pytest.approx(9.0)
    assert window.retry_after(("s2", "1.1.1.1"), 1.0) == 0.0
    assert window.retry_after(("s1", "2.2.2.2"), 1.0) == 0.0


def test_flood_of_distinct_keys_stays_bounded():
    window = SlidingWindow(limit=5, window=60.0, max_keys=1000)
    for i in range(100_000):
        window.consume(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(window) == 1000
    assert window.evictions == 99_000
    newest = f"10.0.{99_999 // 256}.{99_999 % 256}"
    window.consume(newest, 1.0)
    assert len(window) == 1000


def test_lru_evicts_least_recently_touched_key():
    window = SlidingWindow(limit=5, window=60.0, max_keys=3)
    for key in "abc":
        window.consume(key, 0.0)
    assert window.retry_after("a", 1.0) == 0.0  # a lookup counts as use
    window.consume("d", 2.0)
    assert list(window) == ["c", "a", "d"]
    assert window.evictions == 1


def test_key_vanishes_when_its_attempts_expire():
    window = SlidingWindow(limit=2, window=10.0)
    window.consume("ip", 0.0)
    assert len(window) == 1
    assert window.retry_after("ip", 10.0) == 0.0
    assert len(window) == 0


def test_prune_drops_only_keys_with_nothing_left():
    window = SlidingWindow(limit=2, window=60.0)
    window.consume("old", 0.0)
    window.consume("new", 30.0)
    assert window.prune(59.0) == 0
    assert window.prune(60.0) == 1
    assert list(window) == ["new"]
    assert window.prune(90.0) == 1
    assert len(window) == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": 1, "window": 0}, "window"),
        ({"limit": 1, "window": float("nan")}, "window"),
        ({"limit": 1, "max_keys": 0}, "max_keys"),
    ],
)
def test_bad_window_settings_are_named(kwargs, name):
    with pytest.raises(InvalidSettings, match=name):
        SlidingWindow(**kwargs)


# --- RateLimiter: the same arithmetic on the Trio clock, plus concurrency caps ------------------


def make_limiter(**overrides) -> RateLimiter:
    settings = {"per_minute": 5, "per_session": 3, "max_connections": 10}
    settings.update(overrides)
    return RateLimiter(**settings)


async def test_checks_run_global_then_session_then_window(autojump_clock):
    limiter = make_limiter(per_minute=1, per_session=1, max_connections=2)
    first = limiter.admit("s1", "1.1.1.1")
    # s1 is both full and rate limited for this address: fullness is checked first.
    with pytest.raises(SessionFull) as full:
        limiter.admit("s1", "1.1.1.1")
    assert (full.value.session_id, full.value.limit) == ("s1", 1)
    limiter.admit("s2", "2.2.2.2")
    # The bridge is full and s2 is full too: the global cap wins.
    with pytest.raises(ServerBusy):
        limiter.admit("s2", "2.2.2.2")
    limiter.release(first)
    with pytest.raises(RateLimited) as limited:
        limiter.admit("s1", "1.1.1.1")
    assert limited.value.retry_after == pytest.approx(60.0)
    await trio.sleep(60.0)
    limiter.admit("s1", "1.1.1.1")


async def test_statistics_count_attempts_and_refusals_by_reason(autojump_clock):
    limiter = make_limiter(per_minute=2, per_session=2, max_connections=3)
    assert limiter.statistics().success_rate == 1.0
    a = limiter.admit("s1", "1.1.1.1", "video")
    limiter.admit("s1", "1.1.1.1", "control")
    with pytest.raises(SessionFull):
        limiter.admit("s1", "1.1.1.1")
    limiter.release(a)
    with pytest.raises(RateLimited):
        limiter.admit("s1", "1.1.1.1")
    limiter.admit("s2", "2.2.2.2")
    limiter.admit("s3", "3.3.3.3")
    with pytest.raises(ServerBusy):
        limiter.admit("s4", "4.4.4.4")

    stats = limiter.statistics()
    assert stats.attempts == 7
    assert stats.admitted == 4
    assert stats.denied == {"rate_limited": 1, "session_full": 1, "server_busy": 1}
    assert stats.active_connections == 3
    assert stats.active_by_session == {"s1": 1, "s2": 1, "s3": 1}
    assert stats.success_rate == pytest.approx(4 / 7)
    assert stats.denied_share["server_busy"] == pytest.approx(1 / 7)
    assert stats.buckets == 3
    assert (stats.max_connections, stats.max_per_session, stats.per_minute) == (3, 2, 2)


async def test_refusals_for_fullness_do_not_use_window_slots(autojump_clock):
    limiter = make_limiter(per_minute=2, per_session=1)
    first = limiter.admit("s1", "1.1.1.1")
    for _ in range(10):
        with pytest.raises(SessionFull):
            limiter.admit("s1", "1.1.1.1")
    limiter.release(first)
    second = limiter.admit("s1", "1.1.1.1")
    limiter.release(second)
    with pytest.raises(RateLimited):
        limiter.admit("s1", "1.1.1.1")


async def test_release_is_idempotent_per_admission(autojump_clock):
    limiter = make_limiter(per_session=5)
    # Same session, address, kind and instant: still two connections.
    a = limiter.admit("s1", "1.1.1.1")
    b = limiter.admit("s1", "1.1.1.1")
    assert a.admitted_at == b.admitted_at
    limiter.release(a)
    limiter.release(a)
    assert limiter.statistics().active_by_session == {"s1": 1}
    limiter.release(b)
    limiter.release(b)
    stats = limiter.statistics()
    assert stats.active_connections == 0
    assert stats.active_by_session == {}


async def test_run_prunes_expired_buckets_every_cleanup_interval(autojump_clock):
    limiter = make_limiter(cleanup_interval=30.0)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(limiter.run)
            start = trio.current_time()
            limiter.release(limiter.admit("s1", "1.1.1.1"))
            await trio.sleep_until(start + 59.0)
            assert limiter.statistics().buckets == 1
            await trio.sleep_until(start + 61.0)
            assert limiter.statistics().buckets == 0
            nursery.cancel_scope.cancel()


async def test_forget_session_drops_its_buckets_but_not_its_connections(autojump_clock):
    limiter = make_limiter(per_minute=1)
    held = limiter.admit("s1", "1.1.1.1")
    limiter.release(limiter.admit("s1", "2.2.2.2"))
    limiter.admit("s2", "1.1.1.1")
    limiter.forget_session("s1")
    stats = limiter.statistics()
    assert stats.buckets == 1
    assert stats.active_by_session == {"s1": 1, "s2": 1}
    limiter.admit("s1", "2.2.2.2")  # its window was forgotten
    limiter.release(held)
    assert limiter.statistics().active_by_session == {"s1": 1, "s2": 1}


async def test_bucket_count_is_bounded(autojump_clock):
    limiter = make_limiter(max_buckets=10, max_connections=1000, per_session=1000)
    for i in range(50):
        limiter.release(limiter.admit("s1", f"10.0.0.{i}"))
    stats = limiter.statistics()
    assert stats.buckets == 10
    assert stats.bucket_evictions == 40


@pytest.mark.parametrize(
    ("session_id", "client_ip", "kind", "field"),
    [
        ("", "1.1.1.1", "video", "session_id"),
        ("s", "", "video", "client_ip"),
        ("s", "ip", "", "kind"),
    ],
)
async def test_bad_admission_input_names_the_field(session_id, client_ip, kind, field):
    limiter = make_limiter()
    with pytest.raises(BadInput) as info:
        limiter.admit(session_id, client_ip, kind)
    assert info.value.field == field
    assert limiter.statistics().attempts == 0


@pytest.mark.parametrize(
    "name", ["per_minute", "per_session", "max_connections", "max_buckets", "cleanup_interval"]
)
def test_bad_limiter_settings_are_named(name):
    with pytest.raises(InvalidSettings, match=name):
        make_limiter(**{name: 0})


@given(st.lists(st.one_of(st.floats(0, 1e6), st.none()), max_size=300))
def test_a_window_s_timestamps_behave_as_a_queue(operations):
    from collections import deque

    from bridge_actors._services.ratelimit import _Times

    times, model = _Times(), deque()
    for value in operations:
        if value is None:  # popleft
            if model:
                assert times.popleft() == model.popleft()
            else:
                with pytest.raises(IndexError):
                    times.popleft()
        else:
            times.append(value)
            model.append(value)
        assert len(times) == len(model) and bool(times) == bool(model)
        if model:
            assert times[0] == model[0]
