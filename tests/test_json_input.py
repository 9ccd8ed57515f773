"""Untrusted JSON: too deep, non-finite numbers, and what the server answers to them."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import next_json, open_ws
from hypothesis import given
from hypothesis import strategies as st

from bridge_actors import BadInput
from bridge_actors._server.json_codec import MAX_JSON_DEPTH, decode_json, encode_json, json_depth


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('{"a": "[[[[{{{{"}', 1),  # brackets in strings do not count
        ('["\\"[[["]', 1),  # nor after an escaped quote
        (nested(1000), 1000),
    ],
)
def test_json_depth(text, depth):
    assert json_depth(text) == depth


def test_decode_json_accepts_what_the_protocol_uses():
    assert decode_json(b'{"t": "tap", "x": 1.5, "id": [1, "a"]}', "body") == {
        "t": "tap",
        "x": 1.5,
        "id": [1, "a"],
    }
    assert decode_json(nested(MAX_JSON_DEPTH), "body") == json.loads(nested(MAX_JSON_DEPTH))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (nested(MAX_JSON_DEPTH + 1), f"nests arrays or objects more than {MAX_JSON_DEPTH} deep"),
        ('{"a":' * 1000 + "1" + "}" * 1000, "nests arrays or objects more than 32 deep"),
        ('{"id": NaN}', "NaN is not a JSON number"),
        ('{"id": Infinity}', "Infinity is not a JSON number"),
        ('{"id": -Infinity}', "-Infinity is not a JSON number"),
        ('{"id": 1e999}', "1e999 is out of range"),
        (b"\xff\xfe", "is not UTF-8 text"),
        ("{", "is not valid JSON"),
        ("1" * 5000, "is not valid JSON"),  # beyond Python's integer digit limit
    ],
)
def test_decode_json_refuses_with_the_problem_named(raw, problem):
    with pytest.raises(BadInput) as refused:
        decode_json(raw, "message")
    assert refused.value.field == "message"
    assert problem in str(refused.value)


def test_encode_json_never_writes_non_finite_numbers():
    assert json.loads(encode_json({"id": 1.5})) == {"id": 1.5}
    with pytest.raises(ValueError):
        encode_json({"id": float("nan")})


async def test_deep_body_on_create_is_a_400_without_traceback(server, caplog):
    body = '{"device_type":' * 1000 + '"x"' + "}" * 1000
    response = await server.http.post(
        "/api/sessions/create", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "detail": f"body: nests arrays or objects more than {MAX_JSON_DEPTH} deep",
        "field": "body",
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("kind", ["control", "screenshot", "logs"])
async def test_deep_message_gets_an_error_reply_and_the_socket_stays(server, kind, caplog):
    async with open_ws(server.ws_url(server.session_id, kind)) as ws:
        if kind == "screenshot":
            assert (await next_json(ws))["type"] == "screenshot"
        await ws.send_message(nested(5000))
        reply = await _next_error(ws)
        assert "nests arrays or objects more than 32 deep" in reply["message"]
        # Still served: a good message gets its answer.
        good = {"control": '{"t":"tap","x":1,"y":1,"id":7}', "screenshot": '{"t":"refresh"}'}
        await ws.send_message(good.get(kind, '{"type":"clear"}'))
        answer = await _next_not_log(ws)
        assert answer["type"] == {"control": "ack", "screenshot": "screenshot"}.get(kind, "clear")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_id_is_refused_and_every_reply_is_json(server, constant):
    async with open_ws(server.ws_url(server.session_id, "control")) as ws:
        await ws.send_message(f'{{"t":"tap","x":1,"y":1,"id":{constant}}}')
        raw = await ws.get_message()
        # Strict JSON: Python's parser would accept NaN, browsers' would not.
        reply = json.loads(raw, parse_constant=_no_constants)
        assert reply["type"] == "error"
        assert "message:" in reply["message"]


def _no_constants(name: str):
    raise AssertionError(f"the server wrote {name}, which is not JSON")


async def _next_error(ws) -> dict:
    while True:
        message = await _next_not_log(ws)
        if message["type"] == "error":
            return message


async def _next_not_log(ws) -> dict:
    while True:
        message = await next_json(ws)
        if message["type"] != "log":
            return message


def _depth_char_by_char(text: str) -> int:
    """The reference: one character at a time, tracking strings and escapes."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@given(st.text(alphabet='[]{}"\\ab,:', max_size=200))
def test_the_depth_scan_agrees_with_a_character_by_character_reading(text):
    assert json_depth(text) == _depth_char_by_char(text)


def test_an_unterminated_string_full_of_escaped_quotes_is_scanned_once():
    # Each quote inside used to restart the string search from scratch (quadratic).
    text = '"' + '\\"' * 100_000
    assert json_depth(text) == 0
    with pytest.raises(BadInput, match="is not valid JSON"):
        decode_json(text, "body")
