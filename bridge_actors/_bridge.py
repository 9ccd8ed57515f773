"""The composition root: every actor of the bridge inside one nursery, over the backends
it is given, and the handle to them. ``_open.open_bridge`` chooses the backends."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from ._actions import DeviceActions
from ._checks import one_exception
from ._controls import ControlEvent, Key, parse_control, resolve_key
from ._device import Configurations, DeviceBackend, DeviceInfo, Screenshot
from ._errors import (
    ActionUnsupported,
    BadInput,
    BridgeError,
    CaptureFailed,
    DeviceError,
    SessionNotFound,
)
from ._services.actions import ActionGate, ActionStatistics
from ._services.allocator import AllocatorStatistics, AllocatorTrimmer, glibc_allocator
from ._services.capture import CaptureConfig, CapturePool, CapturePoolStatistics, CaptureStatistics
from ._services.fanout import Viewer
from ._services.lifeline import Lifeline
from ._services.logstream import LogSubscription
from ._services.persist import SessionStore, StoreStatistics
from ._services.ratelimit import Admission, RateLimiter, RateLimiterStatistics
from ._services.sessions import (
    Connection,
    HeldSession,
    RegistryStatistics,
    Session,
    SessionRegistry,
    session_record_problem,
)
from ._services.warden import MemorySample, MemoryWarden, WardenStatistics, WardenTargets
from ._settings import Settings
from ._video.encoder import (
    EncoderConfig,
    EncoderFactory,
    EncoderPool,
    EncoderStatistics,
    H264Feed,
)
from ._video.passthrough import H264Source, JpegDemand, Passthrough
from ._video.recorder import (
    Recording,
    RecordingCaps,
    RecordingPool,
    RecordingPoolStatistics,
    RecordingStatistics,
    WriterFactory,
)

log = logging.getLogger("bridge_actors")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Kpis:
    """The service-level figures operators watch, live."""

    connection_success_rate: float
    denied_share: Mapping[str, float]
    service_reuse_rate: float
    rss_growth_mb_per_hour: float | None  # None until measured over rss_growth_min_window_s
    rss_growth_window_s: float  # the seconds the growth figure spans
    rss_growth_min_window_s: float


@dataclass(frozen=True, slots=True)
class SessionConnections:
    """The client connections of one session: ever opened, open now by kind, first and last."""

    total: int
    open_by_kind: Mapping[str, int]
    first: float | None
    last: float | None


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    sessions: Mapping[str, SessionConnections]
    rate_limit_buckets: int


@dataclass(frozen=True, slots=True)
class ResourceStatistics:
    pool: CapturePoolStatistics
    warden: WardenStatistics
    client_connections: int
    client_disconnections: int
    webrtc_peers: int


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    timestamp: float
    ready: bool
    connection_manager: ConnectionStatistics
    resource_manager: ResourceStatistics
    rate_limiter: RateLimiterStatistics
    warden: WardenStatistics
    allocator: AllocatorStatistics
    pool: CapturePoolStatistics
    captures: tuple[CaptureStatistics, ...]
    sessions: RegistryStatistics
    store: StoreStatistics
    kpis: Kpis
    actions: ActionStatistics
    h264: tuple[EncoderStatistics, ...] = ()
    recordings: RecordingPoolStatistics | None = None
    per_recording: tuple[RecordingStatistics, ...] = ()


class SharedAdmission(Protocol):
    """Connection admission shared with other instances (``bridge_actors._cluster``)."""

    async def admit(self, session_id: str, client_ip: str, kind: str) -> Admission: ...

    async def release(self, admission: Admission) -> None: ...


class Bridge:
    """The handle an application holds; every call goes to the actor that owns the state."""

    def __init__(
        self,
        settings: Settings,
        backends: dict[str, DeviceBackend],
        memory_probe: Callable[[], MemorySample] | None,
        video_encoder: EncoderFactory | None = None,
        recording_writer: WriterFactory | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.limiter = RateLimiter(
            per_minute=settings.max_connections_per_minute,
            per_session=settings.max_connections_per_session,
            max_connections=settings.max_connections,
            max_buckets=settings.max_rate_limit_buckets,
            cleanup_interval=settings.connection_cleanup_interval,
        )
        self.pool = CapturePool(
            CaptureConfig(
                fps=settings.fps,
                slot_size=settings.viewer_slot_size,
                viewer_deadline=settings.viewer_deadline,
                idle_timeout=settings.service_idle_timeout,
                restart_max=settings.restart_max,
                restart_period=settings.restart_period,
                restart_backoff_initial=settings.restart_backoff_initial,
                restart_backoff_max=settings.restart_backoff_max,
            )
        )
        self.video_encoder = video_encoder
        self.encoders = EncoderPool(
            EncoderConfig(
                keyframe_interval=settings.h264_keyframe_interval,
                join=settings.h264_join,
                backlog=settings.h264_backlog,
                feed_deadline=settings.viewer_deadline,
                idle_timeout=settings.service_idle_timeout,
                replay_max_frames=settings.h264_replay_max_frames,
                replay_max_bytes=settings.h264_replay_max_bytes,
                restart_max=settings.restart_max,
                restart_period=settings.restart_period,
                restart_backoff_initial=settings.restart_backoff_initial,
                restart_backoff_max=settings.restart_backoff_max,
            ),
            video_encoder or _no_video_encoder,
            trio.CapacityLimiter(settings.h264_encode_threads),
        )
        self.jpeg_demand = JpegDemand()
        self.recordings = RecordingPool(
            RecordingCaps(
                max_seconds=settings.recording_max_seconds,
                max_bytes=settings.recording_max_bytes,
            ),
            recording_writer or _no_recording_writer,
            trio.CapacityLimiter(1),
        )
        self.warden = MemoryWarden(
            WardenTargets({"capture": self.pool, "h264": self.encoders}),
            limit_mb=settings.max_memory_mb,
            interval=settings.memory_check_interval,
            probe=memory_probe,
        )
        self.trimmer = AllocatorTrimmer(
            allocator=glibc_allocator(), departures=lambda: self.limiter.released
        )
        self.actions = ActionGate(per_minute=settings.actions_per_minute)
        self.store = SessionStore(settings.state_dir, check=session_record_problem)
        self.registry = SessionRegistry(
            backends,
            self.store,
            on_session_end=self._session_ended,
            id_prefix=f"{settings.instance_id}-" if settings.redis_url else "",
        )
        # Set in a cluster: admission decided with the other instances (the local limiter
        # still records every connection); None decides here alone.
        self.shared_admission: SharedAdmission | None = None
        self.started = False
        self.draining = False
        self.final_statistics: ResourceStatistics | None = None

    # The limiter owns the count of connections (it admits and releases every one);
    # these read it, so the figures cannot drift apart.
    @property
    def client_connections(self) -> int:
        return self.limiter.admitted

    @property
    def client_disconnections(self) -> int:
        return self.limiter.released

    async def _session_ended(self, session: Session) -> None:
        await self.recordings.session_ended(session.session_id)
        encoding = self.encoders.stop_device(session.device.udid, "session deleted")
        done = self.pool.stop_device(session.device.udid, "session deleted")
        self.limiter.forget_session(session.session_id)
        self.actions.forget_session(session.session_id)
        if encoding is not None:
            await encoding.wait()
        if done is not None:
            await done.wait()

    # -- readiness ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while new viewers are welcome: started, not draining, memory not critical."""
        return self.started and not self.draining and self.warden.ready

    def begin_drain(self) -> None:
        """Stop welcoming viewers (shutdown has begun); readiness turns false at once."""
        self.draining = True

    # -- sessions ----------------------------------------------------------------------------

    async def configurations(self) -> Configurations:
        return await self.registry.configurations()

    async def create_session(self, device_type: str, ios_version: str) -> Session:
        return await self.registry.create(device_type, ios_version)

    def get_session(self, session_id: str) -> Session:
        return self.registry.get(session_id)

    def list_sessions(self) -> list[Session]:
        return self.registry.sessions()

    def list_held_sessions(self) -> list[HeldSession]:
        """Stored sessions not running: not restored yet, backend not enabled, or not
        deleted because their device could not be. Kept until deleted (or running again)."""
        return self.registry.held()

    async def delete_session(self, session_id: str, *, force: bool = False) -> None:
        """Raises DeleteFailed, keeping the session, if its device cannot be deleted;
        ``force`` forgets it anyway."""
        await self.registry.delete(session_id, force=force)

    async def delete_all_sessions(self, *, force: bool = False) -> int:
        return await self.registry.delete_all(force=force)

    async def recover_orphaned(self) -> int:
        return await self.registry.recover_orphaned()

    # -- connections and viewers -------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, session_id: str, kind: str, client_ip: str
    ) -> AsyncIterator[Connection]:
        """Admit one client connection, or raise SessionNotFound / RateLimited /
        SessionFull / ServerBusy. Leaving the block releases every slot it held;
        deleting the session meanwhile ends the block with SessionNotFound(deleted=True)."""
        session = self.registry.get(session_id)
        shared = self.shared_admission
        if shared is None:
            admission = self.limiter.admit(session_id, client_ip, kind)
        else:
            admission = await shared.admit(session_id, client_ip, kind)
        try:
            connection = session.open_connection(kind, client_ip)
            try:
                with connection.lifeline.held():
                    yield connection
            finally:
                session.close_connection(connection)
        finally:
            if shared is None:
                self.limiter.release(admission)
            else:
                await shared.release(admission)

    @asynccontextmanager
    async def watch(
        self, session_id: str, *, max_fps: float | None = None
    ) -> AsyncIterator[Viewer]:
        """Frames of the session's device for one viewer: ``async for frame in viewer``.

        Ends with ViewerEvicted if the viewer stays behind past the deadline,
        CaptureFailed if the capture fails for good, CaptureStopped if it was
        stopped (memory warden, shutdown), SessionNotFound if the session goes.
        """
        if max_fps is not None and not (0 < max_fps <= 1000):
            raise BadInput("fps", f"must be within (0, 1000], not {max_fps}")
        session = self.registry.get(session_id)
        membership = Lifeline()
        session.adopt(membership)
        try:
            with membership.held(), self.jpeg_demand.held(session.device.udid):
                async with self.pool.subscribe(
                    session.backend,
                    session.device,
                    lambda: session.applied_input_seq,
                    max_fps=max_fps,
                ) as viewer:
                    yield viewer
        finally:
            session.release(membership)

    @asynccontextmanager
    async def h264_feed(self, session_id: str) -> AsyncIterator[H264Feed]:
        """The session's device as H.264 access units for one viewer: ``await feed.receive()``.

        Starts or joins the device's one encoder (and its capture). The first packet
        is a keyframe; a feed that falls behind skips to the next keyframe. Ends as
        :meth:`watch` does, and with CaptureFailed if the encoder fails.
        """
        if self.video_encoder is None:
            raise CaptureFailed("H.264 is not available: this bridge was given no video encoder")
        session = self.registry.get(session_id)
        membership = Lifeline()
        session.adopt(membership)

        def frames():
            return self.pool.subscribe(
                session.backend,
                session.device,
                lambda: session.applied_input_seq,
                capacity=1,
                needs_jpeg=False,
            )

        try:
            with membership.held():
                async with self.encoders.subscribe(
                    session.device.udid, frames, self._passthrough(session)
                ) as feed:
                    yield feed
        finally:
            session.release(membership)

    def _passthrough(self, session: Session) -> Passthrough | None:
        """How the session's device relays its own H.264, if its backend streams it."""
        backend = session.backend
        if self.settings.h264_passthrough == "never" or not isinstance(backend, H264Source):
            return None
        device, fps = session.device, self.settings.fps
        return Passthrough(
            udid=device.udid,
            stream=lambda emit: backend.stream_h264(device, emit, fps=fps),
            demand=self.jpeg_demand,
            input_seq=lambda: session.applied_input_seq,
        )

    async def start_recording(self, session_id: str) -> Recording:
        """Start recording the session's screen to MP4, as one more H.264 feed of its device.

        Raises SessionNotFound, RecordingInProgress, or CaptureFailed when no H.264
        feed can start. The recording goes on until stopped, its caps, or the session's end.
        """
        self.registry.get(session_id)
        return await self.recordings.start(session_id, lambda: self.h264_feed(session_id))

    async def stop_recording(self, session_id: str) -> Recording:
        """Stop the session's recording and return it finished (NoRecording if none)."""
        self.registry.get(session_id)
        return await self.recordings.stop(session_id)

    async def control(self, session_id: str, event: ControlEvent | Mapping[str, Any]) -> int:
        """Apply a control event (or its JSON form); returns its input_seq once applied."""
        if not isinstance(event, ControlEvent):
            event = parse_control(event, self.settings.max_text_length)
        elif isinstance(event, Key):
            # Every backend receives a key by its canonical name, however it was given.
            event = Key(resolve_key(event.key), event.duration)
        return await self.registry.control(session_id, event)

    async def screenshot(self, session_id: str) -> Screenshot:
        session = self.registry.get(session_id)
        return await session.backend.screenshot(session.device)

    # -- device actions --------------------------------------------------------------------

    def admit_action(self, session_id: str, action: str, detail: str = "") -> Session:
        """Check that the session's backend offers device actions, and count one against the
        session's rate (RateLimited when over it); the action is written to its log.
        Raises SessionNotFound, ActionUnsupported (naming the backend) or RateLimited."""
        session = self.registry.get(session_id)
        backend = session.backend
        if not isinstance(backend, DeviceActions) or (
            action.partition("/")[0] in backend.unsupported_groups
        ):
            raise ActionUnsupported(backend.name, action)
        self.actions.admit(session, action, detail)
        return session

    async def run_action(
        self,
        session: Session,
        action: str,
        call: Callable[[DeviceActions, DeviceInfo], Awaitable[T]],
    ) -> T:
        """Run an admitted action on the session's device; deleting the session meanwhile
        cancels it (SessionNotFound). A failure is written to the session's log too."""
        backend = session.backend
        assert isinstance(backend, DeviceActions)
        membership = Lifeline()
        session.adopt(membership)
        try:
            with membership.held():
                return await call(backend, session.device)
            raise SessionNotFound(session.session_id, deleted=True)  # cut without a reason
        except BridgeError as exc:
            self.actions.record(session, action, "", f"failed: {exc}")
            raise
        finally:
            session.release(membership)

    async def act(
        self,
        session_id: str,
        action: str,
        call: Callable[[DeviceActions, DeviceInfo], Awaitable[T]],
        detail: str = "",
    ) -> T:
        """:meth:`admit_action` and :meth:`run_action` in one."""
        session = self.admit_action(session_id, action, detail)
        return await self.run_action(session, action, call)

    @asynccontextmanager
    async def logs(self, session_id: str) -> AsyncIterator[LogSubscription]:
        session = self.registry.get(session_id)
        assert session.logs is not None
        membership = Lifeline()
        session.adopt(membership)
        try:
            with membership.held():
                async with session.logs.subscribe() as subscription:
                    yield subscription
        finally:
            session.release(membership)

    # -- statistics --------------------------------------------------------------------------

    def connection_statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            sessions={
                s.session_id: SessionConnections(
                    total=s.total_connections,
                    open_by_kind=dict(Counter(c.kind for c in s.connections.values())),
                    first=s.first_connection,
                    last=s.last_connection,
                )
                for s in self.registry.sessions()
            },
            rate_limit_buckets=self.limiter.statistics().buckets,
        )

    def resource_statistics(self) -> ResourceStatistics:
        return ResourceStatistics(
            pool=self.pool.statistics(),
            warden=self.warden.statistics(),
            client_connections=self.client_connections,
            client_disconnections=self.client_disconnections,
            webrtc_peers=sum(
                c.kind == "webrtc" for s in self.registry.sessions() for c in s.connections.values()
            ),
        )

    def statistics(self) -> BridgeStatistics:
        limiter = self.limiter.statistics()
        pool = self.pool.statistics()
        warden = self.warden.statistics()
        return BridgeStatistics(
            timestamp=time.time(),
            ready=self.ready,
            connection_manager=self.connection_statistics(),
            resource_manager=self.resource_statistics(),
            rate_limiter=limiter,
            warden=warden,
            allocator=self.trimmer.statistics(),
            pool=pool,
            captures=tuple(s.statistics() for s in self.pool.services()),
            sessions=self.registry.statistics(),
            store=self.store.statistics(),
            kpis=Kpis(
                connection_success_rate=limiter.success_rate,
                denied_share=dict(limiter.denied_share),
                service_reuse_rate=pool.reuse_rate,
                rss_growth_mb_per_hour=warden.rss_growth.mb_per_hour,
                rss_growth_window_s=warden.rss_growth.window_s,
                rss_growth_min_window_s=warden.rss_growth.min_window_s,
            ),
            actions=self.actions.statistics(),
            h264=tuple(s.statistics() for s in self.encoders.services()),
            recordings=self.recordings.statistics(),
            per_recording=tuple(r.statistics() for r in self.recordings.recordings()),
        )


