"""Every backend end to end through the real HTTP and WebSocket server.

The ios backend runs the fake ``xcrun`` and ``idb`` found on PATH, exactly as
``bridge-actors serve --backend ios`` finds the real ones; the media backend
streams a clip written by PyAV; several backends share one server, each
session routed to its backend by its device type; and ios sessions survive a
restart of the server through the state directory.
"""

from __future__ import annotations

import base64
import json

import trio
from conftest import next_json, next_of_type, open_ws, running_server
from test_media import frame_index, make_clip
from test_server_http import LIST_ITEM_KEYS, SESSION_INFO_KEYS

from bridge_actors import parse_binary_header

IPHONE = "iPhone 15"
IOS = "17.2"
SIMULATED = "iPhone 15 (simulated)"


def serving(state_dir, *backends: str, **settings):
    return running_server(state_dir, backends=backends, initial_session=False, **settings)


async def create(server, device_type: str, version: str) -> dict:
    response = await server.http.post(
        "/api/sessions/create", data={"device_type": device_type, "ios_version": version}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert set(body["session_info"]) == SESSION_INFO_KEYS
    return body


async def listed(server) -> dict[str, dict]:
    response = await server.http.get("/api/sessions/")
    assert response.status_code == 200, response.text
    items = response.json()["sessions"]
    assert all(set(item) == LIST_ITEM_KEYS for item in items)
    return {item["session_id"]: item for item in items}


async def first_frame(server, session_id: str, query: str = "") -> dict:
    async with open_ws(server.ws_url(session_id, "video", query)) as ws:
        if query == "format=binary":
            with trio.fail_after(10):
                return parse_binary_header(await ws.get_message())
        return await next_of_type(ws, "video_frame")


# --- ios ----------------------------------------------------------------------------------------


async def test_an_ios_session_through_every_route(tmp_path, ios_tools):
    async with serving(tmp_path / "state", "ios") as server:
        http = server.http
        config = (await http.get("/api/sessions/configurations")).json()["configurations"]
        assert config == {
            "device_types": [IPHONE, "iPad Air (5th generation)"],
            "ios_versions": ["17.2", "16.4"],
        }

        created = await create(server, IPHONE, IOS)
        session_id, info = created["session_id"], created["session_info"]
        udid = info["udid"]
        simulator = ios_tools.simulators()[udid]
        assert simulator["state"] == "Booted" and simulator["name"] == info["device_name"]
        assert info["state"] == "Booted" and info["status"] == "healthy"
        assert (info["device_width"], info["device_height"]) == (393, 852)
        assert (info["stream_width"], info["stream_height"]) == (1179, 2556)

        item = (await listed(server))[session_id]
        assert (item["udid"], item["state"], item["status"]) == (udid, "Booted", "healthy")

        one = await http.get(f"/api/sessions/{session_id}")
        assert one.status_code == 200, one.text
        assert one.json()["session"]["state"] == "Booted"
        assert one.json()["device_width"] == 393

        everything = await http.get("/status")
        assert everything.status_code == 200, everything.text
        assert everything.json()["status"] == "healthy"
        assert [s["session_id"] for s in everything.json()["sessions"]] == [session_id]
        status = (await http.get(f"/status/{session_id}")).json()
        assert status["simulator_accessible"] is True and status["status"] == "healthy"
        assert status["session_info"]["state"] == "Booted"

        # Frames are idb's own JPEGs, passed through untouched. (The fake idb sends three
        # and then stays silent, so each server's capture is watched by one viewer here.)
        frame = await first_frame(server, session_id)
        assert base64.b64decode(frame["data"]) in ios_tools.frames
        assert (frame["point_width"], frame["point_height"]) == (393, 852)

        async with open_ws(server.ws_url(session_id, "control")) as control:
            await control.send_message(json.dumps({"t": "tap", "x": 100, "y": 200, "id": 1}))
            ack = await next_json(control)
            assert ack["type"] == "ack" and ack["id"] == 1 and ack["input_seq"] >= 1
        assert ["ui", "tap", "100", "200", "--udid", udid] in ios_tools.calls("idb")

        shot = await http.get(f"/api/sessions/{session_id}/screenshot")
        assert shot.status_code == 200, shot.text
        assert shot.content == ios_tools.shot

        stats = await server.stats()
        assert stats["sessions"]["sessions"] == 1

        deleted = await http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        assert udid not in ios_tools.simulators()
        assert await listed(server) == {}


async def test_an_ios_session_still_booting_says_so(tmp_path, ios_tools):
    ios_tools.behave(boot="hang")
    async with serving(tmp_path / "state", "ios") as server:
        # Boot keeps hanging: create answers within its budget, saying what simctl says.
        created = await create(server, IPHONE, IOS)
        assert created["session_info"]["state"] == "Booting"
        assert created["session_info"]["status"] == "offline"
        item = (await listed(server))[created["session_id"]]
        assert item["state"] == "Booting"


async def test_ios_sessions_are_restored_after_a_restart(tmp_path, ios_tools):
    state_dir = tmp_path / "state"
    async with serving(state_dir, "ios") as server:
        session_id = (await create(server, IPHONE, IOS))["session_id"]
        udid = server.bridge.get_session(session_id).device.udid

    # The Mac restarted too: the simulator is there, shut down.
    ios_tools.load_state()
    for devices in ios_tools.state["devices"].values():
        for device in devices:
            if device["udid"] == udid:
                device["state"] = "Shutdown"
    ios_tools.save_state()

    async with serving(state_dir, "ios") as server:
        item = (await listed(server))[session_id]
        assert (item["udid"], item["state"], item["status"]) == (udid, "Booted", "healthy")
        assert ["simctl", "boot", udid] in ios_tools.calls("xcrun")
        assert (await server.stats())["sessions"]["restored"] == 1
        binary = await first_frame(server, session_id, "format=binary")
        assert binary["jpeg"] in ios_tools.frames
        assert (binary["point_width"], binary["point_height"]) == (393, 852)
        deleted = await server.http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        assert udid not in ios_tools.simulators()

    async with serving(state_dir, "ios") as server:
        assert await listed(server) == {}


# --- media --------------------------------------------------------------------------------------


async def test_a_media_session_through_the_server(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    async with serving(tmp_path / "state", "media", media_sources={"clip": clip}) as server:
        config = (await server.http.get("/api/sessions/configurations")).json()
        assert config["configurations"] == {"device_types": ["clip"], "ios_versions": ["media"]}
        created = await create(server, "clip", "media")
        session_id, info = created["session_id"], created["session_info"]
        assert (info["stream_width"], info["stream_height"]) == (64, 48)
        assert info["state"] == "Booted"
        assert (await listed(server))[session_id]["state"] == "Booted"
        status = (await server.http.get(f"/status/{session_id}")).json()
        assert status["simulator_accessible"] is True

        frame = await first_frame(server, session_id)
        assert (frame["pixel_width"], frame["pixel_height"]) == (64, 48)
        assert 0 <= frame_index(base64.b64decode(frame["data"])) < 20

        async with open_ws(server.ws_url(session_id, "control")) as control:
            await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 2, "id": "t"}))
            assert (await next_json(control))["type"] == "ack"

        shot = await server.http.get(f"/api/sessions/{session_id}/screenshot")
        assert shot.status_code == 200 and shot.content[:2] == b"\xff\xd8"
        deleted = await server.http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        assert await listed(server) == {}


