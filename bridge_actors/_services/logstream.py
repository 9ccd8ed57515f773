"""One device log stream per session, shared by all of its log subscribers.

The backend's log reader starts with the first subscriber and is cancelled with
the last. Each subscriber has a bounded buffer; a subscriber that does not keep
up loses its oldest unread lines (counted), never slowing the reader or others.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .._device import DeviceBackend, DeviceInfo, LogLine

log = logging.getLogger("bridge_actors.logs")


@dataclass(frozen=True, slots=True)
class LogStreamStatistics:
    subscribers: int
    running: bool
    lines: int
    dropped: int
    restarts: int


class LogSubscription:
    def __init__(self, buffer_size: int) -> None:
        self._lines: deque[LogLine] = deque(maxlen=buffer_size)
        self._lot = trio.lowlevel.ParkingLot()
        self.dropped = 0
        self.closed = False

    def _push(self, line: LogLine) -> None:
        if len(self._lines) == self._lines.maxlen:
            self.dropped += 1
        self._lines.append(line)
        self._lot.unpark_all()

    async def receive(self) -> LogLine:
        await trio.lowlevel.checkpoint()
        while not self._lines:
            if self.closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._lines.popleft()

    def __aiter__(self) -> LogSubscription:
        return self

    async def __anext__(self) -> LogLine:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class LogStream:
    """The shared reader of one device's log, living in its session's nursery."""

    def __init__(
        self,
        backend: DeviceBackend,
        device: DeviceInfo,
        nursery: trio.Nursery,
        *,
        buffer_size: int = 512,
        restart_delay: float = 1.0,
    ) -> None:
        self._backend = backend
        self._device = device
        self._nursery = nursery
        self._buffer_size = buffer_size
        self._restart_delay = restart_delay
        self._subscribers: set[LogSubscription] = set()
        self._scope: trio.CancelScope | None = None
        self.lines = 0
        self.restarts = 0
        self._dropped_by_gone = 0

    def _emit(self, line: LogLine) -> None:
        self.lines += 1
        for subscriber in self._subscribers:
            subscriber._push(line)

    def note(self, line: LogLine) -> None:
        """Show a line that did not come from the device (an action taken on it) to every
        subscriber, in order with the device's own lines."""
        self._emit(line)

    async def _read(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await self._backend.stream_logs(self._device, self._emit)
                except Exception as exc:  # a log reader that dies is restarted, never fatal
                    log.warning("log stream of %s failed: %r", self._device.udid, exc)
                self.restarts += 1
                await trio.sleep(self._restart_delay)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[LogSubscription]:
        subscription = LogSubscription(self._buffer_size)
        self._subscribers.add(subscription)
        try:
            if self._scope is None:
                self._scope = trio.CancelScope()
                self._nursery.start_soon(self._read, self._scope)
            await trio.lowlevel.checkpoint()
            yield subscription
        finally:
            subscription.closed = True
            self._subscribers.discard(subscription)
            self._dropped_by_gone += subscription.dropped
            if not self._subscribers and self._scope is not None:
                self._scope.cancel()
                self._scope = None

    def statistics(self) -> LogStreamStatistics:
        return LogStreamStatistics(
            subscribers=len(self._subscribers),
            running=self._scope is not None,
            lines=self.lines,
            dropped=self._dropped_by_gone + sum(s.dropped for s in self._subscribers),
            restarts=self.restarts,
        )
