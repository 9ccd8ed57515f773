"""Test doubles shared by the test modules: real backends with faults injected, and
fake ``xcrun`` and ``idb`` executables for the ios backend.

The fake tools are small Python scripts that keep a simulator list in a JSON file,
record every command they receive, and can be told to hang, crash, ignore
SIGTERM, spawn a helper of their own, or print garbage.
"""

from __future__ import annotations

import functools
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio
from PIL import Image

from bridge_actors import DeviceBackend, DeviceInfo, Frame, FrameSink, Settings
from bridge_actors._backends.processes import ProcessCensus
from bridge_actors._backends.simulated import SimulatedBackend, run_on_event_loop


def simulated(*, inline: bool = True, **kwargs) -> SimulatedBackend:
    """The real simulated backend; ``inline`` encodes on the event loop so that
    MockClock's virtual time stays exact (no jumps while a worker thread runs)."""
    return SimulatedBackend(
        encode_limiter=trio.CapacityLimiter(2),
        run_in_worker=run_on_event_loop if inline else trio.to_thread.run_sync,
        **kwargs,
    )


def settings(tmp_path, **overrides) -> Settings:
    values = {
        "state_dir": tmp_path / "state",
        "memory_check_interval": 3600.0,
        "connection_cleanup_interval": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


class SocketLikeSink:
    """A handoff Sink shaped like a socket: takes items whole until it is ``full``; what
    it could not take is finished by the viewer's task once ``drained`` is set."""

    def __init__(self, *, shielded: bool = False) -> None:
        self.taken: list[Any] = []
        self.shielded = shielded
        self.full = False
        self.left_over = False
        self.drained = trio.Event()
        self.finishing = trio.Event()

    def ready(self) -> bool:
        return not self.left_over

    def put(self, item: Any) -> bool:
        self.taken.append(item)
        self.left_over = self.full
        return not self.full

    async def finish(self) -> None:
        self.finishing.set()
        with trio.CancelScope(shield=self.shielded):  # as a socket finishes half a message
            await self.drained.wait()
        self.left_over = False


class CrashingBackend(SimulatedBackend):
    """The simulated device, whose capture crashes after ``frames_per_run`` frames
    for the first ``crashes`` runs (forever when ``crashes`` is None)."""

    def __init__(self, *, frames_per_run: int, crashes: int | None, **kwargs) -> None:
        super().__init__(
            encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop, **kwargs
        )
        self.frames_per_run = frames_per_run
        self.crashes = crashes
        self.runs = 0

    async def capture(self, device: DeviceInfo, sink: FrameSink, *, fps: int) -> None:
        self.runs += 1
        if self.crashes is not None and self.runs > self.crashes:
            await super().capture(device, sink, fps=fps)
            return
        counting = _CountingSink(sink, self.frames_per_run)
        try:
            await super().capture(device, counting, fps=fps)
        except _Enough:
            raise RuntimeError(f"capture crashed on run {self.runs}") from None


class _Enough(Exception):
    pass


class _CountingSink:
    def __init__(self, inner: FrameSink, limit: int) -> None:
        self._inner = inner
        self._left = limit

    @property
    def applied_input_seq(self) -> int:
        return self._inner.applied_input_seq

    async def wait_for_viewers(self) -> None:
        await self._inner.wait_for_viewers()

    @property
    def wants_jpeg(self) -> bool:
        return self._inner.wants_jpeg

    def publish(self, jpeg, **kwargs) -> None:
        self._count()
        self._inner.publish(jpeg, **kwargs)

    def publish_rgb(self, rgb, **kwargs) -> None:
        self._count()
        self._inner.publish_rgb(rgb, **kwargs)

    def _count(self) -> None:
        if self._left <= 0:
            raise _Enough
        self._left -= 1


# --- fake xcrun and idb ------------------------------------------------------------------------

IPHONE = "com.apple.CoreSimulator.SimDeviceType.iPhone-15"
IPAD = "com.apple.CoreSimulator.SimDeviceType.iPad-Air-5th-generation"
WATCH = "com.apple.CoreSimulator.SimDeviceType.Apple-Watch-Series-9-45mm"
IOS_17 = "com.apple.CoreSimulator.SimRuntime.iOS-17-2"
IOS_16 = "com.apple.CoreSimulator.SimRuntime.iOS-16-4"
USER_UDID = "11111111-1111-1111-1111-111111111111"

DEVICE_TYPES = {
    "devicetypes": [
        {"name": "iPhone 15", "identifier": IPHONE, "productFamily": "iPhone"},
        {"name": "iPad Air (5th generation)", "identifier": IPAD, "productFamily": "iPad"},
        {
            "name": "Apple Watch Series 9 (45mm)",
            "identifier": WATCH,
            "productFamily": "Apple Watch",
        },
    ]
}
RUNTIMES = {
    "runtimes": [
        {
            "name": "iOS 17.2",
            "version": "17.2",
            "identifier": IOS_17,
            "platform": "iOS",
            "isAvailable": True,
            "supportedDeviceTypes": [{"identifier": IPHONE}, {"identifier": IPAD}],
        },
        {
            "name": "iOS 16.4",
            "version": "16.4",
            "identifier": IOS_16,
            "platform": "iOS",
            "isAvailable": True,
            "supportedDeviceTypes": [{"identifier": IPAD}],
        },
        {"name": "iOS 15.0", "version": "15.0", "identifier": "old", "isAvailable": False},
        {"name": "watchOS 10.2", "version": "10.2", "identifier": "w", "platform": "watchOS"},
    ]
}
SCREEN = {"width": 1179, "height": 2556, "density": 3.0, "width_points": 393, "height_points": 852}

FAKE_TOOL = r'''#!{python} -S
"""A fake xcrun or idb (by its file name), steered by behaviour.json next to it."""
import json, os, shutil, signal, subprocess, sys, time, uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.basename(__file__)
ARGS = sys.argv[1:]


def path(name):
    return os.path.join(HERE, name)


def append(name, text):
    with open(path(name), "a") as f:
        f.write(text + "\n")


def load(name, default=None):
    try:
        with open(path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def save(name, value):
    with open(path(name + ".tmp"), "w") as f:
        json.dump(value, f)
    os.replace(path(name + ".tmp"), path(name))


append("calls.log", json.dumps([TOOL, *ARGS]))
append("pids.log", str(os.getpid()))
BEHAVIOUR = load("behaviour.json", {})
STATE = load("state.json")


def hang():
    if BEHAVIOUR.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if BEHAVIOUR.get("helper"):
        helper = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(60)"])
        append("helpers.log", str(helper.pid))
    append("hung.log", str(os.getpid()))
    time.sleep(60)  # far longer than any test waits: it is always cancelled or timed out
    sys.exit(0)


def fail(message, status=1):
    sys.stderr.write(message + "\n")
    sys.exit(status)


def devices():
    return [d for ds in STATE["devices"].values() for d in ds]


def find(udid):
    for d in devices():
        if d["udid"] == udid:
            return d
    fail("Invalid device: " + udid, 148)


def xcrun():
    if ARGS[:1] != ["simctl"]:
        fail("xcrun: error: unknown tool")
    command, rest = ARGS[1], ARGS[2:]
    if command == "list":
        if BEHAVIOUR.get("list") == "fail":
            fail("xcrun: error: unable to find utility \"simctl\"", 72)
        if BEHAVIOUR.get("list") == "garbage":
            print("this is not json")
            return
        listing = STATE[rest[0]]
        if rest[0] == "devices":
            for d in devices():
                d["dataPath"] = path("data/" + d["udid"])
                os.makedirs(d["dataPath"], exist_ok=True)
        print(json.dumps({rest[0]: listing}))
    elif command == "create":
        name, device_type, runtime = rest
        udid = str(uuid.uuid4()).upper()
        STATE["devices"].setdefault(runtime, []).append(
            {"udid": udid, "name": name, "state": "Shutdown", "deviceTypeIdentifier": device_type}
        )
        save("state.json", STATE)
        print(udid)
    elif command == "boot":
        device = find(rest[0])
        if BEHAVIOUR.get("boot") == "fail":
            fail("Unable to boot device: the runtime is damaged", 149)
        if device["state"] == "Booted":
            fail("Unable to boot device in current state: Booted", 149)
        if BEHAVIOUR.get("boot") == "hang":
            device["state"] = "Booting"
            save("state.json", STATE)
            hang()
        device["state"] = "Booted"
        save("state.json", STATE)
    elif command == "shutdown":
        device = find(rest[0])
        if device["state"] == "Shutdown":
            fail("Unable to shutdown device in current state: Shutdown", 149)
        device["state"] = "Shutdown"
        save("state.json", STATE)
    elif command == "delete":
        find(rest[0])
        if BEHAVIOUR.get("delete") == "fail":
            fail("Unable to delete device: the device is in use", 149)
        for runtime, ds in STATE["devices"].items():
            STATE["devices"][runtime] = [d for d in ds if d["udid"] != rest[0]]
        save("state.json", STATE)
    elif command == "io":
        udid, what, kind, target = rest
        assert (what, kind) == ("screenshot", "--type=jpeg"), rest
        how = BEHAVIOUR.get("screenshot", "ok")
        if how == "ok":
            shutil.copy(path("shot.jpg"), target)
            return
        with open(target, "wb") as f:
            f.write(b"\xff\xd8 half a picture")
        if how == "hang":
            hang()
        fail("Error: the display is not ready", 2)
    elif command == "spawn":
        find(rest[0])
        if rest[1:3] == ["log", "stream"]:
            sys.stdout.write(open(path("device.log")).read())
            sys.stdout.flush()
            if BEHAVIOUR.get("logs") == "hang":
                hang()
            fail("log: stream ended", 3)
        elif rest[1:3] == ["log", "show"]:
            sys.stdout.write(open(path("device.log")).read())
        elif rest[1:3] == ["log", "erase"]:
            print("Deleted selected logs")
        elif rest[1:] == ["ps", "aux"]:
            print("USER PID %CPU %MEM VSZ RSS TT STAT STARTED TIME COMMAND")
            print("mobile 62 1.5 0.8 1 2 ?? S 10:00 0:01.00 /System/SpringBoard.app/SpringBoard -x")
        else:
            fail("spawn: unknown " + " ".join(rest[1:]))
    elif command in APP_COMMANDS:
        app_command(command, rest)
    else:
        fail("unknown simctl command " + command)


APP_COMMANDS = (
    "install", "listapps", "launch", "terminate", "uninstall", "openurl", "location",
    "device", "push", "addmedia", "get_app_container",
)
SYSTEM_APP = {"CFBundleIdentifier": "com.apple.mobilesafari", "CFBundleDisplayName": "Safari",
              "ApplicationType": "System", "Path": "/Applications/MobileSafari.app"}


def openstep(value):
    """The old text plist format simctl listapps prints."""
    if isinstance(value, dict):
        return "{" + "".join('"%s" = %s;' % (k, openstep(v)) for k, v in value.items()) + "}"
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


def app_command(command, rest):
    import plistlib
    device = find(rest[0])
    if BEHAVIOUR.get(command) == "fail":
        fail("simctl %s: failed on purpose" % command, 4)
    if BEHAVIOUR.get(command) == "hang":
        hang()
    apps = STATE.setdefault("apps", {}).setdefault(rest[0], {})
    if command == "install":
        info = plistlib.load(open(os.path.join(rest[1], "Info.plist"), "rb"))
        apps[info["CFBundleIdentifier"]] = {
            "CFBundleIdentifier": info["CFBundleIdentifier"],
            "CFBundleDisplayName": info.get("CFBundleDisplayName", info.get("CFBundleName", "")),
            "CFBundleShortVersionString": info.get("CFBundleShortVersionString", ""),
            "ApplicationType": "User",
            "Path": "/data/Containers/Bundle/Application/X/" + os.path.basename(rest[1]),
        }
        append("installed.log", json.dumps(sorted(os.listdir(rest[1]))))
        save("state.json", STATE)
    elif command == "listapps":
        print(openstep({SYSTEM_APP["CFBundleIdentifier"]: SYSTEM_APP, **apps}))
    elif command in ("launch", "terminate", "uninstall", "get_app_container"):
        if rest[1] not in apps and rest[1] != SYSTEM_APP["CFBundleIdentifier"]:
            fail("The application %s is not installed" % rest[1], 22)
        if command == "launch":
            print("%s: 4242" % rest[1])
        elif command == "uninstall":
            del apps[rest[1]]
            save("state.json", STATE)
        elif command == "get_app_container":
            container = path("containers/" + rest[1])
            os.makedirs(container, exist_ok=True)
            print(container)
    elif command == "push":
        shutil.copy(rest[2], path("pushed-%d.json" % len(os.listdir(HERE))))
    elif command == "addmedia":
        for name in rest[1:]:
            head = open(name, "rb").read(16).hex()
            append("media.log", json.dumps([os.path.basename(name), head]))


def idb():
    if ARGS[0] == "describe":
        if BEHAVIOUR.get("describe") == "fail":
            fail("no companion")
        print(json.dumps({"udid": ARGS[2], "screen_dimensions": STATE["screen"]}))
    elif ARGS[0] == "ui":
        how = BEHAVIOUR.get("ui", "ok")
        if how == "hang":
            hang()
        if how == "fail":
            fail("idb: target is not booted")
    elif ARGS[0] == "video-stream" and ARGS[ARGS.index("--format") + 1] == "h264":
        h264_stream()
    elif ARGS[0] == "video-stream":
        how = BEHAVIOUR.get("stream", "frames")
        if how == "exit":
            fail("idb: video streaming is not available")
        if how == "silent":
            hang()
        out = sys.stdout.buffer
        out.write(b"\x00garbage before the first frame\xff\xff")
        for n in range(BEHAVIOUR.get("frames", 3)):
            jpeg = open(path("frame%d.jpg" % n), "rb").read()
            part = b"--BoundaryString\r\nContent-Type: image/jpeg\r\n"
            part += b"Content-Length: %d\r\n\r\n" % len(jpeg)
            data = part + jpeg + b"\r\n"
            for start in range(0, len(data), 700):
                out.write(data[start:start + 700])
                out.flush()
        while how == "loop":
            for n in range(BEHAVIOUR.get("frames", 3)):
                jpeg = open(path("frame%d.jpg" % n), "rb").read()
                out.write(b"--BoundaryString\r\nContent-Type: image/jpeg\r\n")
                out.write(b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                out.flush()
                time.sleep(1 / int(ARGS[ARGS.index("--fps") + 1]))
        if how == "crash":
            out.write(b"\xff\xd8\xff\xe0 a frame cut short")
            out.flush()
            fail("idb: companion connection lost")
        hang()
    else:
        fail("unknown idb command")


def h264_stream():
    """stream.h264 (access units of the sizes in stream.json) in a loop, one per 1/fps."""
    append("h264.log", str(os.getpid()))
    how = BEHAVIOUR.get("h264", "loop")
    if how == "exit":
        fail("idb: h264 streaming is not available")
    if how == "silent":
        hang()
    data = open(path("stream.h264"), "rb").read()
    sizes = load("stream.json")
    period = 1 / int(ARGS[ARGS.index("--fps") + 1])
    out = sys.stdout.buffer
    out.write(b"\x00\x00")  # stray zeros before the first start code, as a pipe may carry
    while True:
        offset = 0
        for size in sizes:
            out.write(data[offset:offset + size])
            out.flush()
            offset += size
            time.sleep(period)


(xcrun if TOOL == "xcrun" else idb)()
'''


@functools.cache
def h264_clip(width: int = 64, height: int = 128, frames: int = 30, gop: int = 10) -> tuple:
    """Access units (Annex B) of a small moving picture from libx264, SPS/PPS on every IDR.

    Deterministic: the same pictures and the same single-threaded x264 settings give the
    same bytes, made once per test process.
    """
    import av

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.thread_count = 1
    codec.options = {
        "preset": "ultrafast",
        "profile": "baseline",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"
        ":annexb=1:threads=1",
    }
    codec.open()
    units = []
    for n in range(frames):
        rows = (np.arange(height)[:, None] + np.arange(width)[None, :] + 4 * n) % 256
        picture = np.stack([rows, rows[::-1], np.full_like(rows, 8 * n % 256)], axis=-1)
        frame = av.VideoFrame.from_ndarray(picture.astype(np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = n
        units += [bytes(packet) for packet in codec.encode(frame)]
    units += [bytes(packet) for packet in codec.encode(None)]
    assert len(units) == frames, len(units)
    return tuple(units)


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


class FakeTools:
    """The fake ``xcrun`` and ``idb``, their simulator list, and what they were asked."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        # The children of the tools run here: every backend and command of a test shares it.
        self.census = ProcessCensus()
        directory.mkdir()
        script = FAKE_TOOL.replace("{python}", sys.executable)
        for tool in ("xcrun", "idb"):
            (directory / tool).write_text(script)
            (directory / tool).chmod(0o755)
        self.xcrun = str(directory / "xcrun")
        self.idb = str(directory / "idb")
        self.frames = [make_jpeg(40, 30, 1), make_jpeg(40, 30, 2), make_jpeg(30, 40, 3)]
        for n, jpeg in enumerate(self.frames):
            (directory / f"frame{n}.jpg").write_bytes(jpeg)
        self.shot = make_jpeg(50, 20, 4)
        (directory / "shot.jpg").write_bytes(self.shot)
        (directory / "device.log").write_text(
            "Filtering the log data using \"process == 'SpringBoard'\"\n"
            "Timestamp               Ty Process[PID:TID]\n"
            "2024-01-15 10:23:45.123 Df SpringBoard[62:1a2b] [com.apple.sb:Icon] Icon saved\n"
            "2024-01-15 10:23:45.200 E  Google Chrome Helper[901:ff] failed: -1\n"
            "    continued on the next line\n"
        )
        self.state = {
            "devicetypes": DEVICE_TYPES["devicetypes"],
            "runtimes": RUNTIMES["runtimes"],
            "devices": {IOS_17: []},
            "screen": SCREEN,
        }
        self.save_state()
        self.behave()

    def add_h264_stream(self, access_units: tuple[bytes, ...] | None = None) -> tuple:
        """Give the fake idb an H.264 stream to serve (``h264_clip()`` by default)."""
        access_units = h264_clip() if access_units is None else access_units
        (self.dir / "stream.h264").write_bytes(b"".join(access_units))
        (self.dir / "stream.json").write_text(json.dumps([len(unit) for unit in access_units]))
        return access_units

    def h264_pids(self) -> list[int]:
        """Every fake ``idb video-stream --format h264`` started, in order."""
        return self.pids("h264.log")

    def save_state(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(self.state))

    def load_state(self) -> dict:
        self.state = json.loads((self.dir / "state.json").read_text())
        return self.state

    def add_simulator(self, udid: str, name: str, state: str, device_type: str = IPHONE) -> None:
        self.state["devices"][IOS_17].append(
            {"udid": udid, "name": name, "state": state, "deviceTypeIdentifier": device_type}
        )
        self.save_state()

    def simulators(self) -> dict[str, dict]:
        return {d["udid"]: d for ds in self.load_state()["devices"].values() for d in ds}

    def behave(self, **behaviour) -> None:
        (self.dir / "behaviour.json").write_text(json.dumps(behaviour))

    def _lines(self, name: str) -> list[str]:
        try:
            return (self.dir / name).read_text().splitlines()
        except FileNotFoundError:
            return []

    def calls(self, tool: str | None = None) -> list[list[str]]:
        calls = [json.loads(line) for line in self._lines("calls.log")]
        return [call[1:] for call in calls if tool is None or call[0] == tool]

    def pids(self, name: str = "pids.log") -> list[int]:
        return [int(line) for line in self._lines(name)]

    async def wait_for_hung_process(self) -> int:
        """The pid of the fake that reached its hang; only a file tells, so poll it."""
        while not self.pids("hung.log"):  # noqa: ASYNC110
            await trio.sleep(0.01)
        return self.pids("hung.log")[0]


def gone(pid: int, *, zombie_ok: bool = False) -> bool:
    """Our own children must be reaped; a helper's reaper is init, which may lag."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return zombie_ok and status == psutil.STATUS_ZOMBIE


def helpers_gone(tools: FakeTools, within: float = 2.0) -> bool:
    """Helpers the fakes spawned die by SIGKILL to their group, which lands a moment later."""
    deadline = time.monotonic() + within
    while not all(gone(pid, zombie_ok=True) for pid in tools.pids("helpers.log")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


SIMULATED_DEVICE = "iPhone 15 (simulated)"
SIMULATED_VERSION = "18.0"


def device_record(udid: str, /, **changes: object) -> dict:
    """A simulated iPhone's device record as a session file holds it; ``changes`` replace
    or add fields."""
    record = {
        "udid": udid,
        "name": f"bridge-{SIMULATED_DEVICE}-{udid[:8]}",
        "device_type": SIMULATED_DEVICE,
        "ios_version": SIMULATED_VERSION,
        "point_width": 390,
        "point_height": 844,
        "pixel_width": 390,
        "pixel_height": 844,
        "backend": "simulated",
        "source": "",
    }
    record.update(changes)
    return record


# An iPhone-sized screen, one pixel per point.
_FRAME_FIELDS = {
    "timestamp": 1_700_000_000.25,
    "captured_at": 0.0,
    "jpeg": b"\xff\xd8jpeg",
    "pixel_width": 390,
    "pixel_height": 844,
    "point_width": 390,
    "point_height": 844,
    "input_seq": 0,
}


def make_frame(seq: int = 1, **fields: Any) -> Frame:
    """A frame of an iPhone-sized screen; name only the fields a test looks at."""
    return Frame(seq=seq, **{**_FRAME_FIELDS, **fields})


class RecordingSink:
    """A FrameSink that keeps what it is given, with the trio time of each publish.

    ``wants_jpeg`` is what a capture is told; with it False, a capture that can
    publishes RGB pixels, kept here in place of the JPEG.
    """

    def __init__(self, input_seq: int = 0, *, wants_jpeg: bool = True) -> None:
        self.input_seq = input_seq
        self.wants_jpeg = wants_jpeg
        self.frames: list[tuple[float, bytes, dict]] = []
        self._changed = trio.Event()

    @property
    def applied_input_seq(self) -> int:
        return self.input_seq

    async def wait_for_viewers(self) -> None:
        await trio.lowlevel.checkpoint()

    def publish(self, jpeg: bytes, **kwargs) -> None:
        self.frames.append((trio.current_time(), jpeg, kwargs))
        self._changed.set()
        self._changed = trio.Event()

    def publish_rgb(self, rgb, **kwargs) -> None:
        self.publish(rgb, **kwargs)

    async def wait_for(self, count: int) -> None:
        while len(self.frames) < count:
            await self._changed.wait()


@asynccontextmanager
async def capturing(
    backend: DeviceBackend, device: DeviceInfo, sink: FrameSink, fps: int = 30
) -> AsyncIterator[None]:
    """Run a capture into ``sink`` while the block runs; cancel it when the block ends."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: backend.capture(device, sink, fps=fps))
        yield
        nursery.cancel_scope.cancel()


async def capture_until(
    backend: DeviceBackend, device: DeviceInfo, sink: RecordingSink, count: int, fps: int = 30
) -> None:
    """Run a capture until ``count`` frames are published, then cancel it."""
    async with capturing(backend, device, sink, fps):
        await sink.wait_for(count)
