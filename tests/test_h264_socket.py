"""``/ws/{id}/video?format=binary&codec=h264`` through the real server, read by trio-websocket."""

from __future__ import annotations

import json

import av
import trio
from conftest import close_of, next_json, open_ws

from bridge_actors import parse_binary_header
from bridge_actors.wire import CODEC_H264


async def test_h264_socket_sends_annexb_access_units_that_decode(server):
    sid = server.session_id
    device = server.bridge.get_session(sid).device
    async with open_ws(server.ws_url(sid, "video", "format=binary&codec=h264")) as ws:
        with trio.fail_after(20):
            headers = [parse_binary_header(await ws.get_message()) for _ in range(12)]
            await ws.send_message(json.dumps({"type": "keyframe"}))
            while not parse_binary_header(await ws.get_message())["keyframe"]:
                pass
    first = headers[0]
    assert all(h["codec"] == CODEC_H264 for h in headers)
    assert first["keyframe"] and not all(h["keyframe"] for h in headers)
    assert (first["pixel_width"], first["point_height"]) == (
        device.pixel_width,
        device.point_height,
    )
    seqs = [h["seq"] for h in headers]
    assert seqs == sorted(set(seqs))
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for h in headers for p in decoder.decode(av.Packet(h["payload"]))]
    assert len(pictures) == len(headers)
    assert (pictures[0].width, pictures[0].height) == (device.pixel_width, device.pixel_height)


async def test_jpeg_viewers_keep_working_beside_an_h264_one(server):
    sid = server.session_id
    async with (
        open_ws(server.ws_url(sid, "video", "format=binary&codec=h264")) as h264,
        open_ws(server.ws_url(sid, "video", "format=binary")) as jpeg,
    ):
        with trio.fail_after(20):
            for _ in range(5):
                assert parse_binary_header(await h264.get_message())["codec"] == CODEC_H264
                assert parse_binary_header(await jpeg.get_message())["payload"][:2] == b"\xff\xd8"
        stats = await server.stats()
        metrics = (await server.http.get("/metrics")).text
    assert len(server.bridge.encoders.services()) == 1
    udid = server.bridge.get_session(sid).device.udid
    assert f'bridge_h264_feeds{{udid="{udid}"}} 1.0' in metrics
    assert f'bridge_h264_keyframes_total{{udid="{udid}"}}' in metrics
    [encoder] = stats["h264"].values()
    assert encoder["feeds"] == 1 and encoder["frames_encoded"] >= 5
    assert encoder["codec"].startswith("avc1.42") and encoder["keyframes"] >= 1


async def test_bad_codec_options_are_named(server):
    cases = (
        ("format=binary&codec=vp9", "codec"),
        ("codec=h264", "codec"),
        ("format=binary&codec=h264&fps=5", "fps"),
    )
    for query, field in cases:
        async with open_ws(server.ws_url(server.session_id, "video", query)) as ws:
            error = await next_json(ws)
            assert error["type"] == "error" and error["message"].startswith(f"{field}:")
            code, reason = await close_of(ws)
            assert code == 1008 and reason.startswith(f"{field}:")


async def test_unknown_session_closes_with_4004(server):
    async with open_ws(server.ws_url("nope", "video", "format=binary&codec=h264")) as ws:
        code, _ = await close_of(ws)
    assert code == 4004
