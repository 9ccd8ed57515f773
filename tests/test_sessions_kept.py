"""Stored sessions are never lost on errors: a bad record is quarantined (kept
aside in a file, named in the log) and costs no other record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import running_server
from fakes import settings, simulated

from bridge_actors import BridgeError, open_bridge
from bridge_actors._cli import main

DEVICE = "iPhone 15 (simulated)"
VERSION = "18.0"


def device_record(udid: str, /, **changes) -> dict:
    record = {
        "udid": udid,
        "name": f"bridge-{DEVICE}-{udid[:8]}",
        "device_type": DEVICE,
        "ios_version": VERSION,
        "point_width": 390,
        "point_height": 844,
        "pixel_width": 390,
        "pixel_height": 844,
        "backend": "simulated",
        "source": "",
    }
    record.update(changes)
    return record


def session_record(session_id: str, udid: str, /, **device_changes) -> dict:
    return {
        "session_id": session_id,
        "created_at": 1_700_000_000.0,
        "device": device_record(udid, **device_changes),
    }


def write_sessions(state_dir: Path, records: list) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "sessions.json"
    path.write_text(json.dumps({"version": 1, "saved_at": 0, "sessions": records}))
    return path


def stored_ids(state_dir: Path) -> list[str]:
    document = json.loads((state_dir / "sessions.json").read_text())
    return [record["session_id"] for record in document["sessions"]]


def quarantined(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("sessions.json.corrupt-*"))


GOOD = [session_record("keep-a", "AAAA0000-0000"), session_record("keep-b", "BBBB0000-0000")]


# --- bad records ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"udid": ["x"]}, "device.udid"),
        ({"pixel_width": 0}, "device.pixel_width"),
        ({"point_height": 10**9}, "device.point_height"),
        ({"point_width": 390.5}, "device.point_width"),
        ({"backend": None}, "device.backend"),
    ],
)
async def test_a_bad_record_is_quarantined_and_the_others_restore(tmp_path, caplog, changes, field):
    state_dir = tmp_path / "state"
    bad = session_record("bad-one", "CCCC0000-0000", **changes)
    write_sessions(state_dir, [GOOD[0], bad, GOOD[1]])
    config = settings(tmp_path, initial_session=False)
    with caplog.at_level(logging.ERROR, "bridge_actors"):
        async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
            assert sorted(s.session_id for s in bridge.list_sessions()) == ["keep-a", "keep-b"]
            assert bridge.registry._unrestored == []
            problem = bridge.statistics().sessions.load_problem
            assert "#1: session 'bad-one': " + field in problem
            await bridge.create_session(DEVICE, VERSION)  # a save, which must not bring it back
    assert any(
        "'bad-one'" in record.getMessage() and field in record.getMessage()
        for record in caplog.records
    )
    [aside] = quarantined(state_dir)
    kept = json.loads(aside.read_text())["sessions"]
    assert bad in kept  # the record itself, as it was, for a person to repair
    assert "bad-one" not in stored_ids(state_dir)
    assert {"keep-a", "keep-b"} <= set(stored_ids(state_dir))


async def test_impossible_dimensions_never_reach_a_screenshot(tmp_path):
    state_dir = tmp_path / "state"
    write_sessions(
        state_dir,
        [
            session_record("zero", "DDDD0000-0000", pixel_width=0),
            session_record("huge", "EEEE0000-0000", pixel_height=10**9),
            GOOD[0],
        ],
    )
    async with running_server(state_dir, initial_session=False) as server:
        listed = (await server.http.get("/api/sessions/")).json()["sessions"]
        assert [item["session_id"] for item in listed] == ["keep-a"]
        for session_id in ("zero", "huge"):
            shot = await server.http.get(f"/api/sessions/{session_id}/screenshot")
            assert shot.status_code == 404
        shot = await server.http.get("/api/sessions/keep-a/screenshot")
        assert shot.status_code == 200 and shot.content[:2] == b"\xff\xd8"
        problem = (await server.stats())["sessions"]["load_problem"]
        assert "'zero': device.pixel_width: must be from 1 to 8192, not 0" in problem
        assert "'huge': device.pixel_height: must be from 1 to 8192" in problem


async def test_a_session_file_that_is_a_directory_is_named_as_such(tmp_path):
    state_dir = tmp_path / "state"
    (state_dir / "sessions.json").mkdir(parents=True)
    with pytest.raises(BridgeError, match=r"sessions\.json is a directory, not a file"):
        async with open_bridge(settings(tmp_path), backends={"simulated": simulated()}):
            pass


def test_the_command_line_names_a_session_file_that_is_a_directory(tmp_path, caplog):
    state_dir = tmp_path / "state"
    (state_dir / "sessions.json").mkdir(parents=True)
    with caplog.at_level(logging.ERROR, "bridge_actors"):
        status = main(
            ["serve", "--state-dir", str(state_dir), "--port", "0", "--host", "127.0.0.1"]
        )
    assert status == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any("sessions.json is a directory, not a file" in m for m in messages), messages
    assert not any("cannot listen" in m for m in messages), messages
