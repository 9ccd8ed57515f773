"""The ios backend against fake ``xcrun`` and ``idb`` executables written by the tests.

The fakes are small Python scripts that keep a simulator list in a JSON file,
record every command they receive, and can be told to hang, crash, ignore
SIGTERM, spawn a helper of their own, or print garbage. After every test no
child process may be left running and no temporary file may be left behind.
"""

from __future__ import annotations

import pytest
import trio
from fakes import (
    IOS_17,
    IPAD,
    IPHONE,
    USER_UDID,
    FakeTools,
    RecordingSink,
    capture_until,
    gone,
    helpers_gone,
)

from bridge_actors import (
    BadInput,
    Button,
    DeviceBackend,
    DeviceError,
    DeviceInfo,
    Key,
    Swipe,
    Tap,
    Text,
)
from bridge_actors._backends import processes as _subprocess
from bridge_actors._backends.ios import (
    IosBackend,
    control_argv,
    is_ours,
)
from bridge_actors._backends.processes import (
    CommandTimeout,
    ProcessCensus,
    open_child,
    run_command,
)


def ios(tools: FakeTools, **kwargs) -> IosBackend:
    options = {
        "command_timeout": 3.0,
        "kill_grace": 0.3,
        "xcrun": tools.xcrun,
        "idb": tools.idb,
        "census": tools.census,
    }
    options.update(kwargs)
    return IosBackend(encode_limiter=trio.CapacityLimiter(1), **options)


def our_device(tools: FakeTools, state: str = "Booted") -> DeviceInfo:
    udid = "22222222-2222-2222-2222-222222222222"
    name = "bridge-iPhone 15-0a1b2c3d"
    tools.add_simulator(udid, name, state)
    return DeviceInfo(udid, name, "iPhone 15", "17.2", 393, 852, 1179, 2556, "ios")


# --- controls, as idb commands (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "argv"),
    [
        (Tap(10, 20), ["ui", "tap", "10", "20"]),
        (Tap(-5, 9000), ["ui", "tap", "0", "851"]),
        (Swipe(1, 2, 3, 4, 0.5), ["ui", "swipe", "1", "2", "3", "4", "--duration", "0.5"]),
        (Text("-rf / ok"), ["ui", "text", "--udid", "U", "--", "-rf / ok"]),
        (Button("side-button"), ["ui", "button", "SIDE_BUTTON"]),
        (Key("Enter"), ["ui", "key", "40"]),
        (Key("ArrowUp", 0.25), ["ui", "key", "82", "--duration", "0.25"]),
        (Key("a"), ["ui", "key", "4"]),
        (Key("digit0"), ["ui", "key", "39"]),
        (Key("9"), ["ui", "key", "9"]),  # a number is a HID usage code: 9 is the F key
        (Key("Digit9"), ["ui", "key", "38"]),
        (Key("100"), ["ui", "key", "100"]),  # a key without a name here, by its code
        (Key("A"), ["ui", "text", "--udid", "U", "--", "A"]),
        (Key("42"), ["ui", "key", "42"]),
    ],
)
def test_control_events_become_idb_commands(event, argv):
    got = control_argv("idb", "U", event, point_size=(393, 852))
    if "--" not in argv:
        argv = [*argv, "--udid", "U"]
    assert got == ["idb", *argv]


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(BadInput) as error:
        control_argv("idb", "U", Key("Hyper"))
    assert error.value.field == "key"


# --- subprocess supervision --------------------------------------------------------------------


async def test_a_command_that_hangs_is_killed_and_reaped(tools):
    tools.behave(ui="hang", ignore_term=True, helper=True)
    with trio.fail_after(5), pytest.raises(CommandTimeout, match="idb ui tap"):
        await run_command(
            [tools.idb, "ui", "tap", "1", "2"], timeout=1.0, census=tools.census, grace=0.2
        )
    # It hung ignoring SIGTERM, with a helper of its own; both were killed.
    assert tools.pids("hung.log") and tools.pids("helpers.log")
    assert all(gone(pid) for pid in tools.pids())
    assert helpers_gone(tools)
    assert tools.census.statistics().killed >= 1


async def test_an_exception_from_the_body_of_open_child_comes_out_unwrapped(tools):
    tools.behave(logs="hang")
    with trio.fail_after(5), pytest.raises(KeyError):
        async with open_child(
            [tools.xcrun, "simctl", "spawn", "U", "log"], census=tools.census, grace=0.2
        ) as child:
            await child.stdout.receive_some(10)
            raise KeyError("boom")


async def test_a_missing_program_is_named():
    with pytest.raises(_subprocess.ToolNotFound, match="'no-such-tool-here' not found on PATH"):
        await run_command(["no-such-tool-here"], timeout=1, census=ProcessCensus())


# --- start-up check ----------------------------------------------------------------------------


