"""The latency histograms: the primitive's properties, control-to-frame matching under a
MockClock, and each histogram observed through the real server and exported by ``/metrics``."""

from __future__ import annotations

import bisect
import json
import math
import socket

import pytest
import trio
from conftest import open_ws
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bridge_actors._server.latencies import (
    CONTROL_BUCKETS,
    FORMATS,
    ControlToFrame,
    Latencies,
    http_method,
)
from bridge_actors._services.histogram import Histogram

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)
samples = st.lists(st.floats(min_value=-1.0, max_value=100.0, allow_nan=False), max_size=200)


# --- the histogram ----------------------------------------------------------------------------


@given(samples)
def test_buckets_are_cumulative_and_count_every_sample_at_its_bound(values):
    histogram = Histogram(BOUNDS)
    for value in values:
        histogram.observe(value)
    stats = histogram.statistics()
    assert stats.count == len(values) == stats.buckets[-1]
    assert list(stats.buckets) == sorted(stats.buckets)
    for bound, cumulative in zip(BOUNDS, stats.buckets, strict=False):
        assert cumulative == sum(1 for value in values if max(value, 0.0) <= bound)
    assert stats.sum == pytest.approx(sum(max(value, 0.0) for value in values))


@given(samples, st.floats(min_value=0.0, max_value=1.0))
def test_a_quantile_lies_in_the_bucket_that_holds_its_rank(values, q):
    histogram = Histogram(BOUNDS)
    for value in values:
        histogram.observe(value)
    stats = histogram.statistics()
    estimate = stats.quantile(q)
    assert 0.0 <= estimate <= BOUNDS[-1]
    if not values or q == 0.0:
        return
    ranked = sorted(max(value, 0.0) for value in values)
    true = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
    # The estimate is inside the true quantile's bucket (or the last finite bound above it).
    bucket = bisect.bisect_left(BOUNDS, true)
    lower = BOUNDS[bucket - 1] if 0 < bucket <= len(BOUNDS) else 0.0
    upper = BOUNDS[bucket] if bucket < len(BOUNDS) else BOUNDS[-1]
    assert min(lower, BOUNDS[-1]) <= estimate <= upper
    assert stats.quantile(q) <= stats.quantile(min(1.0, q + 0.1))


def test_the_quantile_interpolates_inside_a_bucket_like_histogram_quantile():
    histogram = Histogram((1.0, 2.0))
    for value in (1.5, 1.5, 1.5, 1.5):
        histogram.observe(value)
    assert histogram.statistics().quantile(0.5) == pytest.approx(1.5)
    assert histogram.statistics().quantile(1.0) == pytest.approx(2.0)
    assert Histogram((1.0,)).statistics().quantile(0.99) == 0.0  # no samples
    histogram.observe(50.0)  # above every bound: "more than 2"
    assert histogram.statistics().quantile(1.0) == 2.0


@pytest.mark.parametrize(
    ("bounds", "named"),
    [((), "at least one"), ((1.0, 1.0), "ascending"), ((2.0, 1.0), "ascending"),
     ((1.0, math.inf), "finite"), ((math.nan,), "finite")],
)  # fmt: skip
def test_bad_bounds_are_named(bounds, named):
    with pytest.raises(ValueError, match=f"bounds: need .*{named}"):
        Histogram(bounds)


def test_a_bad_quantile_is_named():
    with pytest.raises(ValueError, match="q: must be from 0 to 1"):
        Histogram(BOUNDS).statistics().quantile(1.5)


def test_unknown_methods_share_one_label():
    assert http_method("GET") == "GET" and http_method("BREW") == "other"


# --- control to frame -------------------------------------------------------------------------

events = st.lists(
    st.tuples(st.sampled_from(["control", "frame"]), st.sampled_from(["a", "b"])), max_size=60
)


