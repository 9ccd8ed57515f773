"""``/metrics``: the bridge's statistics in the Prometheus text format.

Nothing is counted twice: a :class:`BridgeCollector` reads ``bridge.statistics()``
at scrape time and turns it into metric families, so the figures cannot drift
from ``/stats``, and each app has its own registry (no process-global state,
several bridges in one process do not collide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .._bridge import Bridge
from .._services.histogram import HistogramStatistics
from .._services.looplag import LoopLag
from .._services.warden import WardenTier
from .frame_writer import WrittenAtOnce
from .latencies import Latencies
from .shared_admission import SharedAdmission

__all__ = ["CONTENT_TYPE", "BridgeCollector", "render_metrics"]

# What ``generate_latest`` writes: the classic text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_MB = 1024 * 1024


class BridgeCollector(Collector):
    """Builds every metric family from one statistics snapshot per scrape.

    ``extra`` returns counters the HTTP layer keeps itself (refused session
    creations), by metric name.
    """

    def __init__(self, bridge: Bridge, extra: Callable[[], Mapping[str, float]] | None = None):
        self._bridge = bridge
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        stats = self._bridge.statistics()
        yield _gauge("bridge_ready", "1 while new viewers are welcome.", 1 if stats.ready else 0)
        yield _gauge("bridge_sessions", "Sessions that exist now.", stats.sessions.sessions)
        yield _gauge(
            "bridge_sessions_held",
            "Stored sessions not running: not restored yet, backend not enabled, or their"
            " device could not be deleted.",
            len(stats.sessions.held),
        )
        instance = GaugeMetricFamily(
            "bridge_instance_info", "The instance answering this scrape.", labels=["instance"]
        )
        instance.add_metric([self._bridge.settings.instance_id], 1)
        yield instance
        yield from self._connections(stats)
        yield from self._captures(stats)
        yield from self._h264(stats)
        yield from self._memory(stats)
        if self._extra is not None:
            extra = self._extra()
            yield _counter(
                "bridge_session_creations_refused",
                "Session creations refused by the per-address limit.",
                extra.get("session_creations_refused", 0),
            )
            yield _counter(
                "bridge_stuck_connections_reset",
                "Connections reset because their handler stayed blocked in a send after it"
                " was told to end.",
                extra.get("stuck_connections_reset", 0),
            )
            yield _counter(
                "bridge_bodies_too_large",
                "HTTP request bodies refused with 413 for their size (BRIDGE_MAX_BODY_BYTES,"
                " BRIDGE_UPLOAD_MAX_BYTES).",
                extra.get("bodies_too_large", 0),
            )
            yield _counter(
                "bridge_messages_too_big",
                "WebSocket messages refused with 1009 (BRIDGE_MAX_MESSAGE_BYTES).",
                extra.get("messages_too_big", 0),
            )
            yield _counter(
                "bridge_uploads_refused",
                "Uploads refused with 429: BRIDGE_MAX_CONCURRENT_UPLOADS were being received.",
                extra.get("uploads_refused", 0),
            )
            yield _gauge(
                "bridge_uploads_active",
                "Uploads being received now.",
                extra.get("uploads_active", 0),
            )

    def _connections(self, stats) -> Iterator[Metric]:
        limiter = stats.rate_limiter
        resources = stats.resource_manager
        yield _gauge(
            "bridge_connections_active",
            "Admitted connections open now.",
            limiter.active_connections,
        )
        yield _counter(
            "bridge_connection_attempts",
            "Connection attempts seen by the limiter.",
            limiter.attempts,
        )
        yield _counter("bridge_connections_admitted", "Connections admitted.", limiter.admitted)
        refused = CounterMetricFamily(
            "bridge_connections_refused", "Connections refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(limiter.denied.items()):
            refused.add_metric([reason], count)
        yield refused
        yield _gauge(
            "bridge_rate_limit_buckets",
            "Live (session, address) rate-limit buckets.",
            limiter.buckets,
        )
        yield _counter(
            "bridge_rate_limit_bucket_evictions",
            "Buckets forgotten because the bucket table was full.",
            limiter.bucket_evictions,
        )
        yield _counter(
            "bridge_client_connections",
            "Client connections opened.",
            resources.client_connections,
        )
        yield _counter(
            "bridge_client_disconnections",
            "Client connections closed.",
            resources.client_disconnections,
        )

    def _captures(self, stats) -> Iterator[Metric]:
        pool = stats.pool
        yield _gauge("bridge_capture_services", "Capture services running now.", pool.services)
        yield _counter(
            "bridge_capture_services_created", "Capture services started.", pool.services_created
        )
        yield _counter(
            "bridge_capture_services_destroyed",
            "Capture services ended.",
            pool.services_destroyed,
        )
        labels = ["udid", "backend"]
        families = {
            "viewers": GaugeMetricFamily(
                "bridge_capture_viewers", "Viewers attached to the capture.", labels=labels
            ),
            "fps_in": GaugeMetricFamily(
                "bridge_capture_fps_in", "Frames captured in the last second.", labels=labels
            ),
            "fps_out": GaugeMetricFamily(
                "bridge_capture_fps_out",
                "Frames offered to viewers in the last second.",
                labels=labels,
            ),
            "frames_in": CounterMetricFamily(
                "bridge_capture_frames_in", "Frames captured.", labels=labels
            ),
            "frames_unencoded": CounterMetricFamily(
                "bridge_capture_frames_unencoded",
                "Frames captured as pixels, not JPEG: only an H.264 encoder watched.",
                labels=labels,
            ),
            "frames_delivered": CounterMetricFamily(
                "bridge_capture_frames_delivered", "Frames taken by viewers.", labels=labels
            ),
            "frames_dropped": CounterMetricFamily(
                "bridge_capture_frames_dropped",
                "Frames a slow viewer skipped (latest frame wins).",
                labels=labels,
            ),
            "evicted": CounterMetricFamily(
                "bridge_capture_viewers_evicted",
                "Viewers evicted for staying behind.",
                labels=labels,
            ),
            "restarts": CounterMetricFamily(
                "bridge_capture_restarts", "Capture source restarts.", labels=labels
            ),
        }
        for capture in stats.captures:
            key = [capture.udid, capture.backend]
            for name, family in families.items():
                family.add_metric(key, getattr(capture, name))
        yield from families.values()

    def _h264(self, stats) -> Iterator[Metric]:
        labels = ["udid"]
        families = {
            "feeds": GaugeMetricFamily(
                "bridge_h264_feeds", "H.264 viewers of the device's encoder.", labels=labels
            ),
            "frames_encoded": CounterMetricFamily(
                "bridge_h264_frames_encoded", "Frames encoded to H.264.", labels=labels
            ),
            "keyframes": CounterMetricFamily(
                "bridge_h264_keyframes", "IDR frames encoded.", labels=labels
            ),
            "forced_keyframes": CounterMetricFamily(
                "bridge_h264_keyframes_forced",
                "IDR frames forced for joining viewers or keyframe requests.",
                labels=labels,
            ),
            "bytes_encoded": CounterMetricFamily(
                "bridge_h264_encoded_bytes", "Bytes of H.264 encoded.", labels=labels
            ),
            "encode_seconds": CounterMetricFamily(
                "bridge_h264_encode_seconds", "Seconds spent encoding.", labels=labels
            ),
            "frames_passed_through": CounterMetricFamily(
                "bridge_h264_frames_passed_through",
                "Access units of the device's own H.264 relayed undecoded.",
                labels=labels,
            ),
            "evicted": CounterMetricFamily(
                "bridge_h264_feeds_evicted",
                "H.264 viewers evicted for staying behind.",
                labels=labels,
            ),
        }
        for encoder in stats.h264:
            for name, family in families.items():
                family.add_metric([encoder.udid], getattr(encoder, name))
        yield from families.values()

    def _memory(self, stats) -> Iterator[Metric]:
        warden = stats.warden
        if warden.last is not None:
            yield _gauge(
                "bridge_resident_memory_bytes",
                "Resident memory of the bridge and its child processes.",
                warden.last.rss_mb * _MB,
            )
        yield _gauge("bridge_memory_limit_bytes", "The memory limit.", warden.limit_mb * _MB)
        tier = GaugeMetricFamily(
            "bridge_warden_tier", "1 for the memory warden's current tier.", labels=["tier"]
        )
        for candidate in WardenTier:
            tier.add_metric([candidate.name.lower()], 1 if candidate.name == warden.tier else 0)
        yield tier
        yield _counter(
            "bridge_memory_cleanups", "Memory cleanups by the warden.", warden.memory_cleanups
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def make_registry(
    bridge: Bridge,
    extra: Callable[[], Mapping[str, float]] | None = None,
    loop_lag: LoopLag | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(bridge, extra))
    if loop_lag is not None:
        registry.register(LoopLagCollector(loop_lag))
    return registry


class LoopLagCollector(Collector):
    """The event loop's lateness (p50, p99 over its window) and whether it counts as saturated."""

    def __init__(self, loop_lag: LoopLag) -> None:
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        stats = self._loop_lag.statistics()
        lag = GaugeMetricFamily(
            "bridge_event_loop_lag_seconds",
            "How late the event loop wakes a task, over a sliding window.",
            labels=["quantile"],
        )
        lag.add_metric(["0.5"], stats.p50)
        lag.add_metric(["0.99"], stats.p99)
        yield lag
        yield _gauge(
            "bridge_saturated", "1 while the loop lag's p99 is above its setting.", stats.saturated
        )


