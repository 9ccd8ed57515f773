"""Recording a session's screen to MP4: one more feed of the device's shared H.264 encoder.

A :class:`Recording` watches its device like any H.264 viewer (so it costs no
second capture and no second encode, and goes on while viewers come and go) and
hands each packet to a writer (:class:`~.mp4.Mp4Writer`, given as a factory so
this module never imports PyAV) in a worker thread under a CapacityLimiter, so
the event loop never waits on the disk. A feed that fell behind skips to the next
keyframe, as for every viewer; the file then shows the newest frames, never a
smeared GOP.

A recording ends when it is stopped, at its caps (``max_seconds`` of capture time,
``max_bytes`` of video) by itself, when its session is deleted, when its capture
stops or fails, or at shutdown; in every case the writer is finished (its index
written) under a shielded scope, so the file is complete whenever it exists. It
is kept in the pool's private temporary directory (made with the first recording, removed
with the last) until it is taken (downloaded), discarded, or the pool ends.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import trio

from .._errors import BridgeError, CaptureFailed, CaptureStopped, SessionNotFound, ViewerEvicted
from .encoder import EncodedPacket

log = logging.getLogger("bridge_actors.recording")

__all__ = [
    "NoRecording",
    "Recording",
    "RecordingCaps",
    "RecordingInProgress",
    "RecordingPool",
    "RecordingPoolStatistics",
    "RecordingStatistics",
]

State = Literal["recording", "finished", "failed"]
# How long a stop waits for the first frame of a recording that has none yet.
FIRST_FRAME_WAIT = 5.0


class RecordingInProgress(BridgeError):
    """The session is already being recorded."""


class NoRecording(BridgeError):
    """The session has no recording to stop or download."""


class PacketWriter(Protocol):
    frames: int

    def write(self, packet: EncodedPacket) -> None: ...

    def finish(self) -> None: ...


class H264Source(Protocol):
    async def receive(self) -> EncodedPacket: ...


WriterFactory = Callable[[Path], PacketWriter]
FeedFactory = Callable[[], AbstractAsyncContextManager[H264Source]]


@dataclass(frozen=True, slots=True)
class RecordingCaps:
    max_seconds: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class RecordingStatistics:
    session_id: str
    state: State
    stop_reason: str | None
    frames: int
    bytes: int
    seconds: float
    elapsed: float


class Recording:
    """One session's recording: the actor writing its file, and what it wrote."""

    def __init__(
        self,
        session_id: str,
        path: Path,
        writer: PacketWriter,
        caps: RecordingCaps,
        limiter: trio.CapacityLimiter,
        run_in_worker=trio.to_thread.run_sync,
    ) -> None:
        self.session_id = session_id
        self.path = path
        self.caps = caps
        self._writer = writer
        self._limiter = limiter
        self._run_in_worker = run_in_worker
        self.state: State = "recording"
        self.stop_reason: str | None = None
        self.started_at = trio.current_time()
        self.ended_at: float | None = None
        self.first_captured_at: float | None = None
        self.last_captured_at: float | None = None
        self.frames = 0
        self.bytes = 0
        self.scope = trio.CancelScope()
        self.first_frame = trio.Event()
        self.done = trio.Event()

    @property
    def active(self) -> bool:
        return self.state == "recording"

    @property
    def seconds(self) -> float:
        """Capture time between the first and the last frame written."""
        if self.first_captured_at is None or self.last_captured_at is None:
            return 0.0
        return self.last_captured_at - self.first_captured_at

    def elapsed(self) -> float:
        end = self.ended_at if self.ended_at is not None else trio.current_time()
        return end - self.started_at

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()

    async def run(self, feeds: FeedFactory, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with feeds() as feed:
                task_status.started()
                started = True
                with self.scope:
                    # The duration cap holds even when the screen sends nothing.
                    with trio.move_on_after(self.caps.max_seconds):
                        await self._record(feed)
                    self.stop("max duration reached")
        except (SessionNotFound, CaptureStopped, CaptureFailed, ViewerEvicted) as ended:
            if not started:
                raise  # the caller of start() hears why it could not start
            self.stop(str(ended))
        finally:
            await self._finish()

    async def _record(self, feed: H264Source) -> None:
        while True:
            packet = await feed.receive()
            if self.first_captured_at is None:
                self.first_captured_at = packet.captured_at
            elif packet.captured_at - self.first_captured_at >= self.caps.max_seconds:
                self.stop("max duration reached")
                return
            if self.bytes + len(packet.data) > self.caps.max_bytes:
                self.stop("max size reached")
                return
            try:
                await self._run_in_worker(self._writer.write, packet, limiter=self._limiter)
            except Exception as failure:
                # What was written stays a valid file; the reason is what status reports.
                log.warning("recording of %s ended: %s", self.session_id, failure)
                self.stop(f"recording ended: {failure}")
                return
            self.frames += 1
            self.bytes += len(packet.data)
            self.last_captured_at = packet.captured_at
            self.first_frame.set()

    async def _finish(self) -> None:
        # Shielded: at shutdown too the index must be written, or the file is unplayable.
        with trio.CancelScope(shield=True):
            try:
                await self._run_in_worker(self._writer.finish, limiter=self._limiter)
            except Exception as failure:
                log.error("recording of %s could not be finished", self.session_id, exc_info=True)
                self.state = "failed"
                self.stop_reason = f"the file could not be finished: {failure!r}"
                self.path.unlink(missing_ok=True)
            else:
                self.state = "finished" if self.frames else "failed"
                if not self.frames and self.stop_reason is None:
                    self.stop_reason = "no frame was recorded"
            self.ended_at = trio.current_time()
            if self.stop_reason is None:
                self.stop_reason = "shutting down"
            self.first_frame.set()
            self.done.set()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def statistics(self) -> RecordingStatistics:
        return RecordingStatistics(
            session_id=self.session_id,
            state=self.state,
            stop_reason=self.stop_reason,
            frames=self.frames,
            bytes=self.bytes,
            seconds=self.seconds,
            elapsed=self.elapsed(),
        )


@dataclass(frozen=True, slots=True)
class RecordingPoolStatistics:
    active: int
    kept: int
    started: int
    finished_at_cap: int
    discarded: int


class RecordingPool:
    """The actor owning every session's recording and the private directory holding them."""

    def __init__(
        self,
        caps: RecordingCaps,
        make_writer: WriterFactory,
        limiter: trio.CapacityLimiter,
        run_in_worker=trio.to_thread.run_sync,
    ) -> None:
        """``run_in_worker`` runs the writer; tests under MockClock run it inline."""
        self.caps = caps
        self._make_writer = make_writer
        self._limiter = limiter
        self._run_in_worker = run_in_worker
        self._recordings: dict[str, Recording] = {}
        self._nursery: trio.Nursery | None = None
        self.directory: Path | None = None
        self._serial = 0
        self.started = 0
        self.finished_at_cap = 0
        self.discarded = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._recordings.clear()
            self._remove_directory()

    def _ensure_directory(self) -> Path:
        """The private directory, made with the first recording (none exists without one)."""
        if self.directory is None or not self.directory.exists():
            # mkdtemp makes the directory readable by its owner only.
            self.directory = Path(tempfile.mkdtemp(prefix="bridge-recordings-"))
        return self.directory

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def get(self, session_id: str) -> Recording | None:
        return self._recordings.get(session_id)

    def recordings(self) -> list[Recording]:
        return list(self._recordings.values())

    async def start(self, session_id: str, feeds: FeedFactory) -> Recording:
        """Start recording the session; RecordingInProgress if it already is.

        A finished recording nobody downloaded is discarded first.
        """
        current = self._recordings.get(session_id)
        if current is not None and current.active:
            raise RecordingInProgress("Recording already in progress")
        if current is not None:
            self.discard(session_id)
        assert self._nursery is not None, "pool is not running"
        self._serial += 1
        path = self._ensure_directory() / f"{session_id[:8]}-{self._serial}.mp4"
        recording = Recording(
            session_id,
            path,
            self._make_writer(path),
            self.caps,
            self._limiter,
            self._run_in_worker,
        )
        self._recordings[session_id] = recording
        try:
            await self._nursery.start(self._run_recording, recording, feeds)
        except BaseException:
            if self._recordings.get(session_id) is recording:
                del self._recordings[session_id]
            recording.discard()
            if not self._recordings:
                self._remove_directory()
            raise
        self.started += 1
        return recording

    async def _run_recording(
        self, recording: Recording, feeds: FeedFactory, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        await recording.run(feeds, task_status=task_status)
        if recording.stop_reason in ("max duration reached", "max size reached"):
            self.finished_at_cap += 1

    async def stop(self, session_id: str) -> Recording:
        """Stop the session's recording (if it still runs) and return it finished.

        NoRecording if there is none. A recording without a frame yet is given
        FIRST_FRAME_WAIT seconds to get its first one.
        """
        recording = self._recordings.get(session_id)
        if recording is None:
            raise NoRecording("No recording in progress")
        if recording.active and not recording.frames:
            with trio.move_on_after(FIRST_FRAME_WAIT):
                await recording.first_frame.wait()
        recording.stop("stopped")
        await recording.done.wait()
        return recording

    def discard(self, session_id: str) -> bool:
        """Forget the session's recording and remove its file (stops it if it runs)."""
        recording = self._recordings.pop(session_id, None)
        if recording is None:
            return False
        recording.stop("discarded")
        recording.discard()
        self.discarded += 1
        if not self._recordings and recording.done.is_set():
            self._remove_directory()  # nothing of ours left in the temporary directory
        return True

    async def session_ended(self, session_id: str) -> None:
        """The session is gone: finish its recording and remove the file."""
        recording = self._recordings.get(session_id)
        if recording is None:
            return
        recording.stop("session deleted")
        await recording.done.wait()
        if self._recordings.get(session_id) is recording:
            self.discard(session_id)

    async def cleanup(self) -> int:
        """Stop every recording and remove every file; how many there were."""
        recordings = list(self._recordings.values())
        for recording in recordings:
            recording.stop("cleaned up")
        for recording in recordings:
            await recording.done.wait()
        removed = 0
        for recording in recordings:
            if self._recordings.get(recording.session_id) is recording:
                self.discard(recording.session_id)
                removed += 1
        return removed

    def statistics(self) -> RecordingPoolStatistics:
        active = sum(1 for r in self._recordings.values() if r.active)
        return RecordingPoolStatistics(
            active=active,
            kept=len(self._recordings) - active,
            started=self.started,
            finished_at_cap=self.finished_at_cap,
            discarded=self.discarded,
        )