@given(events)
def test_every_control_is_answered_once_by_the_first_frame_that_shows_it(script):
    async def run() -> None:
        matcher = ControlToFrame(max_wait=1e9)
        applied = {"a": 0, "b": 0}
        waiting = {"a": [], "b": []}
        answered = 0
        for step, (kind, session) in enumerate(script):
            now = trio.current_time() + step
            if kind == "control":
                applied[session] += 1
                matcher.received(session, applied[session], now)
                waiting[session].append(now)
            else:
                # A frame shows every control applied before it was captured.
                before = matcher.histogram.statistics().count
                matcher.delivered(session, applied[session], now)
                answered += len(waiting[session])
                assert matcher.histogram.statistics().count - before == len(waiting[session])
                waiting[session].clear()
        stats = matcher.statistics()
        assert stats.histogram.count == answered
        assert stats.pending == sum(len(times) for times in waiting.values())
        assert stats.expired == stats.overflowed == 0

    trio.run(run)


async def test_unanswered_controls_expire_after_the_wait_and_are_counted(autojump_clock):
    matcher = ControlToFrame(max_wait=10.0)
    matcher.received("watched-by-nobody", 1, trio.current_time())
    await trio.sleep(5)
    matcher.received("watched", 1, trio.current_time())
    matcher.delivered("watched", 1, trio.current_time() + 0.05)
    await trio.sleep(6)  # the first control is now 11 s old
    matcher.received("watched", 2, trio.current_time())
    stats = matcher.statistics()
    assert (stats.expired, stats.pending, stats.histogram.count) == (1, 1, 1)
    assert stats.histogram.sum == pytest.approx(0.05)
    # An old frame (captured before control 2) answers nothing.
    matcher.delivered("watched", 1, trio.current_time())
    assert matcher.statistics().pending == 1


async def test_a_session_holds_at_most_max_pending_controls(autojump_clock):
    matcher = ControlToFrame(max_wait=10.0, max_pending=4)
    for seq in range(1, 11):
        matcher.received("s", seq, trio.current_time())
    stats = matcher.statistics()
    assert (stats.pending, stats.overflowed) == (4, 6)
    matcher.delivered("s", 10, trio.current_time())
    assert matcher.statistics().histogram.count == 4


# --- through the server -----------------------------------------------------------------------


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(family, suffix: str, **labels: str) -> float:
    for sample in family.samples:
        if sample.name == family.name + suffix and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return sample.value
    raise AssertionError(f"no {family.name}{suffix} with {labels}")


async def latency_stats(server) -> dict:
    return (await server.stats())["latency"]


async def wait_for(predicate, server, within: float = 10.0) -> dict:
    """The latency statistics once ``predicate`` holds for them."""
    with trio.fail_after(within):
        while True:
            latency = await latency_stats(server)
            if predicate(latency):
                return latency
            await trio.sleep(0.02)


VIDEO_QUERIES = {"json": "", "binary": "format=binary", "h264": "format=binary&codec=h264"}


async def test_each_viewer_counts_one_first_frame_and_every_frame_it_was_sent(server):
    sid = server.session_id
    received = dict.fromkeys(FORMATS, 0)
    async with trio.open_nursery() as nursery:

        async def watch(fmt: str, done: trio.Event) -> None:
            async with open_ws(server.ws_url(sid, "video", VIDEO_QUERIES[fmt])) as ws:
                with trio.fail_after(20):
                    while received[fmt] < 5:
                        await ws.get_message()
                        received[fmt] += 1
                done.set()
                await trio.sleep_forever()

        done = {fmt: trio.Event() for fmt in FORMATS}
        for fmt in FORMATS:
            nursery.start_soon(watch, fmt, done[fmt])
        for event in done.values():
            await event.wait()
        latency = await wait_for(
            lambda stats: all(stats["frame_delivery"][f]["count"] >= 5 for f in FORMATS), server
        )
        for fmt in FORMATS:
            assert latency["connect_to_first_frame"][fmt]["count"] == 1
            delivery = latency["frame_delivery"][fmt]
            assert 0 < delivery["p50"] <= delivery["p99"]
        capture = await server.capture_stats()
        jpeg_sent = sum(latency["frame_delivery"][f]["count"] for f in ("json", "binary"))
        assert jpeg_sent <= capture["frames_delivered"]

        exported = families((await server.http.get("/metrics")).text)
        first = exported["bridge_connect_to_first_frame_seconds"]
        delivery = exported["bridge_frame_delivery_seconds"]
        for fmt in FORMATS:
            assert sample_value(first, "_count", format=fmt) == 1
            assert sample_value(delivery, "_count", format=fmt) >= 5
            assert sample_value(delivery, "_bucket", format=fmt, le="+Inf") == sample_value(
                delivery, "_count", format=fmt
            )
        nursery.cancel_scope.cancel()


