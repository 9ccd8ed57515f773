"""``/ws/{id}/webrtc`` through the real server, driven by a real aiortc client."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import trio
from conftest import close_of, next_json, next_of_type, open_ws, running_server
from webrtc_client import Census, Client


def picture(frame) -> tuple[int, int, int, str]:
    """A decoded picture's pts, size and a digest of its top rows (clock and frame number)."""
    rows = frame.to_ndarray(format="gray")[:170]
    return frame.pts, frame.width, frame.height, hashlib.sha1(rows.tobytes()).hexdigest()


async def connect(ws, client: Client) -> dict:
    """Offer, answer, connected: what a viewer's signalling does."""
    status = await next_json(ws)
    assert status["type"] == "status" and status["ready_for_connection"] is True
    await ws.send_message(json.dumps({"type": "offer", "sdp": await client.offer()}))
    answer = await next_of_type(ws, "answer")
    assert answer["connection_id"] and "H264" in answer["sdp"]
    await client.accept(answer["sdp"])
    while (await next_of_type(ws, "connection-state"))["state"] != "connected":
        pass
    return answer


async def test_an_aiortc_viewer_connects_and_decodes_advancing_frames(server):
    sid = server.session_id
    device = server.bridge.get_session(sid).device
    client = Client(picture)
    try:
        async with open_ws(server.ws_url(sid, "webrtc")) as ws:
            with trio.fail_after(30):
                await connect(ws, client)
                frames = await client.wait_frames(15)
            pts = [f[0] for f in frames]
            assert pts == sorted(pts) and len(set(pts)) == len(pts)
            assert {f[1:3] for f in frames} == {(device.pixel_width, device.pixel_height)}
            assert len({f[3] for f in frames}) > 5  # the frame number on the screen changes
            stats = await server.stats()
            assert stats["server"]["webrtc"]["peers_connected"] >= 1
            # ios-bridge's clients read the WebRTC count in the resource manager's shape.
            assert stats["resource_manager"]["webrtc_services"] == 1
    finally:
        await client.close()


async def test_a_pli_from_the_viewer_reaches_the_shared_encoder(server):
    """The browser's PLI is passed to the encoder: it forces an IDR, or refuses one (at most
    one per keyframe interval) and the next natural keyframe serves."""
    sid = server.session_id
    udid = server.bridge.get_session(sid).device.udid
    client = Client(picture)

    async def encoder() -> dict:
        return (await server.stats())["h264"][udid]

    try:
        async with open_ws(server.ws_url(sid, "webrtc")) as ws:
            with trio.fail_after(30):
                await connect(ws, client)
                await client.wait_frames(5)
                before = await encoder()
                requests = (await server.stats())["server"]["webrtc"]["keyframe_requests"]
                await client.send_pli()
                while True:
                    stats = await server.stats()
                    if stats["server"]["webrtc"]["keyframe_requests"] > requests:
                        break
                    await trio.sleep(0.02)
                after = await encoder()
        answered = after["forced_keyframes"] + after["keyframe_requests_refused"]
        assert answered > before["forced_keyframes"] + before["keyframe_requests_refused"]
    finally:
        await client.close()


async def test_a_quality_message_of_one_viewer_leaves_the_other_streaming(server):
    sid = server.session_id
    first, second = Client(picture), Client(picture)
    try:
        async with (
            open_ws(server.ws_url(sid, "webrtc")) as one,
            open_ws(server.ws_url(sid, "webrtc")) as two,
        ):
            with trio.fail_after(40):
                await connect(one, first)
                await connect(two, second)
                await second.wait_frames(5)
                await one.send_message(json.dumps({"type": "quality-change", "quality": "low"}))
                changed = await next_of_type(one, "quality-changed")
                assert changed["success"] is True and changed["quality"] == "low"
                await one.send_message(json.dumps({"type": "start-stream", "fps": 10}))
                assert (await next_of_type(one, "stream-started"))["fps"] == 10
                seen = len(second.received.numbers)
                await second.wait_frames(seen + 15)
                await first.wait_frames(len(first.received.numbers) + 5)
        assert len(server.bridge.encoders.services()) == 1  # one encoder for both peers
    finally:
        await first.close()
        await second.close()


async def test_deleting_the_session_closes_the_socket_and_its_peer(server):
    sid = server.session_id
    client = Client(picture)
    try:
        async with open_ws(server.ws_url(sid, "webrtc")) as ws:
            with trio.fail_after(30):
                await connect(ws, client)
                await client.wait_frames(3)
                assert (await server.stats())["server"]["webrtc"]["peers"] == 1
                assert (await server.http.delete(f"/api/sessions/{sid}")).status_code == 200
                assert await close_of(ws) == (4004, "session deleted")
        stats = await settled(server)
        assert stats["peers"] == 0 and stats["loop_tasks"] == 0
    finally:
        await client.close()


