"""Stored sessions are never lost or miscounted on errors.

A bad record is quarantined (kept aside in a file, named in the log) and costs
no other record; a session whose device does not restore is kept, listed,
tried again with backoff and never erased from the store; a delete whose
device teardown fails is reported and keeps the session unless forced.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import running_server
from fakes import SIMULATED_DEVICE, SIMULATED_VERSION, device_record, settings, simulated

from bridge_actors import BridgeError, DeviceError, DeviceInfo, open_bridge
from bridge_actors._backends.simulated import SimulatedBackend, run_on_event_loop
from bridge_actors._cli import main
from bridge_actors._errors import DeleteFailed
from bridge_actors._server.views import held_session_list_item
from bridge_actors._services.sessions import (
    BACKEND_DISABLED,
    DELETE_FAILED,
    RESTORE_RETRY_INITIAL,
    RESTORE_RETRY_MAX,
    UNRESTORED,
)

DEVICE = SIMULATED_DEVICE
VERSION = SIMULATED_VERSION


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
            assert bridge.list_held_sessions() == []
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


# --- devices that do not restore -----------------------------------------------------------------


class FlakyRestore(SimulatedBackend):
    """The simulated device, whose restores of ``udid`` fail ``failures`` times, then work;
    ``gone`` makes a failure a device that is not there instead of an error."""

    def __init__(self, udid: str, failures: int, *, gone: bool = False) -> None:
        super().__init__(encode_limiter=trio.CapacityLimiter(2), run_in_worker=run_on_event_loop)
        self.udid = udid
        self.failures = failures
        self.gone = gone
        self.attempts: list[float] = []  # trio times of the restores of ``udid``
        self.attempted = trio.Event()  # set, and replaced, after each of them

    async def restore_device(self, device: DeviceInfo) -> bool:
        if device.udid != self.udid:
            return await super().restore_device(device)
        self.attempts.append(trio.current_time())
        self.attempted.set()
        self.attempted = trio.Event()
        if len(self.attempts) <= self.failures:
            await trio.lowlevel.checkpoint()
            if self.gone:
                return False
            raise DeviceError("the device server is not answering")
        return await super().restore_device(device)

    async def wait_for_attempts(self, count: int) -> None:
        while len(self.attempts) < count:
            await self.attempted.wait()


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_an_unrestored_session_is_kept_listed_and_retried_with_backoff(
    tmp_path, autojump_clock
):
    state_dir = tmp_path / "state"
    write_sessions(state_dir, [GOOD[0], GOOD[1]])
    backend = FlakyRestore(GOOD[0]["device"]["udid"], failures=4)
    config = settings(tmp_path, initial_session=False)
    async with open_bridge(config, backends={"simulated": backend}) as bridge:
        assert [s.session_id for s in bridge.list_sessions()] == ["keep-b"]
        [held] = bridge.list_held_sessions()
        assert (held.session_id, held.state) == ("keep-a", UNRESTORED)
        assert "the device server is not answering" in held.reason
        assert held_session_list_item(held)["state"] == UNRESTORED
        stats = bridge.statistics().sessions
        assert (stats.unrestored, stats.restored) == (1, 1)
        assert stats.held[0].attempts == 1
        assert stats.held[0].next_attempt_in == RESTORE_RETRY_INITIAL

        await bridge.create_session(DEVICE, VERSION)  # a save: keep-a must stay in the store
        assert "keep-a" in stored_ids(state_dir)

        await backend.wait_for_attempts(5)
        await trio.testing.wait_all_tasks_blocked()
        assert "keep-a" in {s.session_id for s in bridge.list_sessions()}
        assert bridge.list_held_sessions() == []
        assert bridge.statistics().sessions.restored == 2
        assert bridge.get_session("keep-a").device == DeviceInfo.from_record(GOOD[0]["device"])
        assert gaps(backend.attempts) == [RESTORE_RETRY_INITIAL * 2**n for n in range(4)]
    assert {"keep-a", "keep-b"} <= set(stored_ids(state_dir))


async def test_the_backoff_is_capped(tmp_path, autojump_clock):
    state_dir = tmp_path / "state"
    write_sessions(state_dir, [GOOD[0]])
    backend = FlakyRestore(GOOD[0]["device"]["udid"], failures=100, gone=True)
    async with open_bridge(settings(tmp_path), backends={"simulated": backend}) as bridge:
        await backend.wait_for_attempts(12)
        assert gaps(backend.attempts)[-4:] == [RESTORE_RETRY_MAX] * 4
        assert max(gaps(backend.attempts)) == RESTORE_RETRY_MAX
        [held] = bridge.list_held_sessions()
        assert held.attempts == 12 and held.reason == f"device {held.device.udid} is gone"


async def test_a_session_deleted_while_unrestored_is_forgotten_and_not_retried(
    tmp_path, autojump_clock
):
    state_dir = tmp_path / "state"
    write_sessions(state_dir, [GOOD[0]])
    backend = FlakyRestore(GOOD[0]["device"]["udid"], failures=100, gone=True)
    config = settings(tmp_path, initial_session=False)
    async with open_bridge(config, backends={"simulated": backend}) as bridge:
        await backend.wait_for_attempts(2)
        assert [h.session_id for h in bridge.list_held_sessions()] == ["keep-a"]
        await bridge.delete_session("keep-a")
        assert bridge.list_held_sessions() == []
        with trio.move_on_after(RESTORE_RETRY_MAX * 3) as waited:
            await backend.wait_for_attempts(3)
        assert waited.cancelled_caught, "a deleted session was tried again"
        assert bridge.statistics().sessions.deleted == 1
    assert stored_ids(state_dir) == []


async def test_a_session_of_a_backend_not_enabled_is_kept_for_later(tmp_path):
    state_dir = tmp_path / "state"
    write_sessions(state_dir, [session_record("on-ios", "FFFF0000-0000", backend="ios"), GOOD[0]])
    config = settings(tmp_path, initial_session=False)
    async with open_bridge(config, backends={"simulated": simulated()}) as bridge:
        [held] = bridge.list_held_sessions()
        assert (held.session_id, held.state) == ("on-ios", BACKEND_DISABLED)
        await bridge.create_session(DEVICE, VERSION)
        with pytest.raises(DeleteFailed, match="backend 'ios' is not enabled"):
            await bridge.delete_session("on-ios")
        assert "on-ios" in stored_ids(state_dir)
        await bridge.delete_session("on-ios", force=True)
        assert "on-ios" not in stored_ids(state_dir)


# --- through the server, with the fake ios tools --------------------------------------------------


async def create_ios(server) -> tuple[str, str]:
    created = await server.http.post(
        "/api/sessions/create", data={"device_type": "iPhone 15", "ios_version": "17.2"}
    )
    assert created.status_code == 200, created.text
    return created.json()["session_id"], created.json()["session_info"]["udid"]


async def test_a_session_whose_simulator_is_gone_is_listed_and_kept(tmp_path, ios_tools):
    state_dir = tmp_path / "state"
    async with running_server(state_dir, backends=("ios",), initial_session=False) as server:
        session_id, udid = await create_ios(server)
    state = copy.deepcopy(ios_tools.load_state())
    for devices in state["devices"].values():
        devices[:] = [d for d in devices if d["udid"] != udid]  # deleted outside the bridge
    ios_tools.state = state
    ios_tools.save_state()

    async with running_server(state_dir, backends=("ios",), initial_session=False) as server:
        listed = (await server.http.get("/api/sessions/")).json()["sessions"]
        assert [(i["session_id"], i["state"], i["status"]) for i in listed] == [
            (session_id, UNRESTORED, "offline")
        ]
        stats = (await server.stats())["sessions"]
        assert stats["unrestored"] == 1 and stats["restored"] == 0
        metrics = (await server.http.get("/metrics")).text
        assert "\nbridge_sessions_held 1.0\n" in metrics
        [held] = stats["held"]
        assert held["session_id"] == session_id and held["state"] == UNRESTORED
        assert held["reason"] == f"device {udid} is gone" and held["attempts"] == 1
        assert stored_ids(state_dir) == [session_id]
        # It stays through other changes of the store.
        other, _ = await create_ios(server)
        assert sorted(stored_ids(state_dir)) == sorted([session_id, other])
        deleted = await server.http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        assert stored_ids(state_dir) == [other]
        assert (await server.http.delete(f"/api/sessions/{other}")).status_code == 200


async def test_a_delete_whose_device_teardown_fails_keeps_the_session(tmp_path, ios_tools):
    state_dir = tmp_path / "state"
    async with running_server(state_dir, backends=("ios",), initial_session=False) as server:
        http = server.http
        session_id, udid = await create_ios(server)
        ios_tools.behave(delete="fail")

        refused = await http.delete(f"/api/sessions/{session_id}")
        assert refused.status_code == 502
        detail = refused.json()["detail"]
        assert refused.json()["success"] is False
        assert f"session {session_id!r} was not deleted" in detail
        assert "the device is in use" in detail and "?force=true" in detail
        listed = (await http.get("/api/sessions/")).json()["sessions"]
        assert [(i["session_id"], i["state"]) for i in listed] == [(session_id, DELETE_FAILED)]
        stats = (await server.stats())["sessions"]
        assert (stats["deleted"], stats["delete_failed"], stats["delete_failures"]) == (0, 1, 1)
        assert stored_ids(state_dir) == [session_id]
        assert udid in ios_tools.simulators()

        bad_flag = await http.delete(f"/api/sessions/{session_id}?force=maybe")
        assert bad_flag.status_code == 400 and bad_flag.json()["field"] == "force"

        ios_tools.behave()  # the device can go now: a plain delete again finishes the job
        deleted = await http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        assert udid not in ios_tools.simulators()
        assert (await http.get("/api/sessions/")).json()["sessions"] == []
        stats = (await server.stats())["sessions"]
        assert (stats["deleted"], stats["delete_failed"]) == (1, 0)
        assert stored_ids(state_dir) == []

        # Forced: forgotten although its simulator could not be deleted.
        session_id, udid = await create_ios(server)
        ios_tools.behave(delete="fail")
        forced = await http.delete(f"/api/sessions/{session_id}?force=true")
        assert forced.status_code == 200, forced.text
        assert stored_ids(state_dir) == []
        assert udid in ios_tools.simulators()
        ios_tools.behave()


async def test_delete_all_names_what_it_kept(tmp_path, ios_tools):
    async with running_server(
        tmp_path / "state", backends=("ios", "simulated"), initial_session=False
    ) as server:
        ios_id, _ = await create_ios(server)
        created = await server.http.post(
            "/api/sessions/create", data={"device_type": DEVICE, "ios_version": VERSION}
        )
        assert created.status_code == 200
        ios_tools.behave(delete="fail")
        refused = await server.http.delete("/api/sessions/")
        assert refused.status_code == 502
        assert "deleted 1 session(s); kept 1" in refused.json()["detail"]
        assert repr(ios_id) in refused.json()["detail"]
        forced = await server.http.delete("/api/sessions/?force=true")
        assert forced.json() == {
            "success": True,
            "deleted_count": 1,
            "message": "Deleted 1 sessions",
        }
        ios_tools.behave()
