"""The limits on what a client sends that have their own settings: text to type and
uploads at once, each refused with a clear answer and counted in ``/metrics``."""

from __future__ import annotations

import json

import trio
from conftest import open_ws, running_server
from test_device_actions import create, ios_session, ipa


async def _reply(ws, kinds: tuple[str, ...]) -> dict:
    with trio.fail_after(10):
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("type") in kinds:
                return reply


async def test_text_longer_than_the_setting_is_an_error_naming_text(tmp_path):
    async with (
        running_server(tmp_path, max_text_length=5) as server,
        open_ws(server.ws_url(server.session_id, "control")) as ws,
    ):
        await ws.send_message(json.dumps({"t": "text", "text": "abcdef", "id": 1}))
        refused = await _reply(ws, ("error",))
        assert "text" in refused["message"] and "5" in refused["message"], refused
        await ws.send_message(json.dumps({"t": "text", "text": "abcde", "id": 2}))
        typed = await _reply(ws, ("ack", "error"))
        assert typed == {"type": "ack", "id": 2, "input_seq": typed["input_seq"]}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_an_upload_beyond_the_concurrent_cap_is_refused_with_429(tmp_path, ios_tools):
    async with await ios_session(tmp_path, max_concurrent_uploads=1) as server:
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
            await ios_tools.wait_for_hung_process()  # the first upload holds the only slot
            second = await server.http.post(
                f"/api/sessions/{sid}/apps/install", files={"ipa_file": ("E.ipa", ipa())}
            )
            assert second.status_code == 429
            assert second.headers["Retry-After"] == "1"
            assert "too many uploads at once (at most 1)" in second.json()["detail"]
            metrics = (await server.http.get("/metrics")).text
            assert _metric(metrics, "bridge_uploads_refused_total") == 1
            assert _metric(metrics, "bridge_uploads_active") == 1
            assert (await server.http.delete(f"/api/sessions/{sid}")).status_code == 200
        metrics = (await server.http.get("/metrics")).text
        assert _metric(metrics, "bridge_uploads_active") == 0


async def test_bodies_too_large_are_counted(tmp_path):
    async with running_server(tmp_path, max_body_bytes=1024) as server:
        response = await server.http.post(
            "/api/sessions/create",
            content=b"{" + b" " * 4096 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        metrics = (await server.http.get("/metrics")).text
        assert _metric(metrics, "bridge_bodies_too_large_total") == 1
