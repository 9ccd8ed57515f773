"""Device captures: one supervised service per device, shared by all its viewers.

A CaptureService is started by its device's first viewer and counts viewers
(connections, never sessions). When the last one leaves it lives
``idle_timeout`` longer, so a viewer that reconnects reuses it, and then
cancels itself. Its source runs under a Supervisor: a crash is restarted with
backoff until the restart intensity is exceeded, and then every viewer is told
``CaptureFailed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import trio

from .._device import DeviceBackend, DeviceInfo, Frame
from .._errors import CaptureFailed, CaptureStopped, ServerBusy
from .fanout import Fanout, FanoutStatistics, Viewer
from .meter import RateMeter
from .supervision import Supervisor, SupervisorStatistics

log = logging.getLogger("bridge_actors.capture")


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    fps: int = 30
    slot_size: int = 2
    viewer_deadline: float = 5.0
    idle_timeout: float = 300.0
    restart_max: int = 5
    restart_period: float = 30.0
    restart_backoff_initial: float = 0.1
    restart_backoff_max: float = 5.0


@dataclass(frozen=True, slots=True)
class CaptureStatistics:
    udid: str
    backend: str
    source: str
    state: str
    viewers: int
    fps_in: float
    fps_out: float
    frames_in: int
    frames_unencoded: int  # of frames_in, published as pixels: no viewer wanted JPEG
    frames_delivered: int
    frames_dropped: int
    evicted: int
    restarts: int
    last_error: str | None
    uptime: float
    fanout: FanoutStatistics
    supervisor: SupervisorStatistics


class CaptureService:
    """The actor capturing one device. Also the FrameSink its backend publishes into."""

    def __init__(
        self,
        device: DeviceInfo,
        backend: DeviceBackend,
        config: CaptureConfig,
        input_seq,
        *,
        predecessor: CaptureService | None = None,
    ) -> None:
        self.device = device
        self._predecessor = predecessor
        self.backend = backend
        self.config = config
        self._input_seq = input_seq
        self.fanout = Fanout(capacity=config.slot_size, deadline=config.viewer_deadline)
        self.supervisor = Supervisor(
            name=f"capture {device.udid}",
            max_restarts=config.restart_max,
            period=config.restart_period,
            backoff_initial=config.restart_backoff_initial,
            backoff_max=config.restart_backoff_max,
        )
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.state = "starting"
        self.stop_reason: str | None = None
        self.started_at = trio.current_time()
        self.last_used = self.started_at
        self._seq = 0
        self.frames_unencoded = 0
        self._viewers_changed = trio.Event()
        self._in = RateMeter()
        self._out = RateMeter()

    # -- FrameSink --------------------------------------------------------------------------

    @property
    def applied_input_seq(self) -> int:
        return self._input_seq()

    async def wait_for_viewers(self) -> None:
        await trio.lowlevel.checkpoint()
        while not self.fanout:
            await self._viewers_changed.wait()

    @property
    def wants_jpeg(self) -> bool:
        return self.fanout.jpeg_viewers > 0

    def publish(
        self,
        jpeg: bytes,
        *,
        pixel_width: int,
        pixel_height: int,
        timestamp: float | None = None,
        input_seq: int | None = None,
        point_size: tuple[int, int] | None = None,
    ) -> None:
        self._publish(jpeg, None, pixel_width, pixel_height, timestamp, input_seq, point_size)

    def publish_rgb(
        self,
        rgb: np.ndarray,
        *,
        timestamp: float | None = None,
        input_seq: int | None = None,
        point_size: tuple[int, int] | None = None,
    ) -> None:
        if not (
            isinstance(rgb, np.ndarray)
            and rgb.dtype == np.uint8
            and rgb.ndim == 3
            and rgb.shape[2] == 3
            and rgb.size
        ):
            got = (
                f"a {rgb.dtype} array of shape {rgb.shape}"
                if isinstance(rgb, np.ndarray)
                else type(rgb).__name__
            )
            raise ValueError(f"publish_rgb takes a (height, width, 3) uint8 array, not {got}")
        height, width = rgb.shape[:2]
        self.frames_unencoded += 1
        self._publish(None, rgb, width, height, timestamp, input_seq, point_size)

    def _publish(
        self,
        jpeg: bytes | None,
        rgb: np.ndarray | None,
        pixel_width: int,
        pixel_height: int,
        timestamp: float | None,
        input_seq: int | None,
        point_size: tuple[int, int] | None,
    ) -> None:
        now = trio.current_time()
        point_width, point_height = point_size or (
            self.device.point_width,
            self.device.point_height,
        )
        self._seq += 1
        frame = Frame(
            seq=self._seq,
            timestamp=time.time() if timestamp is None else timestamp,
            captured_at=now,
            jpeg=jpeg,
            rgb=rgb,
            pixel_width=pixel_width,
            pixel_height=pixel_height,
            point_width=point_width,
            point_height=point_height,
            input_seq=self.applied_input_seq if input_seq is None else input_seq,
        )
        self._in.add(now)
        self._out.add(now, len(self.fanout))
        self.fanout.publish(frame)

    # -- viewers -----------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.state in ("starting", "running") and not self.scope.cancel_called

    def attach(
        self,
        *,
        max_fps: float | None = None,
        capacity: int | None = None,
        needs_jpeg: bool = True,
    ) -> Viewer:
        viewer = self.fanout.add(max_fps=max_fps, capacity=capacity, needs_jpeg=needs_jpeg)
        self._notify()
        return viewer

    def detach(self, viewer: Viewer) -> None:
        self.fanout.remove(viewer)
        self.last_used = trio.current_time()
        self._notify()

    def _notify(self) -> None:
        self._viewers_changed.set()
        self._viewers_changed = trio.Event()

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                task_status.started()
                self.state = "running"
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._stop_when_idle)
                        await self.supervisor.run(self._capture_once)
                except* CaptureFailed as group:
                    failure = group.exceptions[0]
                    self.state = "failed"
                    log.error("%s", failure)
                    self.fanout.close_all(CaptureFailed, str(failure))
        finally:
            if self.state != "failed":
                self.state = "stopped"
                self.fanout.close_all(
                    CaptureStopped, f"capture stopped: {self.stop_reason or 'shutting down'}"
                )
            self.done.set()

    async def _capture_once(self) -> None:
        if self._predecessor is not None:
            # One capture per device at a time: a device's tools (idb, a camera) may
            # not take two readers, so wait for the one still stopping.
            await self._predecessor.done.wait()
            self._predecessor = None
        await self.backend.capture(self.device, self, fps=self.config.fps)

    async def _stop_when_idle(self) -> None:
        while True:
            while self.fanout:
                await self._viewers_changed.wait()
            with trio.move_on_after(self.config.idle_timeout):
                while not self.fanout:
                    await self._viewers_changed.wait()
                continue
            self.stop(f"idle for {self.config.idle_timeout:g}s")
            return

    def statistics(self) -> CaptureStatistics:
        now = trio.current_time()
        fanout = self.fanout.statistics()
        sup = self.supervisor.statistics()
        return CaptureStatistics(
            udid=self.device.udid,
            backend=self.device.backend,
            source=self.device.source or self.device.device_type,
            state=self.state,
            viewers=fanout.viewers,
            fps_in=self._in.rate(now),
            fps_out=self._out.rate(now),
            frames_in=fanout.frames_in,
            frames_unencoded=self.frames_unencoded,
            frames_delivered=fanout.frames_delivered,
            frames_dropped=fanout.frames_dropped,
            evicted=fanout.evicted,
            restarts=sup.restarts,
            last_error=sup.last_error,
            uptime=now - self.started_at,
            fanout=fanout,
            supervisor=sup,
        )


@dataclass(frozen=True, slots=True)
class CapturePoolStatistics:
    services: int
    services_created: int
    services_destroyed: int
    attaches: int
    reuses: int
    reuse_rate: float
    viewers: int
    admission: bool
    stopped_by_reason: dict[str, int]


class CapturePool:
    """The actor owning every CaptureService, one per device."""

    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self._services: dict[str, CaptureService] = {}
        self._nursery: trio.Nursery | None = None
        self._admission = True
        self.services_created = 0
        self.services_destroyed = 0
        self.attaches = 0
        self.reuses = 0
        self._stopped_by_reason: dict[str, int] = {}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def get(self, udid: str) -> CaptureService | None:
        return self._services.get(udid)

    def _service_for(self, backend: DeviceBackend, info: DeviceInfo, input_seq) -> CaptureService:
        """The device's running capture, or a new one. Never awaits: the caller attaches
        its viewer in the same step, so no one (idle timer, memory warden) can ever see
        a capture that is starting for a viewer as idle."""
        current = self._services.get(info.udid)
        if current is not None and current.accepting:
            self.reuses += 1
            return current
        if not self._admission:
            raise ServerBusy("memory is critical: no new capture may start")
        assert self._nursery is not None, "CapturePool is not running"
        service = CaptureService(info, backend, self.config, input_seq, predecessor=current)
        self._services[info.udid] = service
        self.services_created += 1
        # Started in the pool's nursery, not in the viewer's task: a viewer that leaves
        # at once cannot take the capture down with it.
        self._nursery.start_soon(self._run_service, service)
        return service

    async def _run_service(self, service: CaptureService) -> None:
        try:
            await service.run()
        finally:
            if self._services.get(service.device.udid) is service:
                del self._services[service.device.udid]
            self.services_destroyed += 1
            reason = (service.stop_reason or service.state).split(" ")[0]
            self._stopped_by_reason[reason] = self._stopped_by_reason.get(reason, 0) + 1

    @asynccontextmanager
    async def subscribe(
        self,
        backend: DeviceBackend,
        device: DeviceInfo,
        input_seq,
        *,
        max_fps: float | None = None,
        capacity: int | None = None,
        needs_jpeg: bool = True,
    ) -> AsyncIterator[Viewer]:
        """Attach one viewer to the device's capture, starting it if needed.

        ``input_seq`` is a zero-argument callable giving the device's last applied
        control number; frames carry it. ``capacity`` overrides the slot size (an
        encoder takes 1: always the newest frame). A viewer that encodes pictures
        itself passes ``needs_jpeg=False`` and may be given frames as RGB pixels.
        """
        await trio.lowlevel.checkpoint()
        service = self._service_for(backend, device, input_seq)
        self.attaches += 1
        viewer = service.attach(max_fps=max_fps, capacity=capacity, needs_jpeg=needs_jpeg)
        try:
            with viewer.lifeline.held():
                yield viewer
        finally:
            service.detach(viewer)

    def stop_device(self, udid: str, reason: str) -> trio.Event | None:
        service = self._services.get(udid)
        if service is None:
            return None
        service.stop(reason)
        return service.done

    def stop_all(self, reason: str) -> None:
        for service in list(self._services.values()):
            service.stop(reason)

    # -- what the MemoryWarden drives --------------------------------------------------------

    def idle_services(self) -> list[tuple[str, float]]:
        return [
            (udid, service.last_used)
            for udid, service in self._services.items()
            if not service.fanout and service.accepting
        ]

    def stop_service(self, key: str, reason: str) -> bool:
        service = self._services.get(key)
        if service is None or service.fanout or not service.accepting:
            return False
        service.stop(reason)
        return True

    def set_capture_admission(self, allowed: bool) -> None:
        self._admission = allowed

    @property
    def admission(self) -> bool:
        return self._admission

    def services(self) -> list[CaptureService]:
        return list(self._services.values())

    def statistics(self) -> CapturePoolStatistics:
        viewers = sum(len(s.fanout) for s in self._services.values())
        return CapturePoolStatistics(
            services=len(self._services),
            services_created=self.services_created,
            services_destroyed=self.services_destroyed,
            attaches=self.attaches,
            reuses=self.reuses,
            reuse_rate=self.reuses / self.attaches if self.attaches else 0.0,
            viewers=viewers,
            admission=self._admission,
            stopped_by_reason=dict(self._stopped_by_reason),
        )