class AdmissionCollector(Collector):
    """Connection admission in the cluster: decided in Redis, or here when Redis was slow."""

    def __init__(self, admission: SharedAdmission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        stats = self._admission.statistics()
        yield _counter(
            "bridge_admission_redis_decisions",
            "Connection admissions decided in Redis for the whole cluster.",
            stats.decided_in_redis,
        )
        yield _counter(
            "bridge_admission_local_fallbacks",
            "Connection admissions decided by this instance alone: Redis was slow or away.",
            stats.local_fallbacks,
        )
        yield _gauge(
            "bridge_admission_pending_releases",
            "Ended connections whose place Redis has not taken back yet.",
            stats.pending_releases,
        )


class WrittenAtOnceCollector(Collector):
    """Frames their publisher wrote straight to viewers' sockets (see :mod:`.frame_writer`)."""

    def __init__(self, totals: Mapping[str, WrittenAtOnce]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        written = CounterMetricFamily(
            "bridge_frames_written_at_once",
            "Video messages written to an idle viewer's socket by their publisher, without"
            " waking the viewer's task: whole, or in part (the rest sent by the viewer's task).",
            labels=["format", "written"],
        )
        for fmt, totals in self._totals.items():
            written.add_metric([fmt, "whole"], totals.whole)
            written.add_metric([fmt, "in_part"], totals.in_part)
        yield written


class LatencyCollector(Collector):
    """The latency histograms of :mod:`.latencies`, as Prometheus histograms."""

    def __init__(self, latencies: Latencies) -> None:
        self._latencies = latencies

    def collect(self) -> Iterator[Metric]:
        latencies = self._latencies
        delivery = HistogramMetricFamily(
            "bridge_frame_delivery_seconds",
            "From a frame's capture to its message handed to a viewer's connection, per"
            " viewer and frame.",
            labels=["format"],
        )
        for fmt, histogram in latencies.frame_delivery.items():
            _add_histogram(delivery, [fmt], histogram.statistics())
        yield delivery
        first = HistogramMetricFamily(
            "bridge_connect_to_first_frame_seconds",
            "From a video socket's handshake request to its first frame sent.",
            labels=["format"],
        )
        for fmt, histogram in latencies.first_frame.items():
            _add_histogram(first, [fmt], histogram.statistics())
        yield first
        control = latencies.control_to_frame.statistics()
        to_frame = HistogramMetricFamily(
            "bridge_control_to_frame_seconds",
            "From a control message received to the first frame sent that was captured"
            " after it was applied.",
        )
        _add_histogram(to_frame, [], control.histogram)
        yield to_frame
        unmatched = CounterMetricFamily(
            "bridge_control_to_frame_unmatched",
            "Controls no frame answered: none came within the wait (expired), or too many"
            " were waiting in their session (overflowed).",
            labels=["reason"],
        )
        unmatched.add_metric(["expired"], control.expired)
        unmatched.add_metric(["overflowed"], control.overflowed)
        yield unmatched
        http = HistogramMetricFamily(
            "bridge_http_request_duration_seconds",
            "From an HTTP request reaching the app to its last body byte handed to the"
            " connection, by route template.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), histogram in sorted(latencies.http.items()):
            _add_histogram(http, [method, route, str(status)], histogram.statistics())
        yield http


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], stats: HistogramStatistics
) -> None:
    bounds = [*map(floatToGoString, stats.bounds), "+Inf"]
    family.add_metric(labels, list(zip(bounds, stats.buckets, strict=True)), stats.sum)


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
