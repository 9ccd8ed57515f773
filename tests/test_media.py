"""The media backend on clips the tests make themselves, and its pure pacing policy."""

from __future__ import annotations

import av
import numpy as np
import pytest
import trio
from fakes import RecordingSink, capture_until, capturing

from bridge_actors import BadInput, DeviceBackend, DeviceError, DeviceInfo, InvalidSettings, Tap
from bridge_actors._backends.jpeg import decode_jpeg
from bridge_actors._backends.media import (
    MEDIA_VERSION,
    FramePacer,
    MediaBackend,
    mask_password,
    output_size,
    parse_source,
)
from bridge_actors._backends.simulated import run_on_event_loop

WIDTH, HEIGHT, RATE, FRAMES = 64, 48, 10, 20


def colour(index: int) -> tuple[int, int, int]:
    return (20 + index * 10, 230 - index * 10, 128)


def make_clip(path, *, codec: str = "mpeg4", frames: int = FRAMES, rate: int = RATE) -> str:
    """A clip whose frame ``i`` is all ``colour(i)``: a decoded frame tells which it is."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.bit_rate = 4_000_000  # plenty for 64x48: every frame keeps its colour
        for index in range(frames):
            pixels = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            pixels[:] = colour(index)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def frame_index(jpeg: bytes) -> int:
    return frame_index_of_pixels(decode_jpeg(jpeg))


def frame_index_of_pixels(pixels: np.ndarray) -> int:
    red, green, _ = pixels.reshape(-1, 3).mean(axis=0)
    index = round((red - 20) / 10)
    assert abs(red - colour(index)[0]) < 5 and abs(green - colour(index)[1]) < 5
    return index


def backend(sources, *, inline: bool = True, **kwargs) -> MediaBackend:
    """``inline`` runs decoding and encoding on the event loop, so that MockClock time is
    exact: the autojump clock counts a task waiting for a worker thread as idle."""
    return MediaBackend(
        sources=sources,
        encode_limiter=trio.CapacityLimiter(2),
        run_in_worker=run_on_event_loop if inline else trio.to_thread.run_sync,
        **kwargs,
    )


async def clip_device(clip: str) -> tuple[MediaBackend, DeviceInfo]:
    """A backend with the test clip as source ``clip``, and a device made from it."""
    media = backend({"clip": clip})
    return media, await media.create_device("clip", MEDIA_VERSION)


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4")


# --- sources ---------------------------------------------------------------------------------


def test_sources_paths_urls_and_format_prefixes():
    assert parse_source("/videos/a.mp4").format is None
    assert parse_source("clip:1.mp4").target == "clip:1.mp4"  # not a format: a path
    assert parse_source("C:\\videos\\a.mp4").format is None
    url = parse_source("rtsp://cam.local:554/stream")
    assert (url.target, url.format) == ("rtsp://cam.local:554/stream", None)
    screen = parse_source("x11grab::0.0")
    assert (screen.format, screen.target) == ("x11grab", ":0.0")
    generated = parse_source("lavfi:testsrc=size=64x48")
    assert (generated.format, generated.target) == ("lavfi", "testsrc=size=64x48")


def test_a_camera_prefix_is_used_or_refused_by_name():
    if "v4l2" in av.formats_available:
        assert parse_source("v4l2:/dev/video0").format == "v4l2"
    else:
        with pytest.raises(ValueError, match="'v4l2' is not available"):
            parse_source("v4l2:/dev/video0")


@pytest.mark.parametrize("spec", ["", "   ", "lavfi:"])
def test_empty_sources_are_refused(spec):
    with pytest.raises(ValueError):
        parse_source(spec)


def test_passwords_never_leave_the_source_spec():
    assert mask_password("rtsp://admin:hunter2@cam:554/s") == "rtsp://admin:***@cam:554/s"
    assert mask_password("/a/b.mp4") == "/a/b.mp4"
    assert parse_source("http://u:secret@h/v.mjpg").display == "http://u:***@h/v.mjpg"


def test_output_size_keeps_the_aspect_ratio_when_one_side_is_given():
    assert output_size(640, 480, None, None) == (640, 480)
    assert output_size(640, 480, 320, None) == (320, 240)
    assert output_size(640, 480, None, 120) == (160, 120)
    assert output_size(640, 480, 100, 100) == (100, 100)
    assert output_size(1920, 1080, 101, None) == (101, 56)  # the computed side is even


def test_bad_configuration_names_what_is_wrong():
    limiter = trio.CapacityLimiter(1)
    with pytest.raises(InvalidSettings, match="media source 'cam'"):
        MediaBackend(sources={"cam": "lavfi:"}, encode_limiter=limiter)
    with pytest.raises(InvalidSettings, match="jpeg_quality"):
        MediaBackend(sources={}, encode_limiter=limiter, jpeg_quality=0)
    with pytest.raises(InvalidSettings, match="width"):
        MediaBackend(sources={}, encode_limiter=limiter, width=-3)


# --- pacing (pure) ---------------------------------------------------------------------------


def schedule_all(pacer: FramePacer, stamps, start: float = 100.0):
    """Schedule each stamp as a capture would: ``now`` is the previous deadline (it slept)."""
    now, deadlines = start, []
    for pts in stamps:
        deadline = pacer.schedule(pts, now)
        deadlines.append(deadline)
        if deadline is not None:
            now = max(now, deadline)
    return deadlines


def test_frames_are_due_at_their_timestamps():
    pacer = FramePacer(max_fps=30)
    deadlines = schedule_all(pacer, [i / 10 for i in range(5)])
    assert deadlines == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


def test_time_spent_decoding_does_not_drift_the_schedule():
    pacer = FramePacer(max_fps=30)
    assert pacer.schedule(0.0, 100.0) == 100.0
    assert pacer.schedule(0.1, 100.05) == pytest.approx(100.1)  # early: wait for it
    assert pacer.schedule(0.2, 100.25) == pytest.approx(100.2)  # a bit late: show it now
    assert pacer.schedule(0.3, 100.26) == pytest.approx(100.3)


def test_a_source_faster_than_the_cap_is_thinned_evenly():
    pacer = FramePacer(max_fps=30)
    deadlines = schedule_all(pacer, [i / 60 for i in range(12)])
    shown = [d for d in deadlines if d is not None]
    assert len(shown) == 6
    assert np.diff(shown) == pytest.approx([1 / 30] * 5)
    assert pacer.skipped == 6


def test_a_cap_that_does_not_divide_the_source_rate_keeps_its_rate():
    pacer = FramePacer(max_fps=25)
    deadlines = schedule_all(pacer, [i / 30 for i in range(300)])
    shown = sum(d is not None for d in deadlines)
    assert shown == pytest.approx(250, abs=2)


def test_a_loop_starts_one_frame_after_the_last():
    pacer = FramePacer(max_fps=30)
    stamps = [i / 10 for i in range(5)] * 2
    deadlines = schedule_all(pacer, stamps)
    assert deadlines == pytest.approx([100 + i / 10 for i in range(10)])


def test_a_single_frame_file_repeats_at_its_nominal_rate():
    pacer = FramePacer(max_fps=30, nominal_interval=0.5)
    assert schedule_all(pacer, [0.0] * 4) == pytest.approx([100.0, 100.5, 101.0, 101.5])


def test_after_a_pause_the_schedule_restarts_instead_of_bursting():
    pacer = FramePacer(max_fps=30, max_lag=1.0)
    assert pacer.schedule(0.0, 100.0) == 100.0
    assert pacer.schedule(0.1, 100.1) == pytest.approx(100.1)
    # Nobody watched for a minute; the next frames continue from now, in real time.
    assert pacer.schedule(0.2, 160.0) == 160.0
    assert pacer.schedule(0.3, 160.0) == pytest.approx(160.1)


def test_frames_without_timestamps_follow_the_last_interval():
    pacer = FramePacer(max_fps=30)
    assert schedule_all(pacer, [0.0, 0.2, None, None]) == pytest.approx(
        [100.0, 100.2, 100.4, 100.6]
    )


def test_a_jump_in_timestamps_does_not_stall_the_picture():
    pacer = FramePacer(max_fps=30, max_gap=5.0)
    assert schedule_all(pacer, [0.0, 0.1, 3600.0, 3600.1]) == pytest.approx(
        [100.0, 100.1, 100.2, 100.3]
    )


# --- the backend -----------------------------------------------------------------------------


async def test_configurations_list_the_source_names(clip):
    media = backend({"lobby": clip, "desk": "lavfi:testsrc"})
    assert isinstance(media, DeviceBackend)
    configurations = await media.configurations()
    assert configurations.device_types == ("lobby", "desk")
    assert configurations.ios_versions == (MEDIA_VERSION,)


async def test_create_device_learns_the_size_from_the_source(clip):
    media = backend({"lobby": clip})
    device = await media.create_device("lobby", MEDIA_VERSION)
    assert (device.pixel_width, device.pixel_height) == (WIDTH, HEIGHT)
    assert (device.point_width, device.point_height) == (WIDTH, HEIGHT)
    assert (device.device_type, device.backend, device.source) == ("lobby", "media", clip)
    assert device.name.startswith("bridge-lobby-")
    other = await media.create_device("lobby", MEDIA_VERSION)
    assert other.udid != device.udid


async def test_create_device_scales_to_the_configured_size(clip):
    media = backend({"lobby": clip}, width=32)
    device = await media.create_device("lobby", MEDIA_VERSION)
    assert (device.pixel_width, device.pixel_height) == (32, 24)


async def test_create_device_refuses_unknown_names_and_versions(clip):
    media = backend({"lobby": clip})
    with pytest.raises(BadInput) as error:
        await media.create_device("garage", MEDIA_VERSION)
    assert error.value.field == "device_type"
    assert "garage" in error.value.message and "lobby" in error.value.message
    with pytest.raises(BadInput) as error:
        await media.create_device("lobby", "17.0")
    assert error.value.field == "ios_version"


@pytest.mark.parametrize(
    ("make_source", "reason"),
    [
        (lambda tmp: str(tmp / "missing.mp4"), "No such file"),
        (lambda tmp: _write(tmp / "noise.bin", bytes(range(256)) * 16), "Invalid data"),
        (lambda tmp: "lavfi:anullsrc", "no video stream"),
    ],
)
async def test_a_source_that_cannot_open_fails_create_naming_it(tmp_path, make_source, reason):
    source = make_source(tmp_path)
    media = backend({"broken": source})
    with pytest.raises(BadInput) as error:
        await media.create_device("broken", MEDIA_VERSION)
    assert error.value.field == "device_type"
    assert f"cannot open media source {source}: " in error.value.message
    assert reason in error.value.message


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("codec", ["mpeg4", "mjpeg", "libx264"])
async def test_capture_publishes_real_decoded_frames_in_real_time(tmp_path, autojump_clock, codec):
    path = make_clip(tmp_path / f"clip-{codec}.{'avi' if codec == 'mjpeg' else 'mp4'}", codec=codec)
    media = backend({"clip": path})
    device = await media.create_device("clip", MEDIA_VERSION)
    sink = RecordingSink(input_seq=7)
    start = trio.current_time()
    with trio.fail_after(60):
        await capture_until(media, device, sink, 5)
    times = [at - start for at, _, _ in sink.frames[:5]]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert [frame_index(jpeg) for _, jpeg, _ in sink.frames[:5]] == [0, 1, 2, 3, 4]
    assert sink.frames[0][2] == {"pixel_width": WIDTH, "pixel_height": HEIGHT, "input_seq": 7}


async def test_a_file_loops_without_a_gap(clip, autojump_clock):
    media, device = await clip_device(clip)
    sink = RecordingSink()
    start = trio.current_time()
    with trio.fail_after(60):
        await capture_until(media, device, sink, FRAMES + 5)
    indices = [frame_index(jpeg) for _, jpeg, _ in sink.frames[: FRAMES + 5]]
    assert indices == [*range(FRAMES), 0, 1, 2, 3, 4]
    times = np.array([at - start for at, _, _ in sink.frames[: FRAMES + 5]])
    assert times == pytest.approx(np.arange(FRAMES + 5) / RATE)


async def test_frame_count_follows_the_clock_at_the_source_rate(clip, autojump_clock):
    media, device = await clip_device(clip)
    sink = RecordingSink()
    with trio.fail_after(60):
        async with capturing(media, device, sink):
            await trio.sleep(3.05)
            assert len(sink.frames) == 31  # t = 0.0, 0.1, ..., 3.0
            assert media.statistics().devices[0].fps_in == RATE


class GatedSink(RecordingSink):
    """A sink whose viewers arrive when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.viewers = trio.Event()

    async def wait_for_viewers(self) -> None:
        await self.viewers.wait()


