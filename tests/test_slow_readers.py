"""Clients that read slower than the device: whatever the socket could not take at once is
finished before anything else, so every byte a slow client reads parses, in both binary
formats, whole messages up to a clean close."""

from __future__ import annotations

import itertools

import av
import trio
from conftest import open_ws
from raw import PATIENCE, raw_websocket, wait_until
from wsproto.connection import Connection as WebSocketConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection

from bridge_actors import parse_binary_header
from bridge_actors.wire import CODEC_H264, CODEC_JPEG


def h264_skips(server) -> int:
    return sum(
        feed.skips
        for service in server.bridge.encoders.services()
        for feed in service.statistics().per_feed
    )


def jpeg_drops(server) -> int:
    return sum(
        service.fanout.statistics().frames_dropped for service in server.bridge.pool.services()
    )


async def read_slowly_until_closed(server, query: str, fell_behind) -> list[dict]:
    """Read through a 4 KiB receive buffer until the viewer has fallen behind, then 20
    messages, delete the session and read on to its close; every message's header."""
    sid = server.session_id
    async with raw_websocket(
        server.port, f"/ws/{sid}/video?{query}", receive_buffer=4096
    ) as stream:
        await wait_until(fell_behind)
        client = WebSocketConnection(ConnectionType.CLIENT)
        messages: list[bytes] = []
        partial = b""
        closing = None
        deleted = False
        with trio.fail_after(PATIENCE):
            while closing is None:
                if len(messages) >= 20 and not deleted:
                    deleted = True
                    response = await server.http.delete(f"/api/sessions/{sid}")
                    assert response.status_code == 200
                data = await stream.receive_some(65536)
                assert data, "the server closed without a close frame"
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, CloseConnection):
                        closing = event
                    else:
                        assert isinstance(event, BytesMessage), event
                        partial += event.data
                        if event.message_finished:
                            messages.append(partial)
                            partial = b""
    assert closing.code in (1001, 4004) and not partial, closing
    assert len(messages) >= 20
    headers = [parse_binary_header(message) for message in messages]
    seqs = [header["seq"] for header in headers]
    assert seqs == sorted(set(seqs))
    return headers


async def test_a_lagging_h264_viewer_skips_to_a_keyframe_and_every_access_unit_decodes(server):
    headers = await read_slowly_until_closed(
        server, "format=binary&codec=h264", lambda: h264_skips(server) >= 1
    )
    assert all(header["codec"] == CODEC_H264 for header in headers)
    skips = [b for a, b in itertools.pairwise(headers) if b["seq"] != a["seq"] + 1]
    assert skips and all(after["keyframe"] for after in skips)
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for h in headers for p in decoder.decode(av.Packet(h["payload"]))]
    assert len(pictures) == len(headers)


async def test_a_lagging_jpeg_viewer_drops_frames_and_reads_whole_pictures(server):
    headers = await read_slowly_until_closed(
        server, "format=binary", lambda: jpeg_drops(server) >= 1
    )
    assert all(header["codec"] == CODEC_JPEG for header in headers)
    assert all(
        h["payload"][:2] == b"\xff\xd8" and h["payload"][-2:] == b"\xff\xd9" for h in headers
    )
    seqs = [header["seq"] for header in headers]
    assert seqs[-1] - seqs[0] >= len(seqs)  # frames were dropped, not queued
    written = (await server.http.get("/stats")).json()["server"]["written_at_once"]["binary"]
    assert written["in_part"] >= 1, written
    metrics = (await server.http.get("/metrics")).text
    assert 'bridge_frames_written_at_once_total{format="binary",written="in_part"}' in metrics


async def test_a_viewer_that_keeps_up_is_written_whole_frames_by_the_publisher(server):
    async with open_ws(server.ws_url(server.session_id, "video", "format=binary")) as ws:
        with trio.fail_after(PATIENCE):
            headers = [parse_binary_header(await ws.get_message()) for _ in range(30)]
    assert all(
        h["payload"][:2] == b"\xff\xd8" and h["payload"][-2:] == b"\xff\xd9" for h in headers
    )
    written = (await server.http.get("/stats")).json()["server"]["written_at_once"]["binary"]
    assert written["whole"] >= 1 and written["in_part"] == 0, written
