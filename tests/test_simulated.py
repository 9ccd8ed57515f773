from __future__ import annotations

import io
import re
import uuid
from functools import partial

import numpy as np
import pytest
import trio
from fakes import capturing
from PIL import Image

from bridge_actors._backends.jpeg import JpegEncoder, decode_jpeg, qscale_for_quality
from bridge_actors._backends.simulated import (
    IOS_VERSIONS,
    SimulatedBackend,
    _LogScript,
    run_on_event_loop,
)
from bridge_actors._controls import Button, Swipe, Tap, Text
from bridge_actors._device import DeviceBackend, DeviceInfo, LogLine, Screenshot
from bridge_actors._errors import BadInput, DeviceError

IPHONE = "iPhone 15 (simulated)"
WIDTH, HEIGHT = 390, 844


def make_backend(**overrides) -> SimulatedBackend:
    """Work runs inline by default: an autojumping MockClock jumps while threads work."""
    options = {
        "encode_limiter": trio.CapacityLimiter(2),
        "log_interval": 0.5,
        "run_in_worker": run_on_event_loop,
    }
    options.update(overrides)
    return SimulatedBackend(**options)


class FakeSink:
    """A FrameSink that records every publish, with viewers that come and go on demand."""

    def __init__(self, *, viewers: bool = True, wants_jpeg: bool = True) -> None:
        self.frames: list[dict] = []
        self.wants_jpeg = wants_jpeg
        self._viewers_present = trio.Event()
        self._published = trio.Event()
        if viewers:
            self._viewers_present.set()

    @property
    def applied_input_seq(self) -> int:
        return 0

    def set_viewers(self, present: bool) -> None:
        if present:
            self._viewers_present.set()
        elif self._viewers_present.is_set():
            self._viewers_present = trio.Event()

    async def wait_for_viewers(self) -> None:
        await self._viewers_present.wait()

    def publish(
        self, jpeg, *, pixel_width, pixel_height, timestamp=None, input_seq=None, point_size=None
    ):
        self.frames.append(
            {
                "at": trio.current_time(),
                "jpeg": jpeg,
                "pixel_width": pixel_width,
                "pixel_height": pixel_height,
                "timestamp": timestamp,
                "input_seq": input_seq,
            }
        )
        self._published.set()
        self._published = trio.Event()

    def publish_rgb(self, rgb, *, timestamp=None, input_seq=None, point_size=None):
        height, width = rgb.shape[:2]
        self.publish(
            None,
            pixel_width=width,
            pixel_height=height,
            timestamp=timestamp,
            input_seq=input_seq,
            point_size=point_size,
        )
        self.frames[-1]["rgb"] = rgb

    async def wait_for_frames(self, count: int) -> None:
        while len(self.frames) < count:
            await self._published.wait()


def pixels(jpeg: bytes) -> np.ndarray:
    """Decode with Pillow, independently of the encoder under test."""
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def region(picture: np.ndarray, x: int, y: int, half: int = 20) -> np.ndarray:
    return picture[y - half : y + half, x - half : x + half]