async def test_taps_are_matched_to_the_first_frame_that_shows_them(server):
    sid = server.session_id
    async with (
        open_ws(server.ws_url(sid, "video", "format=binary")) as viewer,
        open_ws(server.ws_url(sid, "control")) as control,
        trio.open_nursery() as nursery,
    ):

        async def drain() -> None:
            while True:
                await viewer.get_message()

        nursery.start_soon(drain)
        for tap in range(3):
            await control.send_message(json.dumps({"t": "tap", "x": 10 + tap, "y": 20, "id": tap}))
            with trio.fail_after(10):
                ack = json.loads(await control.get_message())
            assert ack["type"] == "ack" and ack["id"] == tap
        latency = await wait_for(lambda stats: stats["control_to_frame"]["count"] == 3, server)
        control_stats = latency["control_to_frame"]
        assert control_stats["pending"] == 0 and control_stats["expired"] == 0
        assert 0 < control_stats["p50"] <= CONTROL_BUCKETS[-1]

        exported = families((await server.http.get("/metrics")).text)
        assert sample_value(exported["bridge_control_to_frame_seconds"], "_count") == 3
        unmatched = exported["bridge_control_to_frame_unmatched"]
        assert sample_value(unmatched, "_total", reason="expired") == 0
        nursery.cancel_scope.cancel()


async def test_a_tap_nobody_watches_waits_unanswered(server):
    sid = server.session_id
    async with open_ws(server.ws_url(sid, "control")) as control:
        await control.send_message(json.dumps({"t": "tap", "x": 5, "y": 5, "id": 1}))
        with trio.fail_after(10):
            assert json.loads(await control.get_message())["type"] == "ack"
    latency = await latency_stats(server)
    assert latency["control_to_frame"]["pending"] == 1
    assert latency["control_to_frame"]["count"] == 0


def raw_request(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


async def test_requests_are_timed_by_method_route_template_and_status(server):
    sid = server.session_id
    assert (await server.http.get("/api/sessions/")).status_code == 200
    assert (await server.http.get("/api/sessions/")).status_code == 200
    assert (await server.http.get(f"/api/sessions/{sid}")).status_code == 200
    assert (await server.http.get("/api/sessions/no-such-session")).status_code == 404
    assert (await server.http.get("/no/such/route")).status_code == 404
    assert (await server.http.post("/health")).status_code == 405
    bad_host = (
        b"GET /api/sessions/ HTTP/1.1\r\nHost: rebind.evil.example\r\nConnection: close\r\n\r\n"
    )
    response = await trio.to_thread.run_sync(raw_request, server.host, server.port, bad_host)
    assert response.startswith(b"HTTP/1.1 421")
    brewed = b"BREW /api/sessions/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    await trio.to_thread.run_sync(raw_request, server.host, server.port, brewed)

    exported = families((await server.http.get("/metrics")).text)
    http = exported["bridge_http_request_duration_seconds"]

    def count(method: str, route: str, status: str) -> float:
        return sample_value(http, "_count", method=method, route=route, status=status)

    assert count("GET", "/api/sessions/", "200") == 2
    assert count("GET", "/api/sessions/<session_id>", "200") == 1
    assert count("GET", "/api/sessions/<session_id>", "404") == 1
    assert count("GET", "unmatched", "404") == 1
    assert count("POST", "unmatched", "405") == 1
    assert count("GET", "unrouted", "421") == 1
    assert any(s.labels.get("method") == "other" for s in http.samples)
    assert not any(sid in value for s in http.samples for value in s.labels.values())
    assert not any("no-such" in value for s in http.samples for value in s.labels.values())

    latency = await latency_stats(server)
    listed = {(r["method"], r["route"], r["status"]): r for r in latency["http"]}
    assert listed["GET", "/api/sessions/", 200]["count"] == 2


def test_latencies_know_every_format_before_any_viewer():
    latencies = Latencies()
    stats = latencies.statistics()
    assert set(stats["frame_delivery"]) == set(FORMATS) == set(stats["connect_to_first_frame"])
    assert stats["http"] == [] and stats["control_to_frame"]["count"] == 0
