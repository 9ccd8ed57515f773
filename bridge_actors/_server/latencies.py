"""The latencies an operator watches: frame delivery, first frame, control to frame, REST.

Each is a :class:`~bridge_actors._services.histogram.Histogram`, observed where
the server already holds both ends of the interval, so measuring costs a clock
read and a bucket increment per event and no task of its own:

- **frame delivery**: from a frame's capture to its message handed to the
  viewer's connection, per viewer and frame (by format). It is what the fan-out,
  the viewer's slot and the send add to the device's own latency.
- **connect to first frame**: from a video socket's handshake request to its first
  frame sent (by format): admission, the capture's start, the first keyframe.
- **control to frame**: from a control message received to the first frame of
  its session, sent to any viewer, that was captured after the control was
  applied (the frame's ``input_seq`` reached the control's). Controls no frame
  answers within ``max_wait`` are counted as unmatched, not observed.
- **HTTP request duration**: from the request reaching the app to its last body
  byte handed to the connection, by method, route template and status.

The clock is Trio's (``trio.current_time()``), the one frames are stamped with.
WebRTC peers are not measured: aiortc paces and sends their packets itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .._services.histogram import Histogram, HistogramStatistics

__all__ = [
    "CONNECT_BUCKETS",
    "CONTROL_BUCKETS",
    "FORMATS",
    "FRAME_BUCKETS",
    "HTTP_BUCKETS",
    "ROUTE_KEY",
    "ControlToFrame",
    "Latencies",
    "RequestTimer",
    "ViewerClock",
    "http_method",
]

FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONNECT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTROL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FORMATS = ("json", "binary", "h264")  # the video socket's messages: JSON text, JPEG, H.264
# The key of the ASGI scope under which the app names the route a request matched.
ROUTE_KEY = "bridge_actors.route"
UNMATCHED = "unmatched"  # routed, but no route matched (404, 405)
UNROUTED = "unrouted"  # answered before the router (a refused Host, headers too large)

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def http_method(method: str) -> str:
    """The method as a label: one of the standard ones, else ``other``, so a client
    inventing methods cannot grow the label set."""
    return method if method in _METHODS else "other"


@dataclass(frozen=True, slots=True)
class ControlToFrameStatistics:
    histogram: HistogramStatistics
    pending: int  # controls waiting for their first frame now
    expired: int  # no frame of their session came within max_wait
    overflowed: int  # dropped unanswered because a session had max_pending waiting


class ControlToFrame:
    """Matches controls to the first frame sent that shows them, per session.

    A session's waiting controls are kept sorted by ``input_seq``; a frame sent
    with ``input_seq`` n answers every control up to n at once. What no frame
    answers (nobody watches the session) is swept after ``max_wait`` and counted,
    and a session holds at most ``max_pending``, so memory stays bounded however
    many controls arrive unwatched.
    """

    def __init__(
        self, bounds: Iterable[float] = CONTROL_BUCKETS, *, max_wait=10.0, max_pending=1024
    ) -> None:
        self.histogram = Histogram(tuple(bounds))
        self.max_wait = max_wait
        self.max_pending = max_pending
        self._pending: dict[str, list[tuple[int, float]]] = {}
        self._swept_at = float("-inf")
        self.expired = 0
        self.overflowed = 0

    def received(self, session_id: str, input_seq: int, received_at: float) -> None:
        """A control of ``session_id`` received at ``received_at`` was applied as ``input_seq``."""
        now = trio.current_time()
        if now - self._swept_at >= self.max_wait:
            self._sweep(now)
        waiting = self._pending.setdefault(session_id, [])
        bisect.insort(waiting, (input_seq, received_at))
        if len(waiting) > self.max_pending:
            del waiting[0]
            self.overflowed += 1

    def delivered(self, session_id: str, input_seq: int, now: float) -> None:
        """A frame of ``session_id`` captured after control ``input_seq`` was sent at ``now``."""
        waiting = self._pending.get(session_id)
        if not waiting or waiting[0][0] > input_seq:
            return
        answered = bisect.bisect_right(waiting, (input_seq, float("inf")))
        for _, received_at in waiting[:answered]:
            self.histogram.observe(now - received_at)
        del waiting[:answered]
        if not waiting:
            del self._pending[session_id]

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        oldest = now - self.max_wait
        for session_id, waiting in list(self._pending.items()):
            kept = [entry for entry in waiting if entry[1] >= oldest]
            self.expired += len(waiting) - len(kept)
            if kept:
                self._pending[session_id] = kept
            else:
                del self._pending[session_id]

    def statistics(self) -> ControlToFrameStatistics:
        return ControlToFrameStatistics(
            histogram=self.histogram.statistics(),
            pending=sum(len(waiting) for waiting in self._pending.values()),
            expired=self.expired,
            overflowed=self.overflowed,
        )


class ViewerClock:
    """The latencies of one video socket, from the moment its handshake arrived."""

    __slots__ = ("_control", "_delivery", "_first", "_opened", "_session_id")

    def __init__(self, latencies: Latencies, session_id: str, fmt: str) -> None:
        self._opened: float | None = trio.current_time()
        self._session_id = session_id
        self._delivery = latencies.frame_delivery[fmt]
        self._first = latencies.first_frame[fmt]
        self._control = latencies.control_to_frame

    def sent(self, captured_at: float, input_seq: int) -> None:
        """A frame captured at ``captured_at`` was just handed to the connection."""
        now = trio.current_time()
        self._delivery.observe(now - captured_at)
        if self._opened is not None:
            self._first.observe(now - self._opened)
            self._opened = None
        self._control.delivered(self._session_id, input_seq, now)


class Latencies:
    """The server's latency histograms, one set per app."""

    def __init__(self) -> None:
        self.frame_delivery = {fmt: Histogram(FRAME_BUCKETS) for fmt in FORMATS}
        self.first_frame = {fmt: Histogram(CONNECT_BUCKETS) for fmt in FORMATS}
        self.control_to_frame = ControlToFrame()
        self.http: dict[tuple[str, str, int], Histogram] = {}

    def viewer(self, session_id: str, fmt: str) -> ViewerClock:
        return ViewerClock(self, session_id, fmt)

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (http_method(method), route, status)
        histogram = self.http.get(key)
        if histogram is None:
            histogram = self.http[key] = Histogram(HTTP_BUCKETS)
        histogram.observe(seconds)

    def statistics(self) -> dict[str, Any]:
        """Count, mean and p50/p90/p99 of each histogram, for ``/stats``."""
        control = self.control_to_frame.statistics()
        return {
            "frame_delivery": {
                fmt: _summary(h.statistics()) for fmt, h in self.frame_delivery.items()
            },
            "connect_to_first_frame": {
                fmt: _summary(h.statistics()) for fmt, h in self.first_frame.items()
            },
            "control_to_frame": {
                **_summary(control.histogram),
                "pending": control.pending,
                "expired": control.expired,
                "overflowed": control.overflowed,
            },
            "http": [
                {"method": method, "route": route, "status": status, **_summary(h.statistics())}
                for (method, route, status), h in sorted(self.http.items())
            ],
        }


def _summary(stats: HistogramStatistics) -> dict[str, Any]:
    return {
        "count": stats.count,
        "mean": stats.sum / stats.count if stats.count else 0.0,
        "p50": stats.quantile(0.5),
        "p90": stats.quantile(0.9),
        "p99": stats.quantile(0.99),
    }


class RequestTimer:
    """ASGI middleware timing every HTTP request into ``latencies``.

    The app names the route it matched in the scope (``ROUTE_KEY``: the rule's
    template, never the path, so session ids stay out of the labels); a request
    answered before the router is ``unrouted``. The time ends when the response's
    last body message is handed on, or when the app returns without one.
    """

    def __init__(self, app: Any, latencies: Latencies) -> None:
        self.app = app
        self.latencies = latencies

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = trio.current_time()
        status = 0
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                route = scope.get(ROUTE_KEY, UNROUTED)
                seconds = trio.current_time() - started
                self.latencies.request_done(scope["method"], route, status, seconds)

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if status:
                finish()
