"""The device-action routes end to end: the real server, the ios backend, fake ``xcrun``.

Every route is called over HTTP the way ios-bridge's CLI and viewer call it
(forms, multipart uploads), and the fake records the exact simctl commands it
received. Malicious uploads are refused with a 4xx naming the problem and leave
no file behind (the ``tools`` fixture checks the temporary directory is empty).
"""

from __future__ import annotations

import io
import json
import os
import plistlib
import stat
import zipfile

import pytest
import trio
from conftest import running_server
from fakes import FakeTools

IPHONE = "iPhone 15"
IOS = "17.2"
INFO = {
    "CFBundleIdentifier": "com.example.demo",
    "CFBundleDisplayName": "Demo",
    "CFBundleShortVersionString": "2.1",
}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00" + bytes(64)


def zip_of(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            mode = stat.S_IFLNK | 0o777 if name in symlinks else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def ipa(fmt=plistlib.FMT_BINARY) -> bytes:
    return zip_of(
        {
            "Payload/Demo.app/Info.plist": plistlib.dumps(INFO, fmt=fmt),
            "Payload/Demo.app/Demo": b"x",
        }
    )


def zipped_app() -> bytes:
    return zip_of({"Demo.app/Info.plist": plistlib.dumps(INFO), "Demo.app/Demo": b"\xcf\xfa"})


async def ios_session(tmp_path, **settings):
    return running_server(tmp_path / "state", backends=("ios",), initial_session=False, **settings)


async def create(server) -> tuple[str, str]:
    response = await server.http.post(
        "/api/sessions/create", data={"device_type": IPHONE, "ios_version": IOS}
    )
    assert response.status_code == 200, response.text
    session_id = response.json()["session_id"]
    return session_id, server.bridge.get_session(session_id).device.udid


def simctl_calls(tools: FakeTools, command: str) -> list[list[str]]:
    return [call[2:] for call in tools.calls("xcrun") if call[:2] == ["simctl", command]]


async def test_apps_install_list_launch_terminate_uninstall(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, udid = await create(server)
        base = f"/api/sessions/{sid}"
        response = await server.http.post(
            f"{base}/apps/install", files={"ipa_file": ("Demo.ipa", ipa())}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True
        assert body["app_info"] == {
            "bundle_id": "com.example.demo",
            "name": "Demo",
            "version": "2.1",
        }
        assert body["installed_app"]["app_type"] == "User"
        [install] = simctl_calls(ios_tools, "install")
        assert install[0] == udid and install[1].endswith("/Payload/Demo.app")
        assert json.loads((ios_tools.dir / "installed.log").read_text()) == ["Demo", "Info.plist"]

        response = await server.http.post(
            f"{base}/apps/install-and-launch", files={"app_bundle": ("Demo.zip", zipped_app())}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["bundle_id"], body["launched"]) == ("com.example.demo", True)
        assert simctl_calls(ios_tools, "install")[1][1].endswith("/unpacked/Demo.app")
        assert simctl_calls(ios_tools, "launch") == [[udid, "com.example.demo"]]

        apps = (await server.http.get(f"{base}/apps")).json()["apps"]
        assert [(a["bundle_id"], a["app_name"], a["app_type"]) for a in apps] == [
            ("com.example.demo", "Demo", "User"),
            ("com.apple.mobilesafari", "Safari", "System"),
        ]
        assert apps[1]["path"] == "/Applications/MobileSafari.app"

        assert (await server.http.post(f"{base}/apps/com.example.demo/launch")).json() == {
            "success": True,
            "message": "App com.example.demo launched",
        }
        response = await server.http.post(f"{base}/apps/com.example.demo/terminate")
        assert response.json()["success"] is True
        assert simctl_calls(ios_tools, "terminate") == [[udid, "com.example.demo"]]
        response = await server.http.delete(f"{base}/apps/com.example.demo")
        assert response.json()["app_name"] == "Demo"
        assert simctl_calls(ios_tools, "uninstall") == [[udid, "com.example.demo"]]
        response = await server.http.delete(f"{base}/apps/com.example.demo")
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
        response = await server.http.post(f"{base}/apps/..%2Fx/launch")
        assert response.status_code in (400, 404)


async def test_a_failed_launch_is_reported_not_hidden(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, _ = await create(server)
        ios_tools.behave(launch="fail")
        response = await server.http.post(
            f"/api/sessions/{sid}/apps/install-and-launch", files={"ipa_file": ("D.ipa", ipa())}
        )
        body = response.json()
        assert response.status_code == 200 and body["launched"] is False
        assert "failed on purpose" in body["launch_error"]


@pytest.mark.parametrize(
    ("field", "name", "data", "status", "detail"),
    [
        (
            "ipa_file",
            "evil.ipa",
            zip_of({"Payload/A.app/Info.plist": b"x", "../evil": b"x"}),
            400,
            "'..'",
        ),
        (
            "app_bundle",
            "l.zip",
            zip_of({"A.app/Info.plist": b"x", "A.app/l": b"/"}, ("A.app/l",)),
            400,
            "symlink",
        ),
        ("app_bundle", "many.zip", zip_of({f"A.app/{n}": b"" for n in range(30)}), 413, "entries"),
        (
            "app_bundle",
            "bomb.zip",
            zip_of({"A.app/Info.plist": b"x", "A.app/z": bytes(8 << 20)}),
            413,
            "expands",
        ),
        ("ipa_file", "fake.ipa", b"MZ this is an exe", 400, "not a .ipa file"),
        ("ipa_file", "app.exe", b"PK\x03\x04", 400, "must be one of"),
        ("ipa_file", "empty.ipa", b"", 400, "is empty"),
        ("app_bundle", "noapp.zip", zip_of({"readme.txt": b"hi"}), 400, "no .app bundle"),
        ("ipa_file", "badplist.ipa", zip_of({"Payload/A.app/Info.plist": b"<plist"}), 400, "plist"),
    ],
)
async def test_malicious_uploads_are_refused_and_leave_nothing(
    tmp_path, ios_tools, field, name, data, status, detail
):
    async with await ios_session(tmp_path, upload_max_entries=20) as server:
        sid, _ = await create(server)
        response = await server.http.post(
            f"/api/sessions/{sid}/apps/install", files={field: (name, data)}
        )
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
        assert simctl_calls(ios_tools, "install") == []


async def test_an_upload_over_the_size_limit_is_refused(tmp_path, ios_tools):
    async with await ios_session(tmp_path, upload_max_bytes=4096) as server:
        sid, _ = await create(server)
        response = await server.http.post(
            f"/api/sessions/{sid}/apps/install", files={"ipa_file": ("big.ipa", bytes(20000))}
        )
        assert response.status_code == 413, response.text
        response = await server.http.post(f"/api/sessions/{sid}/apps/install", data={"x": "1"})
        assert response.status_code == 400
        assert "multipart" in response.json()["detail"]


async def test_url_location_orientation_push_reach_simctl_exactly(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, udid = await create(server)
        base = f"/api/sessions/{sid}"
        response = await server.http.post(f"{base}/url/open", data={"url": "example.com/a?b=1"})
        assert response.json()["url"] == "https://example.com/a?b=1"
        await server.http.post(f"{base}/url/open", data={"url": "myapp://open/1"})
        for bad in ("javascript:alert(1)", "FILE:///etc/passwd", "data:text/html,x", " "):
            response = await server.http.post(f"{base}/url/open", data={"url": bad})
            assert response.status_code == 400, bad
        assert simctl_calls(ios_tools, "openurl") == [
            [udid, "https://example.com/a?b=1"],
            [udid, "myapp://open/1"],
        ]
        response = await server.http.post(
            f"{base}/location/set", data={"latitude": "37.7749", "longitude": "-122.4194"}
        )
        assert response.json()["coordinate_pair"] == "37.7749,-122.4194"
        for lat, lon in (("91", "0"), ("0", "-181"), ("nan", "0"), ("x", "0")):
            response = await server.http.post(
                f"{base}/location/set", data={"latitude": lat, "longitude": lon}
            )
            assert response.status_code == 400
        await server.http.post(
            f"{base}/location/set-predefined", data={"location_name": "City Run"}
        )
        await server.http.post(f"{base}/location/clear")
        assert simctl_calls(ios_tools, "location") == [
            [udid, "set", "37.7749,-122.4194"],
            [udid, "run", "City Run"],
            [udid, "clear"],
        ]
        presets = (await server.http.get(f"{base}/location/presets")).json()["presets"]
        assert presets[0]["name"] == "San Francisco, CA"
        predefined = (await server.http.get(f"{base}/location/predefined")).json()
        assert "Freeway Drive" in [p["name"] for p in predefined["predefined_locations"]]

        response = await server.http.post(f"{base}/orientation", data={"orientation": "Landscape"})
        assert response.json()["orientation"] == "landscape"
        response = await server.http.post(f"{base}/orientation", data={"orientation": "sideways"})
        assert response.status_code == 400
        assert simctl_calls(ios_tools, "device") == [[udid, "orientation", "landscape"]]

        payload = {"aps": {"alert": "hello", "badge": 1}}
        response = await server.http.post(
            f"{base}/push", json={"bundle_id": "com.example.demo", "payload": payload}
        )
        assert response.status_code == 200, response.text
        [push] = simctl_calls(ios_tools, "push")
        assert push[:2] == [udid, "com.example.demo"]
        [pushed] = list(ios_tools.dir.glob("pushed-*.json"))
        assert json.loads(pushed.read_text()) == payload
        huge = {"aps": {"alert": "x" * 5000}}
        response = await server.http.post(
            f"{base}/push", json={"bundle_id": "com.example.demo", "payload": huge}
        )
        assert response.status_code == 400 and "4096" in response.json()["detail"]
        response = await server.http.post(
            f"{base}/push", json={"bundle_id": "com.example.demo", "payload": {"alert": 1}}
        )
        assert response.status_code == 400


async def test_logs_on_demand(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, _ = await create(server)
        base = f"/api/sessions/{sid}"
        body = (await server.http.get(f"{base}/logs?lines=10&process=SpringBoard")).json()
        assert body["success"] is True and body["logs"][0]["process"] == "SpringBoard"
        [show] = [c for c in simctl_calls(ios_tools, "spawn") if c[1:3] == ["log", "show"]]
        assert show[-2:] == ["--predicate", 'process == "SpringBoard"']
        errors = (await server.http.get(f"{base}/logs?level=error")).json()["logs"]
        assert [line["level"] for line in errors] == ["error"]
        for query in ("lines=0", "lines=x", "level=loud", "process=a%22%20or%201"):
            assert (await server.http.get(f"{base}/logs?{query}")).status_code == 400, query
        assert (await server.http.post(f"{base}/logs/clear")).json()["success"] is True
        processes = (await server.http.get(f"{base}/logs/processes")).json()["processes"]
        assert processes == [{"pid": "62", "process": "SpringBoard", "cpu": "1.5", "memory": "0.8"}]


async def test_media_and_files(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, udid = await create(server)
        base = f"/api/sessions/{sid}"
        files = [("photos", ("a.jpg", JPEG)), ("photos", ("b.JPEG", JPEG))]
        response = await server.http.post(f"{base}/media/photos/add", files=files)
        assert response.json()["count"] == 2, response.text
        response = await server.http.post(
            f"{base}/media/videos/add", files={"videos": ("c.mp4", MP4)}
        )
        assert response.json()["count"] == 1
        media = [
            json.loads(line) for line in (ios_tools.dir / "media.log").read_text().splitlines()
        ]
        assert [name.split("-", 1)[1] for name, _ in media] == ["a.jpg", "b.jpeg", "c.mp4"]
        assert media[0][1] == JPEG[:16].hex()
        response = await server.http.post(
            f"{base}/media/photos/add", files={"photos": ("x.png", JPEG)}
        )
        assert response.status_code == 400 and "not a .png file" in response.json()["detail"]
        info = (await server.http.get(f"{base}/media/info")).json()
        assert ".heic" in info["supported_photo_formats"]

        data_dir = ios_tools.dir / "data" / udid
        response = await server.http.post(
            f"{base}/files/push",
            data={"device_path": "/Documents/notes/a.txt"},
            files={"file": ("a.txt", b"hello")},
        )
        assert response.status_code == 200, response.text
        assert (data_dir / "Documents" / "notes" / "a.txt").read_bytes() == b"hello"
        response = await server.http.post(
            f"{base}/files/pull", data={"device_path": "Documents/notes/a.txt"}
        )
        assert response.content == b"hello"
        assert "a.txt" in response.headers["content-disposition"]
        os.symlink("/etc", data_dir / "out")
        for path in ("../../x", "Documents/../../x", "out/passwd", "a\\..\\b"):
            response = await server.http.post(f"{base}/files/pull", data={"device_path": path})
            assert response.status_code == 400, path
            response = await server.http.post(
                f"{base}/files/push", data={"device_path": path}, files={"file": ("x", b"x")}
            )
            assert response.status_code == 400, path
        response = await server.http.get(
            f"{base}/files/app-container?bundle_id=com.apple.mobilesafari"
        )
        container = response.json()["container_path"]
        assert container == str(ios_tools.dir / "containers" / "com.apple.mobilesafari")
        response = await server.http.post(
            f"{base}/files/push",
            data={"device_path": "Library/x.db", "bundle_id": "com.apple.mobilesafari"},
            files={"file": ("x.db", b"db")},
        )
        assert response.status_code == 200, response.text
        assert (
            ios_tools.dir / "containers" / "com.apple.mobilesafari" / "Library" / "x.db"
        ).exists()


async def test_actions_are_rate_limited_logged_and_404_for_unknown_sessions(tmp_path, ios_tools):
    async with await ios_session(tmp_path, actions_per_minute=3) as server:
        sid, _ = await create(server)
        base = f"/api/sessions/{sid}"
        async with server.bridge.logs(sid) as subscription:
            for _ in range(3):
                assert (await server.http.post(f"{base}/location/clear")).status_code == 200
            response = await server.http.post(f"{base}/location/clear")
            assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
            seen = []
            while len(seen) < 3:
                line = await subscription.receive()
                if line.process == "bridge":
                    seen.append(line.message)
            assert seen == ["location/clear"] * 3
        assert (await server.stats())["actions"] == {"admitted": 3, "refused": 1, "failed": 0}
        response = await server.http.post("/api/sessions/nope/location/clear")
        assert response.status_code == 404
        assert response.json()["detail"] == "Session not found"
        response = await server.http.post(
            "/api/sessions/nope/apps/install", files={"ipa_file": ("a.ipa", ipa())}
        )
        assert response.status_code == 404


async def test_deleting_the_session_cancels_a_running_install(tmp_path, ios_tools):
    async with await ios_session(tmp_path) as server:
        sid, _ = await create(server)
        ios_tools.behave(install="hang")
        answers = []

        async def install() -> None:
            response = await server.http.post(
                f"/api/sessions/{sid}/apps/install", files={"ipa_file": ("D.ipa", ipa())}
            )
            answers.append(response)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(install)
            await ios_tools.wait_for_hung_process()
            assert (await server.http.delete(f"/api/sessions/{sid}")).status_code == 200
        [response] = answers
        assert response.status_code == 404
        assert response.json()["detail"] == "Session not found"
    # The tools fixture checks that the hung simctl was reaped and the upload removed.
