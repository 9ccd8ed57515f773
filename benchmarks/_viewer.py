"""One simulated viewer: a trio-websocket client that counts what it receives.

``ViewerRecord`` is the bookkeeping (pure, driven by tests without sockets);
``run_viewer`` is the thin shell that feeds it frames off a real socket.
Frames count toward the measurement window by their *capture* timestamp, so
every viewer agrees on which frames the window covered whatever its latency.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_websocket

from ._stats import Histogram
from ._wire import (
    FrameFacts,
    binary_frame_facts,
    json_frame_facts,
    verify_binary_frame,
    verify_json_frame,
)

# trio-websocket reads 4 KiB at a time by default: 20 reads and parser calls per JSON frame.
RECEIVE_BUFFER = 262144
MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(slots=True)
class Window:
    """The capture-time interval [t0, t1] (epoch seconds) that is being measured."""

    t0: float = math.inf
    t1: float = -math.inf

    def covers(self, timestamp: float) -> bool:
        return self.t0 <= timestamp <= self.t1


@dataclass(slots=True)
class Verifier:
    """Decodes a sample of frames in full and checks the cheap reading against it."""

    every: int = 500
    seen: int = 0
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def due(self, first_of_viewer: bool) -> bool:
        self.seen += 1
        return first_of_viewer or self.seen % self.every == 0

    def record(self, problem: str | None) -> None:
        self.checked += 1
        if problem is not None and len(self.failures) < 20:
            self.failures.append(problem)
        elif problem is not None:
            self.failures[-1] = problem


@dataclass(slots=True)
class ViewerRecord:
    """What one viewer saw. Only frames captured within the window count toward the figures."""

    index: int
    device: int = 0
    connected_at: float | None = None  # epoch seconds, handshake done
    first_frame_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    error: str | None = None
    frames_total: int = 0
    frames: int = 0  # within the window
    bytes: int = 0  # within the window
    first_seq: int | None = None
    last_seq: int | None = None
    latency: Histogram = field(default_factory=Histogram)

    def on_frame(self, facts: FrameFacts, received_at: float, size: int, window: Window) -> None:
        self.frames_total += 1
        if self.first_frame_at is None:
            self.first_frame_at = received_at
        if not window.covers(facts.timestamp):
            return
        self.frames += 1
        self.bytes += size
        seq = facts.seq
        if self.first_seq is None or seq < self.first_seq:
            self.first_seq = seq
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
        self.latency.add((received_at - facts.timestamp) * 1000)

    @property
    def refused(self) -> bool:
        """Closed by the server before it ever sent a frame."""
        return self.close_code is not None and self.first_frame_at is None

    def to_json(self) -> dict[str, Any]:
        summary = self.latency.summary()
        return {
            "index": self.index,
            "device": self.device,
            "connected_at": self.connected_at,
            "first_frame_at": self.first_frame_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "error": self.error,
            "frames_total": self.frames_total,
            "frames": self.frames,
            "bytes": self.bytes,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "latency_p50_ms": summary["p50"],
            "latency_p99_ms": summary["p99"],
            "latency": self.latency.to_json(),
        }


async def run_viewer(
    url: str,
    record: ViewerRecord,
    window: Window,
    verifier: Verifier,
    *,
    binary: bool,
    connected: trio.Event | None = None,
    stop_after_first_frame: bool = False,
) -> None:
    """Receive frames until cancelled or closed; everything that happens lands in ``record``."""
    facts_of = binary_frame_facts if binary else json_frame_facts
    try:
        async with trio_websocket.open_websocket_url(
            url,
            receive_buffer_size=RECEIVE_BUFFER,
            max_message_size=MAX_MESSAGE,
            connect_timeout=10,
            disconnect_timeout=1,
        ) as ws:
            record.connected_at = time.time()
            if connected is not None:
                connected.set()
            while True:
                message = await ws.get_message()
                received_at = time.time()
                if isinstance(message, str) == binary:
                    record.error = f"got a {type(message).__name__} message on a {url} stream"
                    return
                try:
                    facts = facts_of(message)
                except ValueError as exc:
                    record.error = str(exc)
                    return
                first = record.first_frame_at is None
                record.on_frame(facts, received_at, len(message), window)
                if verifier.due(first):
                    verifier.record(
                        verify_binary_frame(message)
                        if binary
                        else verify_json_frame(message, facts)
                    )
                if stop_after_first_frame:
                    return
    except trio_websocket.ConnectionClosed as exc:
        record.closed_at = time.time()
        record.close_code = exc.reason.code
        record.close_reason = exc.reason.reason or ""
    except trio_websocket.ConnectionRejected as exc:
        record.error = f"handshake rejected with HTTP {exc.status_code}"
    except trio_websocket.HandshakeError as exc:
        record.error = f"handshake failed: {exc!r}"
    except OSError as exc:
        record.error = f"connection failed: {exc}"
    finally:
        if connected is not None:
            connected.set()