# --- several backends ---------------------------------------------------------------------------


async def test_one_server_routes_each_device_type_to_its_backend(tmp_path, ios_tools):
    clip = make_clip(tmp_path / "clip.mp4")
    state_dir = tmp_path / "state"
    backends = ("simulated", "media", "ios")
    async with serving(state_dir, *backends, media_sources={"clip": clip}) as server:
        config = (await server.http.get("/api/sessions/configurations")).json()["configurations"]
        assert {SIMULATED, "clip", IPHONE} <= set(config["device_types"])

        ids = {
            "simulated": (await create(server, SIMULATED, "18.0"))["session_id"],
            "media": (await create(server, "clip", "media"))["session_id"],
            "ios": (await create(server, IPHONE, IOS))["session_id"],
        }
        for backend, session_id in ids.items():
            assert server.bridge.get_session(session_id).device.backend == backend
        ios_udid = server.bridge.get_session(ids["ios"]).device.udid
        assert list(ios_tools.simulators()) == [ios_udid]  # only the ios session made one

        items = await listed(server)
        assert set(items) == set(ids.values())
        assert all(item["state"] == "Booted" for item in items.values())

        frames = {backend: await first_frame(server, sid) for backend, sid in ids.items()}
        sizes = {b: (frame["pixel_width"], frame["pixel_height"]) for b, frame in frames.items()}
        assert sizes["media"] == (64, 48)
        assert base64.b64decode(frames["ios"]["data"]) in ios_tools.frames
        assert sizes["simulated"] == (
            server.bridge.get_session(ids["simulated"]).device.pixel_width,
            server.bridge.get_session(ids["simulated"]).device.pixel_height,
        )

        # A tap on the ios session reaches idb; one on the others never does.
        before = len(ios_tools.calls("idb"))
        for session_id in (ids["simulated"], ids["media"]):
            async with open_ws(server.ws_url(session_id, "control")) as control:
                await control.send_message(json.dumps({"t": "tap", "x": 5, "y": 6, "id": 1}))
                assert (await next_json(control))["type"] == "ack"
        assert not [c for c in ios_tools.calls("idb")[before:] if c[:2] == ["ui", "tap"]]

    # Restart with the same three backends: every session comes back on its own backend.
    async with serving(state_dir, *backends, media_sources={"clip": clip}) as server:
        items = await listed(server)
        assert set(items) == set(ids.values())
        for backend, session_id in ids.items():
            assert server.bridge.get_session(session_id).device.backend == backend
            assert items[session_id]["state"] == "Booted"
        assert (await server.stats())["sessions"]["restored"] == 3
        deleted = await server.http.delete("/api/sessions/")
        assert deleted.json()["deleted_count"] == 3
        assert ios_tools.simulators() == {}