def natural_image(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    picture = np.stack(
        [
            128 + 100 * np.sin(columns / 23.0),
            128 + 100 * np.cos(rows / 31.0),
            (rows + columns) % 256,
        ],
        axis=-1,
    )
    noise = np.random.default_rng(7).normal(0, 12, picture.shape)
    return np.clip(picture + noise, 0, 255).astype(np.uint8)


# --- devices ---------------------------------------------------------------------------------


async def test_is_a_device_backend_with_configurations():
    backend = make_backend()
    assert isinstance(backend, DeviceBackend)
    assert backend.name == "simulated"
    configurations = await backend.configurations()
    assert IPHONE in configurations.device_types
    assert "iPad (simulated)" in configurations.device_types
    assert configurations.ios_versions == IOS_VERSIONS


async def test_create_list_delete_restore():
    backend = make_backend()
    phone = await backend.create_device(IPHONE, "18.0")
    assert phone.udid == phone.udid.upper()
    assert uuid.UUID(phone.udid).version == 4
    assert phone.name == f"bridge-{IPHONE}-{phone.udid[:8]}"
    assert (phone.point_width, phone.point_height) == (WIDTH, HEIGHT)
    assert (phone.pixel_width, phone.pixel_height) == (WIDTH, HEIGHT)
    assert (phone.device_type, phone.ios_version, phone.backend) == (IPHONE, "18.0", "simulated")
    tablet = await backend.create_device("iPad (simulated)", "17.5")
    assert tablet.pixel_width > WIDTH
    assert await backend.is_accessible(phone)
    assert backend.statistics().devices == 2

    orphans = await backend.list_orphans(frozenset({tablet.udid}))
    assert orphans == [phone]
    assert await backend.list_orphans(frozenset({phone.udid, tablet.udid})) == []

    await backend.delete_device(phone)
    assert not await backend.is_accessible(phone)
    await backend.delete_device(phone)  # forgetting twice is not an error
    assert await backend.list_orphans(frozenset()) == [tablet]

    assert await backend.restore_device(DeviceInfo.from_record(phone.to_record()))
    assert await backend.is_accessible(phone)
    foreign = DeviceInfo.from_record({**phone.to_record(), "udid": "OTHER", "backend": "ios"})
    assert not await backend.restore_device(foreign)
    assert not await backend.is_accessible(foreign)


@pytest.mark.parametrize(
    ("device_type", "ios_version", "field"),
    [("iPhone 3G", "18.0", "device_type"), (IPHONE, "9.3", "ios_version")],
)
async def test_unknown_type_or_version_is_named(device_type, ios_version, field):
    backend = make_backend()
    with pytest.raises(BadInput) as caught:
        await backend.create_device(device_type, ios_version)
    assert caught.value.field == field
    assert "known:" in caught.value.message
    assert backend.statistics().devices == 0


async def test_unknown_device_is_a_device_error():
    backend = make_backend()
    ghost = await backend.create_device(IPHONE, "18.0")
    await backend.delete_device(ghost)
    with pytest.raises(DeviceError):
        await backend.apply_control(ghost, Tap(1, 2), 1)
    with pytest.raises(DeviceError):
        await backend.screenshot(ghost)
    with pytest.raises(DeviceError):
        await backend.capture(ghost, FakeSink(), fps=10)
    with pytest.raises(DeviceError):
        await backend.stream_logs(ghost, lambda line: None)


async def test_bad_settings_are_named():
    with pytest.raises(BadInput) as caught:
        make_backend(jpeg_quality=0)
    assert caught.value.field == "jpeg_quality"
    with pytest.raises(BadInput) as caught:
        make_backend(log_interval=0)
    assert caught.value.field == "log_interval"
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    with pytest.raises(BadInput) as caught:
        await backend.capture(device, FakeSink(), fps=0)
    assert caught.value.field == "fps"


# --- capture ---------------------------------------------------------------------------------


async def test_capture_publishes_changing_jpegs_at_the_requested_rate(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    sink = FakeSink()
    with trio.fail_after(60):
        async with capturing(backend, device, sink, fps=10):
            await sink.wait_for_frames(1)
            started = sink.frames[0]["at"]
            await trio.sleep(2.05)

    in_window = [frame for frame in sink.frames if frame["at"] <= started + 2.05]
    assert len(in_window) == 21  # at 0.0, 0.1, ..., 2.0
    gaps = np.diff([frame["at"] for frame in in_window])
    assert np.allclose(gaps, 0.1)
    first, second = sink.frames[0], sink.frames[1]
    for frame in (first, second):
        assert frame["jpeg"].startswith(b"\xff\xd8") and frame["jpeg"].endswith(b"\xff\xd9")
        assert (frame["pixel_width"], frame["pixel_height"]) == (WIDTH, HEIGHT)
        assert frame["input_seq"] == 0
        assert isinstance(frame["timestamp"], float)
    a, b = pixels(first["jpeg"]), pixels(second["jpeg"])
    assert a.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(a - b).mean() > 1  # the pattern moves
    statistics = backend.statistics()
    assert statistics.frames_rendered == len(sink.frames)
    assert statistics.mean_render_ms > 0
    assert statistics.active_captures == 0


async def test_capture_renders_nothing_while_nobody_watches(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    sink = FakeSink(viewers=False)
    with trio.fail_after(60):
        async with capturing(backend, device, sink, fps=10):
            await trio.sleep(5)
            assert sink.frames == []
            assert backend.statistics().frames_rendered == 0
            assert backend.statistics().active_captures == 1

            sink.set_viewers(True)
            resumed = trio.current_time()
            await trio.sleep(1.05)
            times = [frame["at"] for frame in sink.frames]
            assert times[0] == resumed
            assert len(times) == 11  # a steady 10 fps, not a burst to catch up on 5 s
            assert np.allclose(np.diff(times), 0.1)

            sink.set_viewers(False)
            published = len(sink.frames)
            await trio.sleep(3)
            assert len(sink.frames) == published


async def test_capture_publishes_pixels_while_no_viewer_wants_jpeg(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    sink = FakeSink(wants_jpeg=False)
    with trio.fail_after(60):
        async with capturing(backend, device, sink, fps=10):
            await sink.wait_for_frames(2)
            sink.wants_jpeg = True
            await sink.wait_for_frames(len(sink.frames) + 2)
            sink.wants_jpeg = False
            await sink.wait_for_frames(len(sink.frames) + 2)

    kinds = ["jpeg" if frame["jpeg"] is not None else "rgb" for frame in sink.frames]
    # Each frame follows what the sink said when the frame was begun.
    assert kinds[:2] == ["rgb", "rgb"] and "jpeg" in kinds and kinds[-1] == "rgb"
    assert kinds.index("jpeg") <= 3
    unencoded = [frame for frame in sink.frames if frame["jpeg"] is None]
    encoded = [frame for frame in sink.frames if frame["jpeg"] is not None]
    for frame in unencoded:
        assert frame["rgb"].shape == (HEIGHT, WIDTH, 3) and frame["rgb"].dtype == np.uint8
        assert (frame["pixel_width"], frame["pixel_height"]) == (WIDTH, HEIGHT)
        assert isinstance(frame["timestamp"], float)
    # The pixels are the picture the JPEG would have shown: the same test card.
    jpeg_pixels = pixels(encoded[0]["jpeg"])
    rgb_pixels = unencoded[0]["rgb"].astype(np.int16)
    static = slice(HEIGHT - 200, HEIGHT)  # below the moving bars, clock and counters
    assert np.abs(jpeg_pixels[static] - rgb_pixels[static]).mean() < 3
    assert backend.statistics().frames_rendered == len(sink.frames)


async def test_tap_marks_the_next_frame_which_carries_its_input_seq(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    sink = FakeSink()
    x, y = 195, 600
    with trio.fail_after(60):
        async with capturing(backend, device, sink, fps=10):
            await sink.wait_for_frames(2)
            await backend.apply_control(device, Tap(x, y), 7)
            tapped_at = len(sink.frames)
            await sink.wait_for_frames(tapped_at + 1)
            await trio.sleep(1.5)  # long enough for the mark to fade out

    before, still_before = pixels(sink.frames[0]["jpeg"]), pixels(sink.frames[1]["jpeg"])
    after = pixels(sink.frames[tapped_at]["jpeg"])
    faded = pixels(sink.frames[-1]["jpeg"])
    assert np.array_equal(region(before, x, y), region(still_before, x, y))
    assert np.abs(region(after, x, y) - region(before, x, y)).mean() > 10
    elsewhere = (60, 500)
    assert np.array_equal(region(after, *elsewhere), region(before, *elsewhere))
    assert np.array_equal(region(faded, x, y), region(before, x, y))
    assert [frame["input_seq"] for frame in sink.frames[:tapped_at]] == [0] * tapped_at
    assert {frame["input_seq"] for frame in sink.frames[tapped_at:]} == {7}
    assert backend.statistics().controls_applied == 1


async def test_swipes_text_and_buttons_are_drawn():
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    blank = pixels((await backend.screenshot(device)).data)
    await backend.apply_control(device, Swipe(60, 420, 320, 700), 1)
    await backend.apply_control(device, Text("hello"), 2)
    await backend.apply_control(device, Button("home"), 3)
    marked = pixels((await backend.screenshot(device)).data)
    swipe_middle = (190, 560)
    text_strip = (60, HEIGHT - 55)
    action_label = (60, 320)
    for place in (swipe_middle, text_strip, action_label):
        assert np.abs(region(marked, *place, half=16) - region(blank, *place, half=16)).mean() > 3


async def test_every_capture_of_one_device_gets_frames(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    fast, slow = FakeSink(), FakeSink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(backend.capture, device, fast, fps=20))
            nursery.start_soon(partial(backend.capture, device, slow, fps=5))
            await trio.sleep(1.01)
            assert backend.statistics().active_captures == 2
            nursery.cancel_scope.cancel()
    assert (len(fast.frames), len(slow.frames)) == (21, 6)


async def test_capture_fails_when_its_device_is_deleted(autojump_clock):
    backend = make_backend()
    device = await backend.create_device(IPHONE, "18.0")
    sink = FakeSink()

    async def delete_after_some_frames():
        await sink.wait_for_frames(3)
        await backend.delete_device(device)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete_after_some_frames)
            with pytest.raises(DeviceError):
                await backend.capture(device, sink, fps=10)
    assert len(sink.frames) == 3


async def test_capture_and_screenshot_in_worker_threads():
    """The production path, on the real clock: work goes to threads under the limiter."""
    limiter = trio.CapacityLimiter(1)
    backend = SimulatedBackend(encode_limiter=limiter)
    device = await backend.create_device(IPHONE, "17.5")
    sink = FakeSink()
    with trio.fail_after(10):
        async with capturing(backend, device, sink):
            await sink.wait_for_frames(3)
        shot = await backend.screenshot(device)
    assert isinstance(shot, Screenshot)
    assert shot.format == "jpeg"
    assert (shot.pixel_width, shot.pixel_height, shot.point_width, shot.point_height) == (
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
    )
    assert pixels(shot.data).shape == (HEIGHT, WIDTH, 3)
    assert decode_jpeg(shot.data).shape == (HEIGHT, WIDTH, 3)
    assert limiter.statistics().borrowed_tokens == 0


# --- logs ------------------------------------------------------------------------------------

COMPACT = re.compile(
    r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) (Db|I |Df|E ) (\S+)\[(\d+):[0-9a-f]+\] (.+)$"
)


def assert_well_formed(line: LogLine) -> None:
    assert isinstance(line, LogLine)
    match = COMPACT.match(line.raw_line)
    assert match, line.raw_line
    assert match.groups()[0] == line.timestamp
    assert (match.group(3), match.group(4), match.group(5)) == (
        line.process,
        line.pid,
        line.message,
    )
    assert line.level in {"info", "warning", "error", "debug"}


async def test_stream_logs_emits_lines_and_controls_to_every_stream(autojump_clock):
    backend = make_backend(log_interval=0.5)
    device = await backend.create_device(IPHONE, "18.0")
    first: list[LogLine] = []
    second: list[LogLine] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.stream_logs, device, first.append)
            nursery.start_soon(backend.stream_logs, device, second.append)
            await trio.sleep(2.05)
            assert len(first) == len(second) == 5  # at 0, 0.5, 1, 1.5 and 2 s
            await backend.apply_control(device, Tap(10, 20), 4)
            assert backend.statistics().active_log_streams == 2
            nursery.cancel_scope.cancel()
    assert backend.statistics().active_log_streams == 0
    for line in first + second:
        assert_well_formed(line)
    assert first[-1] == second[-1]
    assert "tap at (10, 20)" in first[-1].message
    assert "input_seq=4" in first[-1].message
    assert first[-1].to_message()["type"] == "log"
    await backend.apply_control(device, Tap(1, 1), 5)  # nobody listens any more: no error


def test_log_chatter_cycles_through_every_level():
    levels = [_LogScript.level_for(count) for count in range(46)]
    assert set(levels) == {"info", "debug", "warning", "error"}
    assert levels.count("info") > levels.count("error")
    script = _LogScript()
    lines = [script.next_line(1_700_000_000.25) for _ in range(23)]
    for line in lines:
        assert_well_formed(line)
    assert {line.level for line in lines} == {"info", "debug", "warning", "error"}
    assert len({line.process for line in lines}) > 3


# --- JPEG ------------------------------------------------------------------------------------


def test_higher_quality_gives_bigger_and_truer_jpegs():
    picture = natural_image()
    sizes, errors = [], []
    for quality in (10, 40, 80, 95):
        jpeg = JpegEncoder(WIDTH, HEIGHT, quality).encode(picture)
        decoded = pixels(jpeg)
        assert decoded.shape == picture.shape
        sizes.append(len(jpeg))
        errors.append(np.abs(decoded - picture).mean())
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert errors == sorted(errors, reverse=True)
    assert [qscale_for_quality(q) for q in (1, 50, 100)] == [31, 8, 1]


def test_one_encoder_makes_many_complete_jpegs():
    encoder = JpegEncoder(WIDTH, HEIGHT)
    picture = natural_image()
    for shift in range(5):
        jpeg = encoder.encode(np.roll(picture, shift * 10, axis=1))
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        ours, pillows = decode_jpeg(jpeg).astype(np.int16), pixels(jpeg)
        assert ours.shape == pillows.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(ours - pillows).mean() < 3  # two decoders agree up to chroma upsampling


def test_encoder_names_bad_input():
    with pytest.raises(BadInput) as caught:
        JpegEncoder(WIDTH, HEIGHT, quality=101)
    assert caught.value.field == "quality"
    with pytest.raises(BadInput) as caught:
        JpegEncoder(0, HEIGHT)
    assert caught.value.field == "width"
    encoder = JpegEncoder(WIDTH, HEIGHT)
    with pytest.raises(BadInput) as caught:
        encoder.encode(np.zeros((HEIGHT, WIDTH), np.uint8))
    assert caught.value.field == "rgb"
    with pytest.raises(ValueError):
        decode_jpeg(b"not a jpeg")
