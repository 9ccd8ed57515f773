"""HTTP/1.x as clients we did not write speak it, over raw sockets: connections end
when they should, slow clients are cut, pipelined requests are answered in order,
and no descriptor outlives its connection."""

from __future__ import annotations

import json

import trio
from conftest import running_server
from raw import (
    connect,
    open_descriptors,
    raw_websocket,
    read_response,
    read_to_eof,
    responses_in,
    status_of,
    wait_until,
    ws_frame,
    ws_handshake,
)

CONFIGURATIONS = b"GET /api/sessions/configurations HTTP/1.1\r\nHost: 127.0.0.1\r\n"


async def test_connection_close_is_followed_by_the_server_closing(tmp_path):
    async with running_server(tmp_path) as server:
        stream = await connect(server.port)
        await stream.send_all(CONFIGURATIONS + b"Connection: close\r\n\r\n")
        data = await read_to_eof(stream)
        assert status_of(data) == 200
        assert b"device_types" in data


async def test_http_1_0_without_keep_alive_is_closed_after_its_response(tmp_path):
    async with running_server(tmp_path) as server:
        for path in (b"/api/sessions/configurations", b"/health", b"/stats"):
            stream = await connect(server.port)
            await stream.send_all(b"GET " + path + b" HTTP/1.0\r\n\r\n")
            data = await read_to_eof(stream)
            assert status_of(data) == 200, data[:200]


async def test_an_idle_keep_alive_connection_closes_after_the_keep_alive_timeout(tmp_path):
    async with running_server(tmp_path, keep_alive_timeout=0.5) as server:
        stream = await connect(server.port)
        buffered = bytearray()
        for _ in range(2):  # kept alive between requests...
            await stream.send_all(CONFIGURATIONS + b"\r\n")
            head, _ = await read_response(stream, buffered)
            assert status_of(head) == 200
        assert await read_to_eof(stream) == b""  # ...and closed once idle, with nothing more


async def test_a_new_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(
    tmp_path,
):
    async with running_server(tmp_path, keep_alive_timeout=0.5) as server:
        stream = await connect(server.port)
        assert await read_to_eof(stream) == b""


async def test_headers_that_do_not_arrive_in_time_get_408_and_a_close(tmp_path):
    async with running_server(tmp_path, keep_alive_timeout=0.2, header_timeout=1.0) as server:
        stream = await connect(server.port)
        await stream.send_all(b"GET /api/sessions/ HTTP/1.1\r\nHo")
        # The header deadline, not the shorter keep-alive timer, governs a request under way.
        data = await read_to_eof(stream)
        assert status_of(data) == 408
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert body == {"success": False, "detail": "request headers not received within 1 s"}


async def test_dribbling_header_bytes_does_not_extend_the_header_deadline(tmp_path):
    async with running_server(tmp_path, header_timeout=1.0) as server:
        stream = await connect(server.port)
        received = bytearray()

        async def dribble() -> None:
            for byte in b"GET /api/sessions/ HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            received += await read_to_eof(stream)
            nursery.cancel_scope.cancel()
        assert status_of(bytes(received)) == 408


async def test_an_unfinished_body_gets_408_and_a_close(tmp_path):
    async with running_server(tmp_path, body_timeout=0.5) as server:
        stream = await connect(server.port)
        await stream.send_all(
            b"POST /api/sessions/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\nabc"
        )
        data = await read_to_eof(stream)
        assert status_of(data) == 408
        assert b"request body stalled for 0.5 s" in data
        assert server.bridge.list_sessions()[0].session_id == server.session_id
        assert len(server.bridge.list_sessions()) == 1


