"""The compatible clients of docs/protocol.md, replayed request by request against a real server.

Each test issues exactly what one of those clients sends (method, path, body,
headers, WebSocket messages) in the order it sends it, and asserts that every
field the client reads is there with the type it needs:

* the command line client: ``health`` → ``configurations`` → ``list`` →
  ``create`` (a form) → session info → ``/status`` → screenshot → delete, and its
  ``stream`` command, which hands the session info to the desktop viewer;
* the desktop viewer: a video and a control socket, its control messages
  (camelCase swipe corners, keys as HID usage codes), its screenshot and recording
  buttons (cross-origin fetches from a local page), and its WebRTC signalling;
* the web pages: the session list, the screenshot-mode socket, the log viewer and
  a screenshot download named ``*.png``.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import pytest
import trio
from conftest import RunningServer, close_of, next_json, next_of_type, open_ws, running_server
from PIL import Image

from bridge_actors import BadInput, Key, Swipe, parse_control
from bridge_actors._server.ws import normalize_control

DEVICE = "iPhone 15 (simulated)"
JPEG_START = b"\xff\xd8"
PNG_START = b"\x89PNG\r\n\x1a\n"


# What the desktop viewer writes on its control socket, and what the device then logs.
DESKTOP_VIEWER_CONTROLS = [
    ({"t": "tap", "x": 120, "y": 240}, "tap at (120, 240)"),
    # A drag on the canvas: corners in camelCase, no duration.
    (
        {"t": "swipe", "startX": 10, "startY": 600, "endX": 12, "endY": 100},
        "swipe from (10, 600) to (12, 100)",
    ),
    # The swipe menu and the later viewer: snake_case with a duration.
    (
        {
            "t": "swipe",
            "start_x": 196,
            "start_y": 544,
            "end_x": 196,
            "end_y": 308,
            "duration": 0.3,
        },
        "swipe from (196, 544) to (196, 308)",
    ),
    ({"t": "text", "text": "hello"}, "typed 5 characters"),
    ({"t": "button", "button": "home"}, "button home"),
    ({"t": "button", "button": "lock"}, "button lock"),
    # Real-time typing: each key as its HID usage code.
    ({"t": "key", "key": "4"}, "key a"),
    ({"t": "key", "key": "30"}, "key digit1"),
    ({"t": "key", "key": "9"}, "key f"),
    ({"t": "key", "key": "40"}, "key enter"),
    ({"t": "key", "key": "42"}, "key backspace"),
    ({"t": "key", "key": "82"}, "key arrowup"),
]


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def ws_base(server: RunningServer) -> str:
    """The desktop viewer's WebSocket base: the server URL with http swapped for ws."""
    return server.url.replace("http://", "ws://").replace("https://", "wss://")


async def create_like_the_cli(server: RunningServer) -> str:
    configurations = (await server.http.get("/api/sessions/configurations")).json()
    ios_version = configurations["configurations"]["ios_versions"][0]
    response = await server.http.post(
        f"{server.url}/api/sessions/create",
        data={"device_type": DEVICE, "ios_version": ios_version},
    )
    response.raise_for_status()
    return response.json()["session_id"]


async def session_info_like_the_cli(server: RunningServer, session_id: str) -> dict[str, Any]:
    response = await server.http.get(f"{server.url}/api/sessions/{session_id}")
    response.raise_for_status()
    body = response.json()
    assert body["success"] is True
    return body["session"]


async def next_message(ws) -> str | bytes:
    with trio.fail_after(10):
        return await ws.get_message()


async def input_log_lines(logs, count: int) -> list[str]:
    """The next ``count`` device log messages about applied input."""
    lines = []
    with trio.fail_after(10):
        while len(lines) < count:
            line = await next_of_type(logs, "log")
            if "input_seq=" in line["message"]:
                lines.append(line["message"])
    return lines


# --- the command line client ------------------------------------------------------------------


