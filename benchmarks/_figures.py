"""From what the viewers saw to the figures of a run (pure: no I/O, no clock)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ._stats import Histogram, quantile, source_span

MB = 1_000_000


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarize_viewers(
    viewers: Sequence[Mapping[str, Any]],
    *,
    duration: float,
    cpu_seconds: float | None = None,
    rss_before: int | None = None,
    rss_after: int | None = None,
    health_ms: Sequence[float] = (),
    health_failures: int = 0,
    source_frames_stats: Mapping[int, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], Histogram]:
    """Per-viewer rows, the aggregate row, and the merged latency histogram of one load run.

    A viewer's fraction is of the frames its device's capture produced within the
    window: the seq span every viewer of that device saw together (a frame no one
    got is still counted, as lost). ``source_frames_stats`` (the capture's
    ``frames_in`` delta from /stats) is reported beside it as a cross-check.
    """
    by_device: dict[int, list[tuple[int, int] | None]] = {}
    for v in viewers:
        span = (v["first_seq"], v["last_seq"]) if v.get("first_seq") is not None else None
        by_device.setdefault(v.get("device", 0), []).append(span)
    sources = {device: source_span(spans) for device, spans in by_device.items()}

    merged = Histogram()
    rows = []
    for v in viewers:
        span = sources.get(v.get("device", 0))
        source = span.frames if span is not None else 0
        hist = Histogram.from_json(v.get("latency") or {})
        merged.merge(hist)
        rows.append(
            {
                "viewer": v["index"],
                "device": v.get("device", 0),
                "frames": v["frames"],
                "first_seq": v.get("first_seq"),
                "last_seq": v.get("last_seq"),
                "source_frames": source,
                "fraction": _round(v["frames"] / source if source else 0.0, 4),
                "fps": _round(v["frames"] / duration if duration else None, 2),
                "latency_p50_ms": v.get("latency_p50_ms"),
                "latency_p99_ms": v.get("latency_p99_ms"),
                "close_code": v.get("close_code"),
                "error": v.get("error"),
            }
        )
    streaming = [r for r in rows if r["close_code"] is None and r["error"] is None]
    fractions = [r["fraction"] for r in streaming]
    delivered = sum(v["frames"] for v in viewers)
    delivered_bytes = sum(v["bytes"] for v in viewers)
    source_total = sum(span.frames for span in sources.values() if span is not None)
    refusals = Counter(
        str(v["close_code"])
        for v in viewers
        if v.get("close_code") is not None and v.get("first_frame_at") is None
    )
    closes = Counter(
        str(v["close_code"])
        for v in viewers
        if v.get("close_code") is not None and v.get("first_frame_at") is not None
    )
    errors = Counter(v["error"] for v in viewers if v.get("error"))
    health = sorted(health_ms)
    latency = merged.summary()
    aggregate = {
        "viewers": len(viewers),
        "streaming_viewers": len(streaming),
        "devices": len(sources),
        "duration_s": _round(duration, 3),
        "source_frames": source_total,
        "source_frames_stats": (sum(source_frames_stats.values()) if source_frames_stats else None),
        "source_fps": _round(
            source_total / len(sources) / duration if sources and duration else None, 2
        ),
        "delivered_frames": delivered,
        "delivered_fps": _round(delivered / duration if duration else None, 1),
        "delivered_MBps": _round(delivered_bytes / duration / MB if duration else None, 2),
        "fraction_min": min(fractions) if fractions else None,
        "fraction_median": quantile(fractions, 0.5),
        "fraction_mean": _round(sum(fractions) / len(fractions), 4) if fractions else None,
        "viewers_below_95pct": sum(f < 0.95 for f in fractions),
        "fps_min": min((r["fps"] for r in streaming), default=None),
        "latency_p50_ms": latency["p50"],
        "latency_p95_ms": latency["p95"],
        "latency_p99_ms": latency["p99"],
        "latency_max_ms": latency["max"],
        "health_samples": len(health),
        "health_failures": health_failures,
        "health_p50_ms": _round(quantile(health, 0.5), 2),
        "health_p99_ms": _round(quantile(health, 0.99), 2),
        "health_max_ms": _round(health[-1], 2) if health else None,
        "server_cpu_s": _round(cpu_seconds, 3),
        "server_cpu_util": _round(cpu_seconds / duration if cpu_seconds and duration else None, 3),
        "server_cpu_us_per_frame": _round(
            cpu_seconds / delivered * 1e6 if cpu_seconds is not None and delivered else None, 1
        ),
        "server_rss_mb": _round(rss_after / MB if rss_after else None, 1),
        "server_rss_growth_mb": _round(
            (rss_after - rss_before) / MB if rss_after and rss_before else None, 2
        ),
        "rss_per_viewer_kb": _round(
            (rss_after - rss_before) / 1024 / len(viewers)
            if rss_after and rss_before and viewers
            else None,
            1,
        ),
        "refusals": dict(refusals),
        "closed_while_streaming": dict(closes),
        "errors": dict(errors),
    }
    return rows, aggregate, merged