async def test_nothing_is_decoded_for_nobody_and_viewers_get_real_time_not_a_backlog(
    clip, autojump_clock
):
    media, device = await clip_device(clip)
    sink = GatedSink()
    with trio.fail_after(60):
        async with capturing(media, device, sink):
            await trio.sleep(5)
            assert sink.frames == []
            arrived = trio.current_time()
            sink.viewers.set()
            await sink.wait_for(3)
    times = [at - arrived for at, _, _ in sink.frames]
    assert times == pytest.approx([0.0, 0.1, 0.2])
    assert [frame_index(jpeg) for _, jpeg, _ in sink.frames] == [0, 1, 2]


async def test_the_fps_cap_thins_the_source(clip, autojump_clock):
    media, device = await clip_device(clip)
    sink = RecordingSink()
    start = trio.current_time()
    with trio.fail_after(60):
        await capture_until(media, device, sink, 4, fps=5)
    assert [at - start for at, _, _ in sink.frames] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert [frame_index(jpeg) for _, jpeg, _ in sink.frames] == [0, 2, 4, 6]


async def test_frames_are_scaled_to_the_device_size(clip, autojump_clock):
    media = backend({"clip": clip}, width=32, height=20, jpeg_quality=50)
    device = await media.create_device("clip", MEDIA_VERSION)
    sink = RecordingSink()
    with trio.fail_after(60):
        await capture_until(media, device, sink, 2)
    jpeg = sink.frames[0][1]
    assert decode_jpeg(jpeg).shape == (20, 32, 3)
    assert sink.frames[0][2]["pixel_width"] == 32