async def test_a_body_that_keeps_moving_is_not_cut(tmp_path):
    async with running_server(tmp_path, body_timeout=1.0) as server:
        body = json.dumps({"device_type": "iPhone 15", "ios_version": "17.0"}).encode()
        stream = await connect(server.port)
        await stream.send_all(
            b"POST /api/sessions/create HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), len(body) // 4 + 1):  # longer in all than the timeout
            await trio.sleep(0.4)
            await stream.send_all(body[start : start + len(body) // 4 + 1])
        data = await read_to_eof(stream)
        assert status_of(data) != 408, data[:300]


async def test_pipelined_requests_are_answered_in_order_then_closed(tmp_path):
    async with running_server(tmp_path) as server:
        for first in (b"/health", b"/api/sessions/"):
            stream = await connect(server.port)
            await stream.send_all(
                b"GET "
                + first
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + CONFIGURATIONS
                + b"\r\n"
                + b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            data = await read_to_eof(stream)
            assert responses_in(data) == 3, data
            assert data.index(b"device_types") < data.rindex(b'{"status":"ok"}')


async def test_descriptors_return_to_the_baseline_after_many_connection_close_requests(tmp_path):
    async with running_server(tmp_path) as server:
        for _ in range(3):  # warm up whatever the first requests open
            stream = await connect(server.port)
            await stream.send_all(CONFIGURATIONS + b"Connection: close\r\n\r\n")
            await read_to_eof(stream)
            await stream.aclose()
        baseline = open_descriptors()
        for _ in range(200):
            stream = await connect(server.port)
            await stream.send_all(CONFIGURATIONS + b"Connection: close\r\n\r\n")
            assert status_of(await read_to_eof(stream)) == 200
            await stream.aclose()
        await wait_until(lambda: open_descriptors() <= baseline)


async def test_descriptors_return_to_the_baseline_when_idle_clients_never_close(tmp_path):
    async with running_server(tmp_path, keep_alive_timeout=0.5) as server:
        baseline = open_descriptors()
        streams = []
        for _ in range(50):
            stream = await connect(server.port)
            await stream.send_all(CONFIGURATIONS + b"\r\n")
            await read_response(stream, bytearray())
            streams.append(stream)  # held open by the client, never closed by it
        # Each client holds its own end: the server's ends are what must go.
        await wait_until(lambda: open_descriptors() <= baseline + len(streams))
        for stream in streams:
            assert await read_to_eof(stream) == b""
            await stream.aclose()


async def test_websocket_data_before_the_handshake_is_answered_ends_only_that_connection(
    tmp_path,
):
    async with running_server(tmp_path) as server:
        stream = await connect(server.port)
        await stream.send_all(
            f"GET /ws/{server.session_id}/control HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            + ws_frame(b'{"t":"tap","x":1,"y":1}') * 20
        )
        await read_to_eof(stream)
        response = await server.http.get("/health")
        assert response.status_code == 200
        async with raw_websocket(server.port, f"/ws/{server.session_id}/control"):
            pass


async def test_http2_with_prior_knowledge_is_answered_505_and_closed(tmp_path):
    async with running_server(tmp_path) as server:
        stream = await connect(server.port)
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = await read_to_eof(stream)
        assert status_of(data) == 505


async def test_an_h2c_upgrade_is_ignored_and_served_as_http_1_1(tmp_path):
    async with running_server(tmp_path) as server:
        stream = await connect(server.port)
        await stream.send_all(
            CONFIGURATIONS + b"Connection: Upgrade, HTTP2-Settings, close\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        data = await read_to_eof(stream)
        assert status_of(data) == 200
        assert b"device_types" in data


async def test_a_second_request_under_way_gets_the_header_deadline_not_the_keep_alive_timer(
    tmp_path,
):
    async with running_server(tmp_path, keep_alive_timeout=0.3, header_timeout=1.5) as server:
        stream = await connect(server.port)
        buffered = bytearray()
        await stream.send_all(CONFIGURATIONS + b"\r\n")
        head, _ = await read_response(stream, buffered)
        assert status_of(head) == 200
        await stream.send_all(b"GET /api/sessions/ HTTP/1.1\r\nHo")
        # The keep-alive timer (0.3 s) must not cut a request that has begun.
        data = await read_to_eof(stream)
        assert status_of(data) == 408, data


async def test_a_408_is_never_written_into_a_response_already_under_way(tmp_path):
    async with running_server(tmp_path, body_timeout=0.5) as server:
        stream = await connect(server.port, receive_buffer=4096)
        # A body is announced and never sent, while the (large) answer cannot be read.
        await stream.send_all(
            b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n"
        )
        await trio.sleep(1.5)  # the client stalls past the body deadline, not reading
        data = await read_to_eof(stream)
        assert responses_in(data) == 1, data[:100]
        assert status_of(data) == 200


async def test_a_browsers_permessage_deflate_offer_is_declined_and_frames_come_plain(tmp_path):
    # Chromium's offer, word for word; a deflated stream would be compressed per viewer.
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    async with running_server(tmp_path) as server:
        path = f"/ws/{server.session_id}/video?format=binary"
        async with await connect(server.port) as stream:
            head = await ws_handshake(stream, path, offer)
            assert b"sec-websocket-extensions" not in head.lower()
            frame = bytearray()
            with trio.fail_after(10):
                while len(frame) < 2 + 8 + 32 + 2:
                    frame += await stream.receive_some(65536)
        assert frame[0] & 0x70 == 0, "RSV1 set: the message was compressed"
        assert frame[0] & 0x0F == 0x2  # binary
        payload = frame[10:] if frame[1] & 0x7F == 127 else frame[4:]
        assert payload[:4] == b"BAV1" and payload[32:34] == b"\xff\xd8"  # header, then JPEG
