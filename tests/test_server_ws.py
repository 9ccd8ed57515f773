"""The WebSocket endpoints of docs/protocol.md, end to end against a real server."""

from __future__ import annotations

import json
import re
from contextlib import AsyncExitStack

import trio
import trio_websocket
from conftest import (
    close_of,
    next_json,
    next_of_type,
    open_ws,
    running_server,
    stalled_viewer,
)
from fakes import make_frame

from bridge_actors import (
    BadInput,
    CaptureFailed,
    CaptureStopped,
    LogLine,
    RateLimited,
    ServerBusy,
    SessionFull,
    SessionNotFound,
    ViewerEvicted,
    parse_binary_header,
)
from bridge_actors._server.ws import (
    MAX_BAD_MESSAGES,
    Close,
    LogFilter,
    close_for,
    close_reason,
    video_frame_text,
)
from bridge_actors.wire import jpeg_base64

FRAME_KEYS = [
    "type",
    "data",
    "pixel_width",
    "pixel_height",
    "point_width",
    "point_height",
    "frame",
    "timestamp",
    "fps",
    "format",
    "seq",
    "input_seq",
]


def frame_seq(message: str | bytes) -> int:
    if isinstance(message, bytes):
        return parse_binary_header(message)["seq"]
    return json.loads(message)["seq"]


async def collect_seqs(ws, seqs: list[int]) -> None:
    while True:
        seqs.append(frame_seq(await ws.get_message()))


async def wait_until(predicate, within: float = 10, interval: float = 0.02) -> None:
    """Poll an async or plain predicate until it holds (bounded; never a bare sleep)."""
    with trio.fail_after(within):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await trio.sleep(interval)


async def frames_in(server, session_id: str | None = None) -> int:
    return (await server.capture_stats(session_id))["frames_in"]


async def counted_window(server, received: list[list[int]], frames: int) -> tuple[int, int]:
    """Once every viewer streams, the capture's frame numbers (start, end] over ``frames`` frames,
    and wait until every viewer got past ``end`` (so nothing is still in flight)."""
    await wait_until(lambda: all(received))
    start = await frames_in(server)
    await wait_until(lambda: frames_in_at_least(server, start + frames))
    end = await frames_in(server)
    await wait_until(lambda: all(seqs and seqs[-1] >= end for seqs in received))
    return start, end


async def frames_in_at_least(server, count: int) -> bool:
    return await frames_in(server) >= count


async def test_twenty_viewers_each_receive_nearly_every_frame(tmp_path):
    async with running_server(tmp_path, fps=10) as server, AsyncExitStack() as stack:
        url = server.ws_url(server.session_id, "video")
        viewers = [await stack.enter_async_context(open_ws(url)) for _ in range(20)]
        received: list[list[int]] = [[] for _ in viewers]
        async with trio.open_nursery() as nursery:
            for ws, seqs in zip(viewers, received, strict=True):
                nursery.start_soon(collect_seqs, ws, seqs)
            start, end = await counted_window(server, received, frames=20)
            nursery.cancel_scope.cancel()
        produced = end - start
        assert produced >= 20
        for seqs in received:
            got = len({seq for seq in seqs if start < seq <= end})
            assert got >= 0.95 * produced, (got, produced)
        capture = await server.capture_stats()
        assert capture["viewers"] == 20