async def test_decoding_in_worker_threads_never_runs_ahead_of_real_time(clip):
    """The production path, on the real clock: frames are never shown early."""
    media = backend({"clip": clip}, inline=False)
    device = await media.create_device("clip", MEDIA_VERSION)
    sink = RecordingSink()
    start = trio.current_time()
    with trio.fail_after(10):
        await capture_until(media, device, sink, 4)
    times = [at - start for at, _, _ in sink.frames[:4]]
    assert all(at >= index / RATE for index, at in enumerate(times))
    assert [frame_index(jpeg) for _, jpeg, _ in sink.frames[:4]] == [0, 1, 2, 3]
    assert not media.statistics().devices[0].capturing


async def test_a_source_that_ends_raises_out_of_capture(autojump_clock):
    media = backend({"gen": "lavfi:testsrc=size=64x48:rate=10:duration=0.5"})
    device = await media.create_device("gen", MEDIA_VERSION)
    sink = RecordingSink()
    with trio.fail_after(60), pytest.raises(DeviceError, match="media source lavfi:testsrc"):
        await media.capture(device, sink, fps=30)
    assert len(sink.frames) == 5
    stats = media.statistics().devices[0]
    assert not stats.capturing
    assert "cannot be rewound" in stats.last_error


async def test_a_source_that_disappears_raises_out_of_capture(tmp_path, autojump_clock):
    path = make_clip(tmp_path / "gone.mp4")
    media = backend({"clip": path})
    device = await media.create_device("clip", MEDIA_VERSION)
    (tmp_path / "gone.mp4").unlink()
    with trio.fail_after(60), pytest.raises(DeviceError, match="No such file"):
        await media.capture(device, RecordingSink(), fps=30)