async def test_the_cli_session_lifecycle(server, tmp_path):
    http, url = server.http, server.url

    # Every command starts by checking the server's health; anything but "healthy" stops it.
    health = await http.get(f"{url}/health")
    health.raise_for_status()
    assert health.json()["status"] == "healthy"

    # `devices`, and `create` before it creates anything.
    configurations = await http.get(f"{url}/api/sessions/configurations")
    configurations.raise_for_status()
    body = configurations.json()
    assert body["success"] is True
    offered = body["configurations"]
    assert isinstance(offered, dict)
    assert all(isinstance(t, str) for t in offered["device_types"]) and offered["device_types"]
    assert all(isinstance(v, str) for v in offered["ios_versions"]) and offered["ios_versions"]
    assert DEVICE in offered["device_types"]

    # `list`: a table of id[:12], type, version and "Online" when status is "healthy".
    listing = await http.get(f"{url}/api/sessions/")
    listing.raise_for_status()
    assert listing.json()["success"] is True
    before = listing.json()["sessions"]
    json.dumps(before)  # `list --format json` prints them as they came

    # `create <device_type> <ios_version>`: a form, answered within the client's 10 s.
    ios_version = offered["ios_versions"][0]
    with trio.fail_after(10):
        created = await http.post(
            f"{url}/api/sessions/create",
            data={"device_type": DEVICE, "ios_version": ios_version},
        )
    created.raise_for_status()
    created = created.json()
    assert created["success"] is True
    session_id = created["session_id"]
    assert isinstance(session_id, str) and session_id
    info = created["session_info"]
    assert info["device_type"] == DEVICE and info["ios_version"] == ios_version
    assert isinstance(info["udid"], str) and info["udid"]

    listed = (await http.get(f"{url}/api/sessions/")).json()["sessions"]
    assert len(listed) == len(before) + 1
    mine = next(item for item in listed if item["session_id"] == session_id)
    assert isinstance(mine["session_id"][:12], str)
    assert mine["device_type"] == DEVICE and mine["ios_version"] == ios_version
    assert mine["status"] == "healthy"  # shown as "Online"

    # `info <id>` (and the first step of `stream`, `screenshot` and `terminate`).
    session = await session_info_like_the_cli(server, session_id)
    for key in ("device_type", "ios_version", "device_name", "udid"):
        assert isinstance(session[key], str) and session[key], key
    assert session["status"] == "healthy"
    assert number(session["uptime"]) and f"{session['uptime']:.1f}"
    assert isinstance(session["installed_apps"], dict)
    assert len(session["installed_apps"]) == 0

    # `create --wait` validates the session: its info, then /status's simulator_accessible.
    status = await http.get(f"{url}/status/{session_id}")
    status.raise_for_status()
    assert status.json()["simulator_accessible"] is True

    # `screenshot <id> -o screenshot.png`: the body is written to the file as it streams in.
    output = tmp_path / "screenshot.png"
    async with http.stream("GET", f"{url}/api/sessions/{session_id}/screenshot") as response:
        response.raise_for_status()
        with output.open("wb") as file:
            async for chunk in response.aiter_bytes():
                file.write(chunk)
    assert output.stat().st_size > 0
    assert image_size(output.read_bytes()) == (session["stream_width"], session["stream_height"])

    # `terminate <id> --force`.
    deleted = await http.delete(f"{url}/api/sessions/{session_id}")
    deleted.raise_for_status()
    assert deleted.json()["success"] is True

    gone = await http.get(f"{url}/api/sessions/{session_id}")
    assert gone.status_code == 404  # the client reports the session as not found
    remaining = (await http.get(f"{url}/api/sessions/")).json()["sessions"]
    assert [item["session_id"] for item in remaining] == [item["session_id"] for item in before]


async def test_the_clients_access_token_is_tolerated(server):
    """A client configured with an access token adds it as a query parameter and a header."""
    headers = {"X-IOS-Bridge-Token": "secret"}
    health = await server.http.get("/health?token=secret", headers=headers)
    assert health.json()["status"] == "healthy"
    listing = await server.http.get("/api/sessions/?token=secret", headers=headers)
    assert listing.json()["success"] is True
    sid = server.session_id
    info = await server.http.get(f"/api/sessions/{sid}?token=secret", headers=headers)
    assert info.json()["session"]["session_id"] == sid
    async with open_ws(f"{ws_base(server)}/ws/{sid}/video?token=secret") as video:
        assert (await next_json(video))["type"] == "video_frame"
    async with open_ws(f"{ws_base(server)}/ws/{sid}/control?token=secret") as control:
        await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": "t"}))
        assert (await next_json(control))["type"] == "ack"