async def test_check_passes_when_the_tools_work(tools):
    backend = ios(tools)
    assert isinstance(backend, DeviceBackend)
    await backend.check()


async def test_check_names_a_missing_xcrun(tools, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DeviceError, match="ios backend: 'xcrun' not found on PATH"):
        await ios(tools, xcrun="xcrun").check()


async def test_check_names_a_missing_idb(tools):
    with pytest.raises(DeviceError, match="ios backend: 'idb-not-installed' not found on PATH"):
        await ios(tools, idb="idb-not-installed").check()


async def test_check_reports_a_broken_simctl(tools):
    tools.behave(list="fail")
    with pytest.raises(DeviceError, match=r'ios backend: `xcrun simctl` does not work.*"simctl"'):
        await ios(tools).check()


# --- lifecycle ---------------------------------------------------------------------------------


async def test_configurations_come_from_simctl(tools):
    configurations = await ios(tools).configurations()
    assert configurations.device_types == ("iPhone 15", "iPad Air (5th generation)")
    assert configurations.ios_versions == ("17.2", "16.4")


async def test_garbage_from_simctl_is_a_clear_error(tools):
    tools.behave(list="garbage")
    with pytest.raises(DeviceError, match="did not print JSON"):
        await ios(tools).configurations()


async def test_create_makes_boots_and_measures_a_named_simulator(tools):
    backend = ios(tools)
    with trio.fail_after(10):
        device = await backend.create_device("iPhone 15", "17.2")
    assert device.name.startswith("bridge-iPhone 15-") and is_ours(device.name)
    assert (device.device_type, device.ios_version, device.backend) == ("iPhone 15", "17.2", "ios")
    assert (device.point_width, device.point_height) == (393, 852)
    assert (device.pixel_width, device.pixel_height) == (1179, 2556)
    assert tools.simulators()[device.udid]["state"] == "Booted"
    assert await backend.device_state(device) == "Booted"
    assert await backend.is_accessible(device)
    assert [call[:2] for call in tools.calls()] == [
        ["simctl", "list"],
        ["simctl", "list"],
        ["simctl", "create"],
        ["simctl", "boot"],
        ["describe", "--udid"],
        ["simctl", "list"],
    ]
    assert tools.calls()[2] == ["simctl", "create", device.name, IPHONE, IOS_17]


@pytest.mark.parametrize(
    ("device_type", "version", "field"),
    [
        ("iPhone 99", "17.2", "device_type"),
        ("Apple Watch Series 9 (45mm)", "17.2", "device_type"),
        ("iPhone 15", "12.0", "ios_version"),
        ("iPhone 15", "16.4", "device_type"),  # that runtime cannot run that device
    ],
)
async def test_create_refuses_what_this_mac_does_not_offer(tools, device_type, version, field):
    with pytest.raises(BadInput) as error:
        await ios(tools).create_device(device_type, version)
    assert error.value.field == field
    assert not any(call[:2] == ["simctl", "create"] for call in tools.calls())


async def test_create_returns_in_time_while_the_simulator_is_still_booting(tools):
    tools.behave(boot="hang")
    backend = ios(tools, create_budget=2.0)
    with trio.fail_after(2.0 + 2.0):  # the budget, plus stopping `simctl boot`, plus slack
        device = await backend.create_device("iPhone 15", "17.2")
    assert await backend.device_state(device) == "Booting"
    assert not await backend.is_accessible(device)
    assert gone(tools.pids("hung.log")[0])


async def test_create_deletes_the_simulator_when_boot_fails(tools):
    tools.behave(boot="fail")
    with pytest.raises(DeviceError, match=r"cannot boot simulator .*runtime is damaged"):
        await ios(tools).create_device("iPhone 15", "17.2")
    assert tools.simulators() == {}
    assert ["simctl", "delete"] in [call[:2] for call in tools.calls()]


async def test_create_falls_back_to_the_usual_screen_when_idb_cannot_say(tools):
    tools.behave(describe="fail")
    device = await ios(tools).create_device("iPad Air (5th generation)", "17.2")
    assert (device.point_width, device.point_height) == (820, 1180)


async def test_delete_removes_our_simulator(tools):
    device = our_device(tools)
    await ios(tools).delete_device(device)
    assert device.udid not in tools.simulators()
    assert [call[:2] for call in tools.calls()][-2:] == [
        ["simctl", "shutdown"],
        ["simctl", "delete"],
    ]


async def test_delete_never_touches_a_users_simulator(tools):
    tools.add_simulator(USER_UDID, "iPhone 15", "Booted")
    # Even a record claiming our prefix is checked against the simulator's name now.
    record = DeviceInfo(
        USER_UDID, "bridge-iPhone 15-0a1b2c3d", "iPhone 15", "17.2", 1, 1, 1, 1, "ios"
    )
    await ios(tools).delete_device(record)
    assert tools.simulators()[USER_UDID]["state"] == "Booted"
    assert [call[:2] for call in tools.calls()] == [["simctl", "list"]]


