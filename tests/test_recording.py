"""Recording: the routes through the real server for three backends, and the caps under MockClock.

A recording is one more feed of the device's shared H.264 encoder, muxed into MP4
without re-encoding. Each downloaded file is opened with PyAV: its frames are
counted and decoded, and its length is compared with the capture times of the
frames that were recorded.
"""

from __future__ import annotations

import io
import re
from fractions import Fraction
from pathlib import Path

import av
import pytest
import trio
from conftest import open_ws, running_server
from fakes import make_jpeg
from test_backends_server import create, serving
from test_media import make_clip

from bridge_actors._errors import CaptureFailed, CaptureStopped
from bridge_actors._video.encoder import EncodedPacket
from bridge_actors._video.h264 import TIME_BASE
from bridge_actors._video.recorder import (
    NoRecording,
    RecordingCaps,
    RecordingInProgress,
    RecordingPool,
)

FILENAME = re.compile(r"attachment; filename=ios-recording_(\w{8})_\d+\.mp4")


def probe(data: bytes) -> tuple[int, float, int, tuple[int, int]]:
    """(frames in the track, its duration in seconds, frames decoded, picture size)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        duration = float(stream.duration * stream.time_base)
        size = (stream.width, stream.height)
        decoded = sum(1 for _ in container.decode(video=0))
    return frames, duration, decoded, size


async def status_of(server, sid: str) -> dict:
    response = await server.http.get(f"/api/sessions/{sid}/recording/status")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_frames(server, sid: str, count: int) -> dict:
    with trio.fail_after(20):
        while (status := await status_of(server, sid))["frames"] < count:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return status


async def record(server, sid: str, frames: int) -> tuple[bytes, dict]:
    started = await server.http.post(f"/api/sessions/{sid}/recording/start")
    assert started.status_code == 200, started.text
    assert started.json() == {"success": True, "message": "Recording started", "session_id": sid}
    await wait_for_frames(server, sid, frames)
    recording = server.bridge.recordings.get(sid)
    stopped = await server.http.post(f"/api/sessions/{sid}/recording/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.headers["content-type"] == "video/mp4"
    assert FILENAME.fullmatch(stopped.headers["content-disposition"]).group(1) == sid[:8]
    assert not recording.path.exists(), "the file is removed once downloaded"
    return stopped.content, {"frames": recording.frames, "seconds": recording.seconds}


def assert_playable(data: bytes, written: dict, size: tuple[int, int] | None = None) -> None:
    frames, duration, decoded, picture = probe(data)
    assert frames == decoded == written["frames"]
    # The track lasts from the first capture to the last, plus the last frame's own time.
    last_frame = written["seconds"] / max(1, written["frames"] - 1)
    assert duration == pytest.approx(written["seconds"] + last_frame, abs=0.05)
    if size is not None:
        assert picture == size


async def test_a_simulated_session_records_while_viewers_come_and_go(tmp_path):
    async with running_server(tmp_path) as server:
        sid = server.session_id
        assert (await status_of(server, sid))["state"] == "idle"
        started = await server.http.post(f"/api/sessions/{sid}/recording/start")
        assert started.status_code == 200
        again = await server.http.post(f"/api/sessions/{sid}/recording/start")
        assert again.status_code == 409
        assert again.json() == {"success": False, "detail": "Recording already in progress"}

        async with open_ws(server.ws_url(sid, "video")) as viewer:
            await viewer.get_message()
            await wait_for_frames(server, sid, 3)
        before = (await status_of(server, sid))["frames"]
        status = await wait_for_frames(server, sid, before + 5)  # the viewer has gone
        assert status["is_recording"] is True and status["state"] == "recording"
        assert status["elapsed_seconds"] > 0
        stats = (await server.stats())["recordings"]
        assert (stats["active"], stats["sessions"][sid]["state"]) == (1, "recording")
        # One capture and one encoder for the device, whoever watches.
        assert len(server.bridge.pool.services()) == 1
        assert len(server.bridge.encoders.services()) == 1

        recording = server.bridge.recordings.get(sid)
        stopped = await server.http.post(f"/api/sessions/{sid}/recording/stop")
        assert stopped.status_code == 200
        written = {"frames": recording.frames, "seconds": recording.seconds}
        assert_playable(stopped.content, written)
        done = await status_of(server, sid)
        assert (done["is_recording"], done["state"]) == (False, "idle")

        nothing = await server.http.post(f"/api/sessions/{sid}/recording/stop")
        assert nothing.status_code == 400
        assert nothing.json() == {"success": False, "detail": "No recording in progress"}
        unknown = await server.http.get("/api/sessions/nope/recording/status")
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "Session not found"


async def test_a_media_session_records_its_clip(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    async with serving(tmp_path / "state", "media", media_sources={"clip": clip}) as server:
        sid = (await create(server, "clip", "media"))["session_id"]
        data, written = await record(server, sid, 8)
        assert_playable(data, written, (64, 48))


async def test_an_ios_session_records_the_simulator_stream(tmp_path, ios_tools):
    # Every streamed frame the same size: a rotation ends a recording (one track, one size).
    frame_count = 40
    for n in range(frame_count):
        (ios_tools.dir / f"frame{n}.jpg").write_bytes(make_jpeg(40, 30, n))
    ios_tools.behave(frames=frame_count)
    async with serving(tmp_path / "state", "ios") as server:
        sid = (await create(server, "iPhone 15", "17.2"))["session_id"]
        data, written = await record(server, sid, 1)
        frames, _duration, decoded, size = probe(data)
        assert frames == decoded == written["frames"] >= 1
        assert size == (40, 30)


async def test_a_recording_stops_itself_at_its_cap_and_says_why(tmp_path):
    async with running_server(tmp_path, recording_max_seconds=0.5) as server:
        sid = server.session_id
        assert (await server.http.post(f"/api/sessions/{sid}/recording/start")).status_code == 200
        with trio.fail_after(20):
            while (status := await status_of(server, sid))["is_recording"]:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert status["state"] == "finished"
        assert status["stop_reason"] == "max duration reached"
        assert status["max_duration_seconds"] == 0.5
        recording = server.bridge.recordings.get(sid)
        assert recording.seconds < 0.5
        stopped = await server.http.post(f"/api/sessions/{sid}/recording/stop")
        assert stopped.status_code == 200
        assert_playable(stopped.content, {"frames": recording.frames, "seconds": recording.seconds})


async def test_deleting_a_session_while_recording_removes_the_file(tmp_path):
    async with running_server(tmp_path) as server:
        sid = server.session_id
        assert (await server.http.post(f"/api/sessions/{sid}/recording/start")).status_code == 200
        await wait_for_frames(server, sid, 2)
        path = server.bridge.recordings.get(sid).path
        assert path.exists()
        assert (await server.http.delete(f"/api/sessions/{sid}")).status_code == 200
        assert not path.exists()
        assert server.bridge.recordings.get(sid) is None
        stop = await server.http.post(f"/api/sessions/{sid}/recording/stop")
        assert stop.status_code == 404


async def test_shutdown_while_recording_finishes_the_file_and_leaves_no_temp_file(tmp_path):
    async with running_server(tmp_path) as server:
        sid = server.session_id
        assert (await server.http.post(f"/api/sessions/{sid}/recording/start")).status_code == 200
        await wait_for_frames(server, sid, 2)
        recording = server.bridge.recordings.get(sid)
        directory = server.bridge.recordings.directory
        assert recording.path.parent == directory and directory.stat().st_mode & 0o077 == 0
    assert recording.state == "finished" and recording.stop_reason == "shutting down"
    assert not directory.exists()


async def test_cleanup_recordings_stops_and_removes_every_recording(tmp_path):
    async with running_server(tmp_path) as server:
        sid = server.session_id
        assert (await server.http.post(f"/api/sessions/{sid}/recording/start")).status_code == 200
        await wait_for_frames(server, sid, 1)
        path = server.bridge.recordings.get(sid).path
        cleaned = await server.http.post("/api/sessions/cleanup-recordings")
        assert cleaned.status_code == 200
        assert cleaned.json() == {
            "success": True,
            "message": "All recordings cleaned up",
            "removed": 1,
        }
        assert not path.exists()
        assert (await status_of(server, sid))["state"] == "idle"


# --- the caps, under MockClock -----------------------------------------------------------------


class FakeWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.packets: list[EncodedPacket] = []
        self.frames = 0
        self.finished = False

    def write(self, packet: EncodedPacket) -> None:
        self.packets.append(packet)
        self.frames += 1

    def finish(self) -> None:
        self.finished = True


class TickingFeed:
    """A packet of ``size`` bytes every ``interval`` seconds of (mock) time, until ``ends``."""

    def __init__(self, interval: float, size: int, ends: int | None = None) -> None:
        self.interval = interval
        self.size = size
        self.ends = ends
        self.sent = 0

    async def receive(self) -> EncodedPacket:
        if self.ends is not None and self.sent >= self.ends:
            raise CaptureStopped("capture stopped: memory is critical")
        await trio.sleep(self.interval)
        self.sent += 1
        now = trio.current_time()
        return EncodedPacket(
            b"\0" * self.size, self.sent == 1, round(now * 90000), TIME_BASE, self.sent, now
        )

    def __call__(self):
        feed = self

        class _Context:
            async def __aenter__(self):
                return feed

            async def __aexit__(self, *exc):
                return False

        return _Context()


async def _inline(fn, *args, limiter=None):
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def open_pool(nursery, **caps) -> tuple[RecordingPool, list[FakeWriter]]:
    writers: list[FakeWriter] = []

    def make_writer(path: Path) -> FakeWriter:
        writers.append(FakeWriter(path))
        return writers[-1]

    values = {"max_seconds": 3600.0, "max_bytes": 10**9, **caps}
    pool = RecordingPool(RecordingCaps(**values), make_writer, trio.CapacityLimiter(1), _inline)
    await nursery.start(pool.run)
    return pool, writers


async def test_the_duration_cap_counts_capture_time(autojump_clock):
    async with trio.open_nursery() as nursery:
        pool, writers = await open_pool(nursery, max_seconds=2.0)
        recording = await pool.start("s" * 8, TickingFeed(0.1, 100))
        await recording.done.wait()
        assert recording.stop_reason == "max duration reached"
        assert recording.state == "finished" and writers[0].finished
        assert 19 <= recording.frames <= 20
        assert recording.seconds < 2.0
        nursery.cancel_scope.cancel()


async def test_the_duration_cap_holds_when_no_frame_comes(autojump_clock):
    async with trio.open_nursery() as nursery:
        pool, _ = await open_pool(nursery, max_seconds=2.0)
        recording = await pool.start("s" * 8, TickingFeed(60.0, 100))
        with trio.fail_after(2.5):
            await recording.done.wait()
        assert (recording.state, recording.stop_reason) == ("failed", "max duration reached")
        nursery.cancel_scope.cancel()


async def test_the_size_cap_stops_before_the_packet_that_would_pass_it(autojump_clock):
    async with trio.open_nursery() as nursery:
        pool, writers = await open_pool(nursery, max_bytes=5500)
        recording = await pool.start("s" * 8, TickingFeed(0.1, 1000))
        await recording.done.wait()
        assert recording.stop_reason == "max size reached"
        assert (recording.frames, recording.bytes, len(writers[0].packets)) == (5, 5000, 5)
        nursery.cancel_scope.cancel()


async def test_a_stopped_capture_ends_the_recording_with_its_reason(autojump_clock):
    async with trio.open_nursery() as nursery:
        pool, _ = await open_pool(nursery)
        recording = await pool.start("s" * 8, TickingFeed(0.1, 10, ends=3))
        await recording.done.wait()
        assert recording.state == "finished" and recording.frames == 3
        assert recording.stop_reason == "capture stopped: memory is critical"
        with pytest.raises(NoRecording):
            await pool.stop("other")
        nursery.cancel_scope.cancel()


async def test_double_start_is_refused_and_a_stop_waits_for_the_first_frame(autojump_clock):
    async with trio.open_nursery() as nursery:
        pool, writers = await open_pool(nursery)
        feed = TickingFeed(1.0, 10)
        await pool.start("s" * 8, feed)
        with pytest.raises(RecordingInProgress):
            await pool.start("s" * 8, feed)
        stopped = await pool.stop("s" * 8)
        assert (stopped.state, stopped.frames, stopped.stop_reason) == ("finished", 1, "stopped")
        assert writers[0].finished and len(writers) == 1
        nursery.cancel_scope.cancel()


async def test_a_feed_that_cannot_start_refuses_the_start_and_keeps_nothing(autojump_clock):
    class NoFeed:
        async def __aenter__(self):
            raise CaptureFailed("H.264 is not available: this bridge was given no video encoder")

        async def __aexit__(self, *exc):
            return False

    async with trio.open_nursery() as nursery:
        pool, writers = await open_pool(nursery)
        with pytest.raises(CaptureFailed, match=r"H\.264 is not available"):
            await pool.start("s" * 8, NoFeed)
        assert pool.get("s" * 8) is None and not writers[0].packets
        assert not pool.directory.exists()
        nursery.cancel_scope.cancel()


def test_the_mp4_writer_times_frames_by_their_capture(tmp_path):
    from bridge_actors._video.mp4 import Mp4Writer
    from bridge_actors._video.pyav_encoder import PyAVH264Encoder

    encoder = PyAVH264Encoder(64, 48, fps=10)
    writer = Mp4Writer(tmp_path / "out.mp4")
    # Irregular capture times, as a real screen gives them: 0, 0.1, 0.3, 0.35, ...
    times = [0.0, 0.1, 0.3, 0.35, 0.5, 0.9, 1.0]
    for n, at in enumerate(times):
        pts = round(at * 90000)
        for data, packet_pts in encoder.encode(make_jpeg(64, 48, n), pts, n == 0):
            writer.write(EncodedPacket(data, n == 0, packet_pts, Fraction(1, 90000), n, 5 + at))
    writer.finish()
    frames, duration, decoded, size = probe((tmp_path / "out.mp4").read_bytes())
    assert (frames, decoded, size) == (len(times), len(times), (64, 48))
    assert duration == pytest.approx(1.1, abs=0.01)  # the last frame lasts as the one before


class EncodedFeed(TickingFeed):
    """Real H.264 packets of 64x48 frames, one every ``interval`` seconds of (mock) time."""

    def __init__(self, interval: float) -> None:
        super().__init__(interval, 0)
        from bridge_actors._video.pyav_encoder import PyAVH264Encoder

        self.encoder = PyAVH264Encoder(64, 48, fps=10)

    async def receive(self) -> EncodedPacket:
        await trio.sleep(self.interval)
        self.sent += 1
        now = trio.current_time()
        pts = round(now * 90000)
        [(data, _)] = self.encoder.encode(make_jpeg(64, 48, self.sent), pts, self.sent == 1)
        return EncodedPacket(data, self.sent == 1, pts, TIME_BASE, self.sent, now)


async def test_at_shutdown_the_file_is_finished_playable_before_it_is_removed(
    autojump_clock, tmp_path
):
    from bridge_actors._video.mp4 import Mp4Writer

    kept = tmp_path / "as-finished.mp4"

    class KeepingWriter(Mp4Writer):
        def finish(self) -> None:
            super().finish()
            kept.write_bytes(self.path.read_bytes())

    pool = RecordingPool(
        RecordingCaps(3600.0, 10**9), KeepingWriter, trio.CapacityLimiter(1), _inline
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        recording = await pool.start("s" * 8, EncodedFeed(0.1))
        await trio.sleep(1.05)
        nursery.cancel_scope.cancel()  # what shutting the bridge down does
    assert (recording.state, recording.stop_reason) == ("finished", "shutting down")
    assert not pool.directory.exists()
    frames, duration, decoded, size = probe(kept.read_bytes())
    assert (frames, decoded, size) == (10, 10, (64, 48))
    assert duration == pytest.approx(1.0, abs=0.01)
