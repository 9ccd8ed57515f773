"""What simctl and idb say, parsed: pure functions, tested without an event loop."""

from __future__ import annotations

import pytest
from fakes import DEVICE_TYPES, IOS_17, IPHONE, RUNTIMES, SCREEN

from bridge_actors._backends.simctl import (
    Catalog,
    LineSplitter,
    Simulator,
    family_of,
    is_ours,
    new_device_name,
    parse_device_types,
    parse_log_line,
    parse_runtimes,
    parse_screen,
    parse_simulators,
)


def test_catalog_offers_iphones_and_ipads_on_available_ios_runtimes():
    catalog = Catalog(parse_device_types(DEVICE_TYPES), parse_runtimes(RUNTIMES))
    configurations = catalog.configurations()
    assert configurations.device_types == ("iPhone 15", "iPad Air (5th generation)")
    assert configurations.ios_versions == ("17.2", "16.4")
    assert catalog.device_type(IPHONE).name == "iPhone 15"
    assert catalog.runtime("iOS 17.2") is catalog.runtime("17.2") is catalog.runtime(IOS_17)
    assert catalog.device_type("Apple Watch Series 9 (45mm)") is None
    assert catalog.runtime("15.0") is None
    assert catalog.runtime_version("com.apple.CoreSimulator.SimRuntime.iOS-18-1") == "18.1"


def test_simulators_and_screen_sizes_are_read_from_json():
    data = {"devices": {IOS_17: [{"udid": "U", "name": "n", "state": "Booted"}, "junk"]}}
    [simulator] = parse_simulators(data)
    assert (simulator.udid, simulator.state, simulator.runtime) == ("U", "Booted", IOS_17)
    with pytest.raises(ValueError):
        parse_simulators({"nope": 1})
    screen = parse_screen({"screen_dimensions": SCREEN})
    assert (screen.pixel_width, screen.point_height) == (1179, 852)
    assert parse_screen({"screen_dimensions": {"width": 0}}) is None
    assert parse_screen([]) is None


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("bridge-iPhone 15-0a1b2c3d", True),
        ("bridge-iPad Air (5th generation)-ffffffff", True),
        ("iPhone 15", False),
        ("bridge-mine", False),
        ("my bridge-iPhone 15-0a1b2c3d", False),
        ("bridge-iPhone 15-0A1B2C3D", False),
    ],
)
def test_only_names_this_bridge_gives_are_ours(name, ours):
    assert is_ours(name) is ours


def test_compact_log_lines_are_parsed():
    line = parse_log_line("2024-01-15 10:23:45.123 Df SpringBoard[62:1a2b] Icon saved")
    assert (line.timestamp, line.process, line.pid, line.level) == (
        "2024-01-15 10:23:45.123",
        "SpringBoard",
        "62",
        "info",
    )
    assert line.message == "Icon saved"
    assert line.raw_line == "2024-01-15 10:23:45.123 Df SpringBoard[62:1a2b] Icon saved"
    levels = {
        kind: parse_log_line(f"2024-01-15 10:23:45.123 {kind} p[1:2] m").level
        for kind in ("Df", "I ", "Db", "E ", "F ", "A ")
    }
    assert levels == {
        "Df": "info",
        "I ": "info",
        "Db": "debug",
        "E ": "error",
        "F ": "error",
        "A ": "info",
    }
    spaced = parse_log_line("2024-01-15 10:23:45.123456-0800 E  Google Chrome Helper[9:a] x")
    assert (spaced.process, spaced.pid, spaced.message) == ("Google Chrome Helper", "9", "x")
    assert parse_log_line("Timestamp               Ty Process[PID:TID]") is None
    assert parse_log_line("   ") is None
    loose = parse_log_line("    continued")
    assert (loose.message, loose.process, loose.level) == ("    continued", "", "info")


def test_lines_are_split_across_reads_and_kept_bounded():
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"one\r\ntw") == ["one"]
    assert splitter.feed(b"o\nthr\xe2\x82") == ["two"]
    assert splitter.feed(b"\xac\n") == ["thr\u20ac"]
    assert splitter.feed(b"x" * 25) == ["x" * 10]
    assert splitter.feed(b"yyy\nlast\n") == ["last"]
    assert splitter.feed(b"\xff\n") == ["\ufffd"]


def test_a_new_device_name_is_ours_and_names_its_device_type():
    name = new_device_name("iPhone 15")
    assert is_ours(name)
    catalog = Catalog((), ())
    simulator = Simulator("U", name, "Booted", "com.apple.CoreSimulator.SimRuntime.iOS-17-2", "")
    assert catalog.device_type_name(simulator) == "iPhone 15"
    assert catalog.runtime_version(simulator.runtime) == "17.2"


@pytest.mark.parametrize(
    ("name", "declared", "family"),
    [
        ("iPhone 15", None, "iPhone"),
        ("iPad Air", "", "iPad"),
        ("Apple Watch", None, ""),
        ("Apple TV", "Apple TV", "Apple TV"),
    ],
)
def test_a_device_family_is_as_declared_or_from_the_name(name, declared, family):
    assert family_of(name, declared) == family