async def test_deleting_a_simulator_that_is_gone_is_quiet(tools):
    udid = "33333333-0000-0000-0000-000000000000"
    record = DeviceInfo(udid, "bridge-x-00000000", "x", "1", 1, 1, 1, 1, "ios")
    await ios(tools).delete_device(record)


async def test_orphan_recovery_adopts_only_our_booted_unowned_simulators(tools):
    def udid(digit: str) -> str:
        return f"{digit * 8}-0000-0000-0000-000000000000"

    tools.add_simulator(USER_UDID, "iPhone 15", "Booted")
    tools.add_simulator(udid("4"), "bridge-mine", "Booted")
    tools.add_simulator(udid("5"), "bridge-iPhone 15-aaaaaaaa", "Booted")
    tools.add_simulator(udid("6"), "bridge-iPhone 15-bbbbbbbb", "Booted")
    tools.add_simulator(udid("7"), "bridge-iPad Air (5th generation)-cccccccc", "Shutdown", IPAD)
    [orphan] = await ios(tools).list_orphans(frozenset({udid("6")}))
    assert orphan.udid == udid("5")
    assert (orphan.device_type, orphan.ios_version, orphan.point_width) == (
        "iPhone 15",
        "17.2",
        393,
    )
    assert orphan.name == "bridge-iPhone 15-aaaaaaaa"


async def test_restore_boots_our_simulator_and_refuses_others(tools):
    backend = ios(tools)
    device = our_device(tools, state="Shutdown")
    assert await backend.restore_device(device)
    assert tools.simulators()[device.udid]["state"] == "Booted"
    tools.add_simulator(USER_UDID, "iPhone 15", "Shutdown")
    user = DeviceInfo(
        USER_UDID, "bridge-iPhone 15-0a1b2c3d", "iPhone 15", "17.2", 1, 1, 1, 1, "ios"
    )
    assert not await backend.restore_device(user)
    assert tools.simulators()[USER_UDID]["state"] == "Shutdown"
    await backend.delete_device(device)
    assert not await backend.restore_device(device)


# --- controls ----------------------------------------------------------------------------------


async def test_controls_arrive_in_order_with_their_arguments(tools):
    backend = ios(tools)
    device = our_device(tools)
    events = [
        Tap(10, 20),
        Swipe(5, 600, 5, 100, 0.3),
        Text("-hello"),
        Button("home"),
        Key("Enter", 0.1),
    ]
    for seq, event in enumerate(events, 1):
        await backend.apply_control(device, event, seq)
    udid = ["--udid", device.udid]
    assert tools.calls("idb") == [
        ["ui", "tap", "10", "20", *udid],
        ["ui", "swipe", "5", "600", "5", "100", "--duration", "0.3", *udid],
        ["ui", "text", *udid, "--", "-hello"],
        ["ui", "button", "HOME", *udid],
        ["ui", "key", "40", "--duration", "0.1", *udid],
    ]
    assert backend.statistics().controls_applied == 5


async def test_a_hung_control_is_killed_after_its_timeout(tools):
    tools.behave(ui="hang", ignore_term=True)
    backend = ios(tools, command_timeout=1.0, kill_grace=0.2)
    device = our_device(tools)
    with trio.fail_after(5), pytest.raises(CommandTimeout, match=r"did not finish within 1 s"):
        await backend.apply_control(device, Tap(1, 1), 1)
    assert tools.pids("hung.log")
    assert all(gone(pid) for pid in tools.pids())
    assert backend.statistics().controls_failed == 1


async def test_a_failing_control_says_why(tools):
    tools.behave(ui="fail")
    with pytest.raises(DeviceError, match="status 1: idb: target is not booted"):
        await ios(tools).apply_control(our_device(tools), Button("lock"), 1)


# --- capture -----------------------------------------------------------------------------------


async def test_capture_publishes_the_mjpeg_stream_frame_by_frame(tools):
    backend = ios(tools, fps=20)
    device = our_device(tools)
    sink = RecordingSink(input_seq=4)
    with trio.fail_after(10):
        await capture_until(backend, device, sink, 3, fps=30)
    assert [jpeg for _, jpeg, _ in sink.frames] == tools.frames
    upright = (device.point_width, device.point_height)
    turned = upright[::-1]  # the fake's first two frames are landscape: points turn with them
    assert [info for _, _, info in sink.frames] == [
        {"pixel_width": 40, "pixel_height": 30, "input_seq": 4, "point_size": turned},
        {"pixel_width": 40, "pixel_height": 30, "input_seq": 4, "point_size": turned},
        {"pixel_width": 30, "pixel_height": 40, "input_seq": 4, "point_size": upright},
    ]
    [stream] = tools.calls("idb")
    assert stream == ["video-stream", "--udid", device.udid, "--format", "mjpeg", "--fps", "20"]
    stats = backend.statistics().devices[0]
    assert (stats.frames, stats.capturing) == (3, False)


