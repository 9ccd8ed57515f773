"""Device actions on the simulated and media backends, through the real server.

The simulated device does honestly what it can: turning it turns its test
pattern (and the frames' pixel and point sizes with it), and an opened URL, a
push notification and a location appear on screen; the rest answers 501 naming
the backend, before any upload is read. A media source answers 501 to every action.
"""

from __future__ import annotations

import io
import zipfile

import trio
from conftest import open_ws, running_server
from PIL import Image
from test_media import make_clip

from bridge_actors import parse_binary_header

ACTIONS_501 = [
    ("get", "apps"),
    ("post", "apps/com.example.demo/launch"),
    ("post", "logs/clear"),
    ("get", "logs/processes"),
    ("get", "files/app-container?bundle_id=com.example.demo"),
]


def empty_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("A.app/Info.plist", b"x")
    return out.getvalue()


async def binary_frame(server, session_id: str, newer_than: int = 0) -> tuple[dict, bytes]:
    async with open_ws(server.ws_url(session_id, "video", "format=binary")) as ws:
        with trio.fail_after(10):
            while True:
                message = await ws.get_message()
                header = parse_binary_header(message)
                if header["input_seq"] >= 0 and header["seq"] > newer_than:
                    return header, message


async def test_the_simulated_device_turns_and_shows_what_was_done(tmp_path):
    async with running_server(tmp_path / "state") as server:
        sid = server.session_id
        base = f"/api/sessions/{sid}"
        before, _ = await binary_frame(server, sid)
        portrait = (before["pixel_width"], before["pixel_height"])
        assert portrait[0] < portrait[1]
        response = await server.http.post(f"{base}/orientation", data={"orientation": "landscape"})
        assert response.status_code == 200, response.text
        device = server.bridge.get_session(sid).backend._device(
            server.bridge.get_session(sid).device.udid
        )
        assert device.rotation == 90
        while True:
            header, message = await binary_frame(server, sid, before["seq"])
            if header["pixel_width"] > header["pixel_height"]:
                break
        assert (header["pixel_width"], header["pixel_height"]) == portrait[::-1]
        assert header["point_width"] > header["point_height"]
        jpeg = message[32:]
        assert Image.open(io.BytesIO(jpeg)).size == portrait[::-1]

        assert (await server.http.post(f"{base}/url/open", data={"url": "example.com"})).json()[
            "url"
        ] == "https://example.com"
        response = await server.http.post(
            f"{base}/push",
            json={"bundle_id": "com.example.demo", "payload": {"aps": {"alert": "hi"}}},
        )
        assert response.status_code == 200, response.text
        await server.http.post(f"{base}/location/set", data={"latitude": "1.5", "longitude": "2"})
        assert device.notices == {
            "orientation": "landscape",
            "url": "https://example.com",
            "push": "com.example.demo: hi",
            "location": "1.5000, 2.0000",
        }
        await server.http.post(f"{base}/location/clear")
        assert "location" not in device.notices
        await server.http.post(f"{base}/orientation", data={"orientation": "portrait"})
        assert device.rotation == 0


async def test_what_the_simulated_device_cannot_do_is_501_naming_it(tmp_path):
    async with running_server(tmp_path / "state", actions_per_minute=1000) as server:
        base = f"/api/sessions/{server.session_id}"
        for method, path in ACTIONS_501:
            response = await server.http.request(method, f"{base}/{path}")
            assert response.status_code == 501, path
            assert "not supported by the simulated backend" in response.json()["detail"], path
        response = await server.http.post(
            f"{base}/apps/install", files={"app_bundle": ("a.zip", empty_zip())}
        )
        assert response.status_code == 501
        response = await server.http.post(
            f"{base}/media/photos/add", files={"photos": ("a.jpg", b"\xff\xd8\xff" + bytes(9))}
        )
        assert response.status_code == 501
        assert (await server.http.get(f"{base}/media/info")).json()["supported"] is False


async def test_a_media_source_answers_501_to_every_action(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    async with running_server(
        tmp_path / "state", backends=("media",), media_sources={"clip": clip}, initial_session=False
    ) as server:
        created = await server.http.post(
            "/api/sessions/create", data={"device_type": "clip", "ios_version": "media"}
        )
        base = f"/api/sessions/{created.json()['session_id']}"
        for method, path, data in [
            ("post", "orientation", {"orientation": "landscape"}),
            ("post", "url/open", {"url": "https://example.com"}),
            ("post", "location/clear", None),
            ("get", "apps", None),
        ]:
            response = await server.http.request(method, f"{base}/{path}", data=data)
            assert response.status_code == 501, path
            assert "not supported by the media backend" in response.json()["detail"]