def _no_video_encoder(width: int, height: int):
    raise CaptureFailed("H.264 is not available: this bridge was given no video encoder")


def _no_recording_writer(path):
    raise CaptureFailed("recording is not available: this bridge was given no MP4 writer")


@asynccontextmanager
async def run_bridge(
    settings: Settings,
    backends: Mapping[str, DeviceBackend],
    memory_probe: Callable[[], MemorySample] | None = None,
    video_encoder: EncoderFactory | None = None,
    recording_writer: WriterFactory | None = None,
) -> AsyncIterator[Bridge]:
    """Run the bridge's actors over the given backends for the duration of the block.

    Works inside a caller's own nursery. A cancellation from outside comes out
    as that cancellation, so the caller's ``move_on_after`` or nursery just ends.
    A failure comes out as one plain exception, never an exception group: a
    single error is re-raised as it is; several are wrapped in one BridgeError
    naming them. The caller holds the state directory (``hold_state_dir``).
    ``video_encoder`` makes the H.264 codec for a picture size; without one
    :meth:`Bridge.h264_feed` refuses. ``recording_writer`` makes the MP4 writer of a
    recording; without one :meth:`Bridge.start_recording` refuses.
    """
    for backend in backends.values():
        await backend.check()
    bridge = Bridge(settings, dict(backends), memory_probe, video_encoder, recording_writer)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.limiter.run)
            await nursery.start(bridge.pool.run)
            await nursery.start(bridge.encoders.run)
            await nursery.start(bridge.recordings.run)
            await nursery.start(bridge.warden.run)
            await nursery.start(bridge.trimmer.run)
            await nursery.start(bridge.registry.run)
            bridge.started = True
            log.info("bridge started (backends: %s)", ", ".join(backends))
            try:
                yield bridge
            finally:
                bridge.begin_drain()
                with trio.move_on_after(settings.shutdown_grace, shield=True):
                    await bridge.registry.save()
                bridge.final_statistics = bridge.resource_statistics()
                log.debug("final statistics: %s", bridge.final_statistics)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = one_exception(group, "bridge")
        raise error from error.__cause__  # its own cause, not the group around it


__all__ = [
    "Bridge",
    "BridgeStatistics",
    "ConnectionStatistics",
    "DeviceError",
    "Kpis",
    "ResourceStatistics",
    "SessionConnections",
    "run_bridge",
]