async def test_capture_refuses_a_bad_fps(clip):
    media, device = await clip_device(clip)
    with pytest.raises(BadInput) as error:
        await media.capture(device, RecordingSink(), fps=0)
    assert error.value.field == "fps"


async def test_screenshot_grabs_a_frame_when_nobody_captures(clip):
    media = backend({"clip": clip}, width=32)
    device = await media.create_device("clip", MEDIA_VERSION)
    shot = await media.screenshot(device)
    assert (shot.format, shot.pixel_width, shot.pixel_height) == ("jpeg", 32, 24)
    assert decode_jpeg(shot.data).shape == (24, 32, 3)


async def test_screenshot_during_capture_is_the_frame_viewers_saw(clip, autojump_clock):
    media, device = await clip_device(clip)
    sink = RecordingSink()
    with trio.fail_after(60):
        async with capturing(media, device, sink):
            await sink.wait_for(3)
            shot = await media.screenshot(device)
            assert shot.data == sink.frames[-1][1]


async def test_only_an_encoder_watching_gets_pixels_and_a_screenshot_is_still_a_jpeg(
    clip, autojump_clock
):
    media, device = await clip_device(clip)
    sink = RecordingSink(wants_jpeg=False)
    with trio.fail_after(60):
        async with capturing(media, device, sink):
            await sink.wait_for(3)
            shot = await media.screenshot(device)
            last = sink.frames[-1][1]
            sink.wants_jpeg = True
            await sink.wait_for(len(sink.frames) + 2)
    assert media._device(device).last_picture is None  # a capture's last frame dies with it
    unencoded = [picture for _, picture, _ in sink.frames if isinstance(picture, np.ndarray)]
    assert len(unencoded) >= 3 and isinstance(sink.frames[-1][1], bytes)
    for pixels in unencoded:
        assert pixels.shape == (device.pixel_height, device.pixel_width, 3)
    # The screenshot is the pixels viewers were last given, encoded for it.
    assert shot.format == "jpeg"
    assert np.abs(decode_jpeg(shot.data).astype(int) - last.astype(int)).mean() < 4
    assert frame_index(shot.data) == frame_index_of_pixels(last)


async def test_controls_are_accepted_and_change_nothing(clip):
    media, device = await clip_device(clip)
    await media.apply_control(device, Tap(1, 2), input_seq=1)


async def test_lifecycle_of_a_device_that_lives_only_in_this_process(clip):
    media, device = await clip_device(clip)
    assert await media.is_accessible(device)
    assert await media.list_orphans(frozenset()) == []
    await media.delete_device(device)
    assert media.statistics().devices == ()
    # After a restart the record comes back while its source name is still configured.
    assert await media.restore_device(device)
    assert not await backend({"other": clip}).restore_device(device)


async def test_the_log_stream_is_quiet_until_cancelled(clip, autojump_clock):
    media, device = await clip_device(clip)
    lines = []
    with trio.move_on_after(30) as scope:
        await media.stream_logs(device, lines.append)
    assert scope.cancelled_caught and lines == []