async def test_a_crashing_stream_raises_out_of_capture_every_time(tools):
    tools.behave(stream="crash", frames=2)
    backend = ios(tools)
    device = our_device(tools)
    for _ in range(2):
        sink = RecordingSink()
        with trio.fail_after(10), pytest.raises(DeviceError) as error:
            await backend.capture(device, sink, fps=30)
        message = str(error.value)
        assert "stopped (status 1) after 2 frames: idb: companion connection lost" in message
        assert len(sink.frames) == 2
    assert backend.statistics().devices[0].last_error == str(error.value)


@pytest.mark.parametrize("why", ["exits at once", "is missing", "sends nothing"])
async def test_capture_falls_back_to_screenshots(tools, why):
    if why == "exits at once":
        tools.behave(stream="exit")
        backend = ios(tools)
    elif why == "is missing":
        backend = ios(tools, idb=str(tools.dir / "not-installed"))
    else:
        tools.behave(stream="silent")
        backend = ios(tools, command_timeout=1.0)
    device = our_device(tools)
    sink = RecordingSink(input_seq=9)
    with trio.fail_after(10):
        await capture_until(backend, device, sink, 3)
    assert [jpeg for _, jpeg, _ in sink.frames] == [tools.shot] * 3
    turned = (device.point_height, device.point_width)
    assert sink.frames[0][2] == {
        "pixel_width": 50,
        "pixel_height": 20,
        "input_seq": 9,
        "point_size": turned,
    }
    assert backend.statistics().stream_fallbacks == 1
    shots = [call for call in tools.calls("xcrun") if call[1] == "io"]
    assert shots[0][:5] == ["simctl", "io", device.udid, "screenshot", "--type=jpeg"]


async def test_failing_screenshots_raise_and_leave_no_file(tools, temp_root):
    tools.behave(stream="exit", screenshot="fail")
    with trio.fail_after(10), pytest.raises(DeviceError, match="the display is not ready"):
        await ios(tools).capture(our_device(tools), RecordingSink(), fps=30)
    # The fake wrote half a picture before failing; it was removed (checked by the fixture).


async def test_cancelling_a_capture_mid_screenshot_leaves_nothing_behind(tools):
    tools.behave(stream="exit", screenshot="hang", ignore_term=True)
    backend = ios(tools, kill_grace=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: backend.capture(our_device(tools), RecordingSink(), fps=30))
            pid = await tools.wait_for_hung_process()
            nursery.cancel_scope.cancel()
    assert gone(pid)


async def test_cancelling_a_streaming_capture_stops_idb(tools):
    backend = ios(tools)
    sink = RecordingSink()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: backend.capture(our_device(tools), sink, fps=30))
            pid = await tools.wait_for_hung_process()
            assert backend.census.running_pids() == {pid}
            nursery.cancel_scope.cancel()
    assert gone(pid)


async def test_screenshot_reads_the_size_from_the_jpeg(tools):
    device = our_device(tools)
    shot = await ios(tools).screenshot(device)
    assert shot.data == tools.shot
    assert (shot.format, shot.pixel_width, shot.pixel_height) == ("jpeg", 50, 20)
    assert (shot.point_width, shot.point_height) == (393, 852)


# --- device log --------------------------------------------------------------------------------


async def test_log_lines_are_emitted_and_the_end_of_the_stream_raises(tools):
    lines = []
    device = our_device(tools)
    with trio.fail_after(10), pytest.raises(DeviceError, match=r"status 3\): log: stream ended"):
        await ios(tools).stream_logs(device, lines.append)
    assert [(line.process, line.level) for line in lines] == [
        ("SpringBoard", "info"),
        ("Google Chrome Helper", "error"),
        ("", "info"),
    ]
    assert lines[0].message == "[com.apple.sb:Icon] Icon saved"
    assert tools.calls("xcrun") == [
        ["simctl", "spawn", device.udid, "log", "stream", "--style", "compact"]
    ]


async def test_cancelling_a_log_stream_stops_it(tools):
    tools.behave(logs="hang")
    lines = []
    three_lines = trio.Event()

    def emit(line) -> None:
        lines.append(line)
        if len(lines) == 3:
            three_lines.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: ios(tools).stream_logs(our_device(tools), emit))
            pid = await tools.wait_for_hung_process()
            await three_lines.wait()
            nursery.cancel_scope.cancel()
    assert gone(pid)
    assert [line.pid for line in lines] == ["62", "901", ""]