# --- the desktop viewer (`stream`) ------------------------------------------------------------


async def test_the_stream_command_and_the_desktop_viewer(server):
    session_id = await create_like_the_cli(server)
    # `stream` passes the session info to the viewer, which sizes its window and maps
    # clicks to device points with it before the first frame arrives.
    session_info = await session_info_like_the_cli(server, session_id)
    for key in ("device_width", "device_height", "stream_width", "stream_height"):
        assert positive_int(session_info[key]), key

    base = ws_base(server)
    async with (
        open_ws(f"{base}/ws/{session_id}/logs") as logs,
        open_ws(f"{base}/ws/{session_id}/video") as video,
        open_ws(f"{base}/ws/{session_id}/control") as control,
    ):
        # The video socket: JSON text, one `video_frame` per frame.
        frame = json.loads(await next_message(video))
        assert frame["type"] == "video_frame"
        assert frame["point_width"] == session_info["device_width"]
        assert frame["point_height"] == session_info["device_height"]
        jpeg = base64.b64decode(frame["data"], validate=True)
        assert jpeg.startswith(JPEG_START)
        assert image_size(jpeg) == (frame["pixel_width"], frame["pixel_height"])
        assert image_size(jpeg) == (session_info["stream_width"], session_info["stream_height"])
        assert positive_int(frame["fps"]) and number(frame["timestamp"])

        # The control socket, exactly as the viewer writes it.
        await logs.send_message(json.dumps({"type": "filter", "filter": "input_seq="}))
        await next_of_type(logs, "filter_applied")
        for message, _ in DESKTOP_VIEWER_CONTROLS:
            await control.send_message(json.dumps(message))
        # None was refused (an error would arrive before this ack), and each did what it says.
        await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": "sync"}))
        ack = await next_json(control)
        assert ack["type"] == "ack" and ack["id"] == "sync", ack
        assert ack["input_seq"] == len(DESKTOP_VIEWER_CONTROLS) + 1
        applied = await input_log_lines(logs, len(DESKTOP_VIEWER_CONTROLS))
        for (message, description), line in zip(DESKTOP_VIEWER_CONTROLS, applied, strict=True):
            assert line.startswith(description), (message, line)

        # `terminate` while the window is open: both sockets end with 4004.
        deleted = await server.http.delete(f"/api/sessions/{session_id}")
        assert deleted.json()["success"] is True
        for ws in (video, control):
            code, reason = await close_of(ws)
            assert (code, reason) == (4004, "session deleted")
    # The viewer reconnects after 3 s, and is told again.
    async with open_ws(f"{base}/ws/{session_id}/video") as video:
        assert await close_of(video) == (4004, "Session not found")


LOCAL_PAGE_ORIGINS = ("null", "file://")


@pytest.fixture
async def desktop_viewer_server(tmp_path):
    """A server that lists the desktop viewer's local-page origins, as its operator would."""
    async with running_server(tmp_path, allowed_origins=LOCAL_PAGE_ORIGINS) as running:
        yield running