async def test_binary_and_json_viewers_see_the_same_frames(tmp_path):
    async with running_server(tmp_path, fps=10) as server:
        sid = server.session_id
        binary_messages: list[bytes] = []
        json_messages: list[dict] = []

        async def read_binary(ws):
            while True:
                binary_messages.append(await ws.get_message())

        async def read_json(ws):
            while True:
                json_messages.append(json.loads(await ws.get_message()))

        async with (
            open_ws(server.ws_url(sid, "video", "format=binary")) as binary_ws,
            open_ws(server.ws_url(sid, "video")) as json_ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(read_binary, binary_ws)
            nursery.start_soon(read_json, json_ws)
            await wait_until(lambda: binary_messages and json_messages)
            start = await frames_in(server)
            await wait_until(lambda: frames_in_at_least(server, start + 10))
            end = await frames_in(server)
            await wait_until(
                lambda: frame_seq(binary_messages[-1]) >= end and json_messages[-1]["seq"] >= end
            )
            nursery.cancel_scope.cancel()

        binary = {parse_binary_header(m)["seq"]: parse_binary_header(m) for m in binary_messages}
        textual = {m["seq"]: m for m in json_messages}
        window = range(start + 1, end + 1)
        assert [seq for seq in window if seq in binary] == list(window)
        assert [seq for seq in window if seq in textual] == list(window)

        for message in json_messages:
            assert list(message) == FRAME_KEYS
            assert message["type"] == "video_frame" and message["format"] == "jpeg"
        assert [m["frame"] for m in json_messages] == list(range(1, len(json_messages) + 1))
        assert json_messages[-1]["fps"] >= 1
        for seq in window:
            header, message = binary[seq], textual[seq]
            assert header["codec"] == 1
            assert header["jpeg"][:2] == b"\xff\xd8"
            for key in ("pixel_width", "pixel_height", "point_width", "point_height"):
                assert header[key] == message[key]
            assert header["input_seq"] == message["input_seq"]
            assert header["timestamp"] == message["timestamp"]


async def test_a_burst_past_the_per_minute_limit_is_refused_with_4029(tmp_path):
    async with running_server(tmp_path, max_connections_per_minute=3) as server:
        url = server.ws_url(server.session_id, "control")
        for _ in range(3):
            async with open_ws(url) as ws:
                await ws.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": 1}))
                assert (await next_json(ws))["type"] == "ack"
        async with open_ws(url) as ws:
            code, reason = await close_of(ws)
        assert code == 4029
        match = re.fullmatch(r"retry_after=(\d+)", reason or "")
        assert match, reason
        assert 1 <= int(match.group(1)) <= 60
        denied = (await server.stats())["rate_limiter"]["denied"]
        assert denied["rate_limited"] == 1


async def test_the_session_cap_refuses_with_4009(tmp_path):
    async with running_server(tmp_path, max_connections_per_session=2) as server:
        sid = server.session_id
        async with (
            open_ws(server.ws_url(sid, "video")) as first,
            open_ws(server.ws_url(sid, "control")) as second,
        ):
            await next_of_type(first, "video_frame")
            await second.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": "x"}))
            assert (await next_json(second))["id"] == "x"
            async with open_ws(server.ws_url(sid, "video")) as third:
                code, reason = await close_of(third)
            assert code == 4009
            assert "limit of 2" in reason
            # The two admitted sockets are unaffected.
            await next_of_type(first, "video_frame")


async def create_session(server, device_type: str) -> str:
    created = await server.http.post(
        "/api/sessions/create", data={"device_type": device_type, "ios_version": "18.0"}
    )
    return created.json()["session_id"]


def evicting_server(tmp_path, *, tcp_user_timeout: float):
    """A 30 fps server that evicts a viewer half a second behind, at full JPEG quality."""
    return running_server(
        tmp_path, fps=30, viewer_deadline=0.5, tcp_user_timeout=tcp_user_timeout, jpeg_quality=95
    )


async def test_a_viewer_that_never_reads_is_dropped_while_others_stream(tmp_path):
    async with evicting_server(tmp_path, tcp_user_timeout=1.0) as server:
        sid = await create_session(server, "iPad (simulated)")
        path = f"/ws/{sid}/video?format=binary"
        received: list[list[int]] = [[], []]

        def active_connections(stats) -> int:
            return stats["connection_manager"]["sessions"][sid]["active_connections"]

        async with (
            open_ws(server.ws_url(sid, "video", "format=binary")) as one,
            open_ws(server.ws_url(sid, "video", "format=binary")) as two,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(collect_seqs, one, received[0])
            nursery.start_soon(collect_seqs, two, received[1])
            async with stalled_viewer(server.host, server.port, path):
                await wait_until(lambda: active_connections_is(server, sid, 3))

                async def evicted() -> bool:
                    return (await server.capture_stats(sid))["evicted"] >= 1

                await wait_until(evicted, within=20)
                counts = [len(seqs) for seqs in received]
                await wait_until(
                    lambda: all(len(s) >= c + 15 for s, c in zip(received, counts, strict=True))
                )
                # The stalled connection itself is let go too (TCP_USER_TIMEOUT), not kept forever.
                await wait_until(lambda: active_connections_is(server, sid, 2), within=20)
                capture = await server.capture_stats(sid)
                assert capture["viewers"] == 2
            nursery.cancel_scope.cancel()
        assert (await server.http.get("/health")).json()["status"] == "healthy"


async def active_connections_is(server, session_id: str, count: int) -> bool:
    stats = await server.stats()
    return stats["connection_manager"]["sessions"][session_id]["active_connections"] == count


async def test_deleting_a_session_closes_its_sockets_with_4004(server):
    sid = await create_session(server, "iPhone 15 (simulated)")
    async with (
        open_ws(server.ws_url(sid, "video")) as video,
        open_ws(server.ws_url(sid, "control")) as control,
        open_ws(server.ws_url(sid, "logs")) as logs,
        open_ws(server.ws_url(sid, "screenshot")) as screenshot,
    ):
        await next_of_type(video, "video_frame")
        await next_of_type(screenshot, "screenshot")
        await wait_until(lambda: active_connections_is(server, sid, 4))
        response = await server.http.delete(f"/api/sessions/{sid}")
        assert response.status_code == 200
        for ws in (video, control, logs, screenshot):
            assert await close_of(ws) == (4004, "session deleted")
    metrics = (await server.stats())["resource_manager"]["metrics"]
    assert metrics["client_connections"] == metrics["client_disconnections"] == 4
    assert (await server.stats())["captures"] == {}


async def test_unknown_sessions_are_closed_with_4004(server):
    for kind in ("video", "control", "screenshot", "logs"):
        async with open_ws(server.ws_url("nope", kind)) as ws:
            assert await close_of(ws) == (4004, "Session not found")


async def test_a_tap_shows_up_as_a_higher_input_seq_in_later_frames(server):
    sid = server.session_id
    async with (
        open_ws(server.ws_url(sid, "video")) as video,
        open_ws(server.ws_url(sid, "control")) as control,
    ):
        before = await next_of_type(video, "video_frame")
        await control.send_message(json.dumps({"t": "tap", "x": 100, "y": 200, "id": "tap-1"}))
        ack = await next_json(control)
        assert ack["type"] == "ack" and ack["id"] == "tap-1"
        assert ack["input_seq"] > before["input_seq"]
        with trio.fail_after(10):
            while (frame := await next_of_type(video, "video_frame"))["input_seq"] < ack[
                "input_seq"
            ]:
                pass
        assert frame["seq"] > before["seq"]
        # Without an id there is no reply, and the next ack counts on.
        await control.send_message(
            json.dumps({"t": "swipe", "start_x": 1, "start_y": 2, "end_x": 3, "end_y": 4})
        )
        await control.send_message(json.dumps({"t": "button", "button": "home", "id": 7}))
        ack = await next_json(control)
        assert ack == {"type": "ack", "id": 7, "input_seq": ack["input_seq"]}
        assert ack["input_seq"] == before["input_seq"] + 3


async def test_bad_control_messages_get_errors_and_the_socket_stays_open(server):
    async with open_ws(server.ws_url(server.session_id, "control")) as control:
        cases = [
            ("not json at all", "JSON"),
            (json.dumps([1, 2]), "message"),
            (json.dumps({"x": 1}), "t"),
            (json.dumps({"t": "fly"}), "t"),
            (json.dumps({"t": "tap", "x": "left", "y": 1}), "x"),
            (json.dumps({"t": "tap", "x": 1}), "y"),
            (json.dumps({"t": "button", "button": "power"}), "button"),
            (json.dumps({"t": "text", "text": ""}), "text"),
            (
                json.dumps(
                    {
                        "t": "swipe",
                        "start_x": 1,
                        "start_y": 1,
                        "end_x": 2,
                        "end_y": 2,
                        "duration": -1,
                    }
                ),
                "duration",
            ),
            (b"\xff\xfe binary", "message"),
        ]
        for message, named in cases:
            await control.send_message(message)
            reply = await next_json(control)
            assert reply["type"] == "error", message
            assert named in reply["message"], (message, reply)
        await control.send_message(json.dumps({"t": "key", "key": "a", "id": "still-here"}))
        assert (await next_json(control))["id"] == "still-here"
    assert server.bridge.get_session(server.session_id).applied_input_seq == 1


async def test_an_oversized_message_closes_with_1009(tmp_path):
    async with running_server(tmp_path, max_message_bytes=4096) as server:
        async with open_ws(server.ws_url(server.session_id, "control")) as control:
            await control.send_message("x" * 5000)
            code, _ = await close_of(control)
            assert code == 1009
        async with open_ws(server.ws_url(server.session_id, "control")) as control:
            await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": 1}))
            assert (await next_json(control))["type"] == "ack"


async def test_bad_video_options_are_named(server):
    cases = (("fps=fast", "fps"), ("fps=0", "fps"), ("fps=0.05", "fps"), ("format=gif", "format"))
    for query, field in cases:
        async with open_ws(server.ws_url(server.session_id, "video", query)) as ws:
            error = await next_json(ws)
            assert error["type"] == "error" and error["message"].startswith(f"{field}:")
            code, reason = await close_of(ws)
            assert code == 1008 and reason.startswith(f"{field}:")


async def test_a_rate_capped_viewer_still_streams(server):
    async with open_ws(server.ws_url(server.session_id, "video", "format=binary&fps=5")) as ws:
        with trio.fail_after(10):
            seqs = [frame_seq(await ws.get_message()) for _ in range(3)]
        assert seqs == sorted(set(seqs))


async def test_the_screenshot_socket(server):
    sid = server.session_id
    async with (
        open_ws(server.ws_url(sid, "screenshot")) as ws,
        open_ws(server.ws_url(sid, "control")) as control,
    ):
        first = await next_json(ws)
        assert list(first) == [
            "type",
            "data",
            "pixel_width",
            "pixel_height",
            "point_width",
            "point_height",
            "format",
        ]
        assert first["type"] == "screenshot" and first["format"] == "jpeg"
        await ws.send_message(json.dumps({"t": "refresh"}))
        assert (await next_json(ws))["type"] == "screenshot"
        await ws.send_message(json.dumps({"t": "tap", "x": 10, "y": 10}))
        assert (await next_json(ws))["type"] == "screenshot"
        await ws.send_message(json.dumps({"t": "zoom"}))
        error = await next_json(ws)
        assert error["type"] == "error" and error["message"].startswith("t:")
        await ws.send_message(json.dumps({"t": "tap", "x": "here", "y": 10}))
        assert (await next_json(ws))["message"].startswith("x:")
        await ws.send_message(json.dumps({"type": "refresh"}))
        assert (await next_json(ws))["type"] == "screenshot"
        await control.send_message(json.dumps({"t": "tap", "x": 1, "y": 1, "id": 0}))
        assert (await next_json(control))["input_seq"] == 2  # the screenshot tap was the first


async def test_the_logs_socket_filters_and_clears(server):
    sid = server.session_id
    async with (
        open_ws(server.ws_url(sid, "logs")) as logs,
        open_ws(server.ws_url(sid, "control")) as control,
    ):
        await logs.send_message(
            json.dumps({"type": "filter", "filter": "INPUT_SEQ=", "level": "info"})
        )
        applied = await next_of_type(logs, "filter_applied")
        assert applied == {"type": "filter_applied", "filter": "INPUT_SEQ=", "level": "info"}
        await control.send_message(json.dumps({"t": "tap", "x": 5, "y": 5, "id": 1}))
        ack = await next_json(control)
        line = await next_of_type(logs, "log")
        assert list(line) == ["type", "timestamp", "process", "pid", "level", "message", "raw_line"]
        assert f"input_seq={ack['input_seq']}" in line["message"]
        assert line["level"] == "info"

        await logs.send_message(json.dumps({"type": "clear"}))
        assert await next_of_type(logs, "clear") == {"type": "clear"}
        await logs.send_message(json.dumps({"type": "filter", "filter": "", "level": "loud"}))
        error = await next_of_type(logs, "error")
        assert error["message"].startswith("level:")
        await logs.send_message("{")
        assert (await next_of_type(logs, "error"))["message"].startswith("message:")
        session = server.bridge.get_session(sid)
        assert session.logs is not None and session.logs.statistics().subscribers == 1


async def test_refusals_never_leave_a_socket_open_and_silent(tmp_path):
    async with running_server(tmp_path, max_connections=1) as server:
        sid = server.session_id
        async with open_ws(server.ws_url(sid, "video")) as first:
            await next_of_type(first, "video_frame")
            async with open_ws(server.ws_url(sid, "logs")) as refused:
                code, reason = await close_of(refused)
            assert code == 1013 and "limit of 1" in reason
        with trio.fail_after(10):
            while True:
                try:
                    async with open_ws(server.ws_url(sid, "logs")) as later:
                        await later.send_message(json.dumps({"type": "clear"}))
                        assert await next_of_type(later, "clear") == {"type": "clear"}
                        break
                except trio_websocket.ConnectionClosed:
                    await trio.sleep(0.02)  # the first socket's release was still on its way


async def test_a_client_that_only_sends_garbage_is_let_go_with_1008(server):
    async with open_ws(server.ws_url(server.session_id, "control")) as control:
        for _ in range(MAX_BAD_MESSAGES):
            await control.send_message("garbage")
        code, reason = await close_of(control)
    assert code == 1008 and "bad messages in a row" in reason


# --- the pure parts -----------------------------------------------------------------------------


def test_close_codes():
    cases = [
        (SessionNotFound("s"), 4004, "Session not found"),
        (SessionNotFound("s", deleted=True), 4004, "session deleted"),
        (RateLimited(0.2), 4029, "retry_after=1"),
        (RateLimited(12.5), 4029, "retry_after=13"),
        (SessionFull("s", 3), 4009, "session 's' has reached its limit of 3 connections"),
        (ServerBusy("full"), 1013, "full"),
        (ViewerEvicted("slow"), 1008, "slow"),
        (CaptureFailed("crashed"), 1011, "crashed"),
        (CaptureStopped("idle"), 1001, "idle"),
        (BadInput("fps", "bad"), 1008, "fps: bad"),
        (ExceptionGroup("nursery", [ViewerEvicted("slow")]), 1008, "slow"),
    ]
    for exc, code, reason in cases:
        assert close_for(exc) == Close(code, reason), exc
    bug = close_for(ZeroDivisionError())
    assert bug is not None and bug.code == 1011 and not bug.expected
    assert close_for(KeyboardInterrupt()) is None
    assert len(close_reason("é" * 200).encode()) <= 123


def test_video_frame_text_is_json_in_protocol_order():
    frame = make_frame(7, timestamp=1700000000.25, captured_at=3.0, input_seq=2)
    message = json.loads(video_frame_text(frame, 3, 30))
    assert list(message) == FRAME_KEYS
    assert message == {
        "type": "video_frame",
        "data": jpeg_base64(frame),
        "pixel_width": 390,
        "pixel_height": 844,
        "point_width": 390,
        "point_height": 844,
        "frame": 3,
        "timestamp": 1700000000.25,
        "fps": 30,
        "format": "jpeg",
        "seq": 7,
        "input_seq": 2,
    }


def test_log_filter():
    line = LogLine("t", "SpringBoard", "62", "warning", "Tap at (1, 2)", "raw Tap at (1, 2)")
    wanted = LogFilter()
    assert wanted.matches(line)
    assert wanted.update({"filter": "tap", "level": "WARNING"}) == {
        "type": "filter_applied",
        "filter": "tap",
        "level": "warning",
    }
    assert wanted.matches(line)
    wanted.update({"filter": "springboard", "level": "error"})
    assert not wanted.matches(line)
    wanted.update({"filter": "nothing like it"})
    assert not wanted.matches(line)
    for bad, field in (({"filter": 3}, "filter"), ({"level": "loud"}, "level")):
        try:
            wanted.update(bad)
        except BadInput as error:
            assert error.field == field
        else:
            raise AssertionError(f"{bad} was accepted")
    assert wanted.text == "nothing like it"  # a refused update changes nothing


async def test_an_evicted_viewer_stuck_in_a_send_is_reset_without_waiting_for_tcp(tmp_path):
    # TCP_USER_TIMEOUT far away: only the eviction can free the stalled connection.
    async with evicting_server(tmp_path, tcp_user_timeout=600.0) as server:
        sid = await create_session(server, "iPad (simulated)")
        async with stalled_viewer(server.host, server.port, f"/ws/{sid}/video?format=binary"):
            await wait_until(lambda: active_connections_is(server, sid, 1))
            connected_at = trio.current_time()
            await wait_until(lambda: active_connections_is(server, sid, 0), within=20)
            released_after = trio.current_time() - connected_at
        # deadline 0.5 s + the stuck-send grace of 1 s, with room for a busy machine. (Whether
        # the handler was stuck in its send when evicted, and so reset, depends on timing; on a
        # loaded machine it may instead have been between sends and left on its own.)
        assert released_after < 6
        metrics = (await server.http.get("/metrics")).text
        assert re.search(r"^bridge_stuck_connections_reset_total [01]\.0$", metrics, re.M)