BAD_SIGNALS = [
    ("not json", "message"),
    (json.dumps([1, 2]), "message"),
    (json.dumps({"type": 7}), "type"),
    (json.dumps({"type": "dance"}), "type"),
    (json.dumps({"type": "offer"}), "sdp"),
    (json.dumps({"type": "offer", "sdp": "hello"}), "sdp"),
    (json.dumps({"type": "offer", "sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n"}), "sdp"),
    (json.dumps({"type": "offer", "sdp": "v=0\r\nm=video 9 RTP/AVP 96\r\n"}), "sdp"),
    (
        json.dumps({"type": "offer", "sdp": "v=0\r\nm=video 9 x 96\r\na=rtpmap:96 H264/90000\r\n"}),
        "sdp",
    ),
    (json.dumps({"type": "offer", "sdp": "v=0" + "x" * 61_000}), "sdp"),
    (
        json.dumps({"type": "ice-candidate", "candidate": {"candidate": "candidate:1 1 udp"}}),
        "candidate",
    ),
    (json.dumps({"type": "ice-candidate", "candidate": 5}), "candidate"),
    (
        json.dumps(
            {
                "type": "ice-candidate",
                "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
            }
        ),
        "candidate",
    ),
    (json.dumps({"type": "quality-change", "quality": "extreme"}), "quality"),
    (json.dumps({"type": "start-stream", "fps": "fast"}), "fps"),
    (json.dumps({"type": "start-stream", "fps": 1e9}), "fps"),
]


async def test_bad_signalling_is_answered_with_an_error_naming_the_field(server):
    async with open_ws(server.ws_url(server.session_id, "webrtc")) as ws:
        assert (await next_json(ws))["type"] == "status"
        for message, field in BAD_SIGNALS:
            await ws.send_message(message)
            error = await next_json(ws)
            assert error["type"] == "error", message
            assert error["message"].startswith(f"webrtc: {field}:"), (message, error)
            assert error["error"] == error["message"] and error["code"]
        await ws.send_message(json.dumps({"type": "status-request"}))
        status = await next_json(ws)
        assert status["type"] == "status-response" and status["webrtc_active"] is False
    stats = (await server.stats())["server"]["webrtc"]
    assert stats["peers"] == 0


async def test_a_socket_sending_only_garbage_is_let_go(server):
    async with open_ws(server.ws_url(server.session_id, "webrtc")) as ws:
        await next_json(ws)
        for _ in range(50):
            await ws.send_message("{")
        code, reason = await close_of(ws)
    assert code == 1008 and "bad messages" in reason


async def test_an_unknown_session_closes_with_4004(server):
    async with open_ws(server.ws_url("nope", "webrtc")) as ws:
        assert await close_of(ws) == (4004, "Session not found")


async def settled(server, within: float = 10) -> dict:
    """The server's WebRTC statistics once no peer and no asyncio task is left (bounded)."""
    with trio.move_on_after(within):
        while True:
            stats = (await server.stats())["server"]["webrtc"]
            if stats["peers"] == stats["loop_tasks"] == 0:
                return stats
            await trio.sleep(0.05)
    return (await server.stats())["server"]["webrtc"]


@pytest.mark.parametrize("cycles", [200])
async def test_connect_disconnect_cycles_leave_nothing_behind(tmp_path, cycles):
    """Each cycle offers, is answered (its peer gathers a UDP socket), and leaves at once;
    every fifth one connects first. Nothing the peers held may outlive them."""
    async with running_server(tmp_path / "state") as server:
        sid = server.session_id
        client = Client(picture)
        try:
            async with open_ws(server.ws_url(sid, "webrtc")) as ws:
                with trio.fail_after(30):
                    await connect(ws, client)  # the loop and the encoder are up from here on
        finally:
            await client.close()
        census = Census()
        with trio.fail_after(240):
            for cycle in range(cycles):
                connecting = cycle % 5 == 0
                client = Client(picture) if connecting else None
                async with open_ws(server.ws_url(sid, "webrtc")) as ws:
                    await next_json(ws)
                    if client is not None:
                        try:
                            await ws.send_message(
                                json.dumps({"type": "offer", "sdp": await client.offer()})
                            )
                            await client.accept((await next_of_type(ws, "answer"))["sdp"])
                            while (await next_of_type(ws, "connection-state"))[
                                "state"
                            ] != "connected":
                                pass
                        finally:
                            await client.close()
                    else:
                        await ws.send_message(json.dumps({"type": "offer", "sdp": OFFER}))
                        await next_of_type(ws, "answer")
        # What a closed peer cancelled may take a few loop turns to finish.
        stats = await settled(server)
        assert stats["peers"] == 0
        assert stats["peers_opened"] == cycles + 1
        assert stats["loop_tasks"] == 0
        assert census.new_sockets() == set()
        assert census.new_threads() == []
    # The server stopped: its WebRTC loop and thread went with it.
    assert not [t for t in threading.enumerate() if t.name == "bridge-webrtc"]


OFFER = ""


@pytest.fixture(autouse=True, scope="module")
def _an_offer():
    """One real offer, made once, for the cycles that do not connect."""
    global OFFER

    async def make() -> str:
        client = Client()
        try:
            return await client.offer()
        finally:
            await client.close()

    OFFER = trio.run(make)