async def test_the_viewers_screenshot_button_fetches_cross_origin(desktop_viewer_server):
    server = desktop_viewer_server
    sid = server.session_id
    path = f"/api/sessions/{sid}/screenshot/download"
    for origin in ("file://", "null"):
        # The fetch carries a JSON content type, so a browser asks first.
        preflight = await server.http.options(
            f"{server.url}{path}",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert 200 <= preflight.status_code < 300
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

        # Then the POST itself: no body at all.
        shot = await server.http.post(
            f"{server.url}{path}",
            headers={"Content-Type": "application/json", "Origin": origin},
        )
        assert shot.status_code == 200
        assert shot.headers["access-control-allow-origin"] == origin
        assert "content-disposition" in shot.headers["access-control-expose-headers"].lower()
        match = re.search(r"filename=(.+)", shot.headers["content-disposition"])
        assert match is not None
        filename = match.group(1).replace('"', "")
        assert filename == f"screenshot_{sid[:8]}.jpg"
        assert shot.headers["content-type"] == "image/jpeg"
        assert shot.content.startswith(JPEG_START)

    # Other pages get no such permission: their POST is refused, their reads unshared.
    foreign = await server.http.post(
        path, headers={"Content-Type": "application/json", "Origin": "https://example.com"}
    )
    assert foreign.status_code == 403
    assert "access-control-allow-origin" not in foreign.headers
    listing = await server.http.get("/api/sessions/", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in listing.headers


async def test_local_pages_get_no_cors_unless_listed(server):
    path = f"/api/sessions/{server.session_id}/screenshot/download"
    for origin in LOCAL_PAGE_ORIGINS:
        shot = await server.http.post(path, headers={"Origin": origin})
        assert shot.status_code == 403
        assert "access-control-allow-origin" not in shot.headers
        read = await server.http.get(
            f"/api/sessions/{server.session_id}", headers={"Origin": origin}
        )
        assert read.status_code == 200
        assert "access-control-allow-origin" not in read.headers


async def test_the_viewers_record_buttons_record_and_download(desktop_viewer_server):
    server = desktop_viewer_server
    sid = server.session_id
    headers = {"Content-Type": "application/json", "Origin": "file://"}
    started = await server.http.post(f"/api/sessions/{sid}/recording/start", headers=headers)
    assert started.status_code == 200, started.text
    assert started.json() == {"success": True, "message": "Recording started", "session_id": sid}
    assert started.headers["access-control-allow-origin"] == "file://"
    stopped = await server.http.post(f"/api/sessions/{sid}/recording/stop", headers=headers)
    assert stopped.status_code == 200, stopped.text
    assert stopped.headers["content-type"] == "video/mp4"
    assert re.fullmatch(
        rf"attachment; filename=ios-recording_{sid[:8]}_\d+\.mp4",
        stopped.headers["content-disposition"],
    )
    assert stopped.headers["access-control-allow-origin"] == "file://"
    assert stopped.content[4:8] == b"ftyp"
    unknown = await server.http.post("/api/sessions/nope/recording/start")
    assert unknown.status_code == 404


async def test_the_viewers_webrtc_signalling_is_answered(server):
    sid = server.session_id
    async with open_ws(f"{ws_base(server)}/ws/{sid}/webrtc") as signalling:
        status = await next_json(signalling)
        assert status["type"] == "status" and status["ready_for_connection"] is True
        await signalling.send_message(
            json.dumps({"type": "start-stream", "quality": "high", "fps": 30})
        )
        started = await next_json(signalling)
        assert started["type"] == "stream-started" and started["quality"] == "high"
        await signalling.send_message(json.dumps({"type": "offer", "sdp": "v=0\r\n"}))
        refusal = await next_json(signalling)
        # The shape ios-bridge's signalling reads ("error", "code"), and ours ("message").
        assert refusal["type"] == "error" and refusal["code"] == "OFFER_FAILED"
        assert refusal["message"].startswith("webrtc: sdp:")
        assert refusal["error"] == refusal["message"]
    async with open_ws(f"{ws_base(server)}/ws/nope/webrtc") as unknown:
        assert await close_of(unknown) == (4004, "Session not found")


# --- the web pages ----------------------------------------------------------------------------


async def test_the_session_list_page(server):
    http = server.http
    configurations = (await http.get("/api/sessions/configurations")).json()
    assert configurations["success"] is True
    version = configurations["configurations"]["ios_versions"][0]

    created = await http.post(
        "/api/sessions/create",
        content=f"device_type={DEVICE.replace(' ', '%20')}&ios_version={version}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert created.json()["success"] is True and isinstance(created.json()["session_id"], str)
    refused = await http.post(
        "/api/sessions/create",
        content=f"device_type=Nokia&ios_version={version}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert refused.json()["success"] is False
    assert isinstance(refused.json()["detail"], str)  # shown in the alert

    sessions = (await http.get("/api/sessions/")).json()["sessions"]
    assert len(sessions) == 2
    for item in sessions:
        assert isinstance(item["device_type"], str) and isinstance(item["ios_version"], str)
        assert len(item["session_id"][:8]) == 8
        assert number(item["uptime"]) and isinstance(item["installed_apps_count"], int)

    deleted = (await http.delete(f"/api/sessions/{sessions[0]['session_id']}")).json()
    assert deleted["success"] is True
    everything = (await http.delete("/api/sessions/")).json()
    assert everything["success"] is True and everything["deleted_count"] == 1


async def test_the_control_pages_screenshot_mode(server):
    sid = server.session_id
    point_keys = ("pixel_width", "pixel_height", "point_width", "point_height")
    async with open_ws(f"{ws_base(server)}/ws/{sid}/screenshot") as ws:
        first = await next_json(ws)
        assert first["type"] == "screenshot" and all(positive_int(first[k]) for k in point_keys)
        assert base64.b64decode(first["data"]).startswith(JPEG_START)
        for message in (
            {"t": "tap", "x": 50, "y": 60},
            # In screenshot mode the page sends its swipes here too.
            {"t": "swipe", "start_x": 5, "start_y": 300, "end_x": 5, "end_y": 50, "duration": 0.3},
            {"t": "refresh"},
        ):
            await ws.send_message(json.dumps(message))
            assert (await next_json(ws))["type"] == "screenshot", message
    assert server.bridge.get_session(sid).applied_input_seq == 2


async def test_the_control_pages_screenshot_download_named_png(server):
    sid = server.session_id
    filename = f"screenshot_{sid[:8]}_1712345678901.png"
    response = await server.http.post(
        f"/api/sessions/{sid}/screenshot/download", files={"filename": (None, filename)}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == f"attachment; filename={filename}"
    assert response.content.startswith(PNG_START)
    session = server.bridge.get_session(sid)
    assert image_size(response.content) == (session.device.pixel_width, session.device.pixel_height)


async def test_the_log_viewer(server):
    sid = server.session_id
    async with (
        open_ws(f"{ws_base(server)}/ws/{sid}/logs") as logs,
        open_ws(f"{ws_base(server)}/ws/{sid}/control") as control,
    ):
        await control.send_message(json.dumps({"t": "button", "button": "home"}))
        line = await next_of_type(logs, "log")
        for key in ("timestamp", "process", "pid", "message"):
            assert isinstance(line[key], str), key
        assert line["level"] in ("debug", "info", "warning", "error")


# --- the spelling of the compatible clients, without a server ---------------------------------


def test_normalize_control_only_respells_what_the_viewer_spells_its_own_way():
    camel = {"t": "swipe", "startX": 1, "startY": 2, "endX": 3, "endY": 4}
    assert parse_control(normalize_control(camel)) == Swipe(1, 2, 3, 4, 0.2)
    assert camel == {"t": "swipe", "startX": 1, "startY": 2, "endX": 3, "endY": 4}
    both = {"t": "swipe", "start_x": 5, "startX": 9, "start_y": 6, "end_x": 7, "end_y": 8}
    assert parse_control(normalize_control(both)) == Swipe(5, 6, 7, 8, 0.2)
    assert parse_control(normalize_control({"type": "key", "key": "9", "duration": 1})) == Key(
        "f", 1.0
    )
    for unchanged in (
        {"t": "key", "key": "a"},
        {"t": "key", "key": "3"},  # no key has HID usage 3
        {"t": "key", "key": 4},
        {"t": "tap", "startX": 1, "x": 2, "y": 3},
    ):
        assert normalize_control(unchanged) == unchanged
    missing = {"t": "swipe", "startX": 1, "startY": 2, "endX": 3}
    with pytest.raises(BadInput, match=r"^end_y: is required"):
        parse_control(normalize_control(missing))
