"""Any input, on every REST form and JSON body and every WebSocket: a 4xx or a documented
close code or error reply; never a 500, a traceback in the log or a hang.

One server serves every example (in a thread of its own, so that Hypothesis can run
its examples one after another against it), and it must be healthy afterwards.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
import trio_websocket
from conftest import TEST_DEFAULTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_actors import Settings, open_bridge, serve

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STEP_TIMEOUT = 10.0
# The close codes docs/protocol.md documents for what a client sends (README, "The wire protocol").
CLIENT_CLOSE_CODES = {1000, 1008, 1009}
MAX_MESSAGE_BYTES = 4096


@dataclass
class LiveServer:
    url: str
    ws: str
    session_id: str
    problems: list[logging.LogRecord]


class _Problems(logging.Handler):
    """Every log record with a traceback or at ERROR and above."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.into.append(record)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["token"], box["stop"] = trio.lowlevel.current_trio_token(), stop
        values = {
            **TEST_DEFAULTS,
            "max_connections_per_minute": 100_000,
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "state_dir": tmp_path_factory.mktemp("fuzz"),
        }
        async with open_bridge(Settings(**values)) as bridge, trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve, bridge, host="127.0.0.1", port=0, shutdown_trigger=stop.wait)
            )
            box["server"] = LiveServer(
                f"http://{host}:{port}",
                f"ws://{host}:{port}",
                bridge.list_sessions()[0].session_id,
                problems,
            )
            ready.set()

    problems: list[logging.LogRecord] = []
    handler = _Problems(problems)
    logging.getLogger().addHandler(handler)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            box["failure"] = exc
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the server did not start"
        yield box["server"]
        assert_healthy(box["server"])
    finally:
        if "stop" in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)
        logging.getLogger().removeHandler(handler)
    assert not thread.is_alive(), "the server did not stop"
    assert "failure" not in box, box.get("failure")


def assert_healthy(live: LiveServer) -> None:
    """The server still serves, and nothing so far logged an error or a traceback."""
    health = httpx.get(live.url + "/health", timeout=STEP_TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    reply = trio.run(_control_round_trip, live, ['{"t":"tap","x":1,"y":1,"id":"probe"}'])
    assert reply[-1]["type"] == "ack"
    assert_no_problems(live)


def assert_no_problems(live: LiveServer) -> None:
    """Nothing logged an error or a traceback (our bug, whatever the client sent)."""
    formatter = logging.Formatter()
    found = [formatter.format(record) for record in live.problems]
    live.problems.clear()  # one report per example, so Hypothesis can shrink to it
    assert found == [], "\n".join(found)


# --- strategies --------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
CONTROL_KEYS = st.sampled_from(
    ["t", "type", "x", "y", "id", "key", "text", "button", "duration", "filter", "level",
     "start_x", "start_y", "end_x", "end_y", "startX", "startY", "endX", "endY"]
)  # fmt: skip
CONTROL_KINDS = st.sampled_from(
    ["tap", "swipe", "text", "button", "key", "refresh", "filter", "clear", "", "TAP"]
)
# Objects shaped like the protocol's messages, so that the parsers behind decoding are reached.
MESSAGE_OBJECTS = st.builds(
    lambda kind, extra: {"t": kind, **extra} if kind is not None else extra,
    st.none() | CONTROL_KINDS | JSON_VALUES,
    st.dictionaries(CONTROL_KEYS | st.text(max_size=8), JSON_VALUES, max_size=6),
)


def nested(depth: int) -> str:
    return '{"t":' * depth + '"tap"' + "}" * depth


MESSAGE_TEXTS = (
    MESSAGE_OBJECTS.map(lambda value: json.dumps(value, allow_nan=True))
    | JSON_VALUES.map(lambda value: json.dumps(value, allow_nan=True))
    | st.integers(min_value=1, max_value=3000).map(nested)
    | st.text(max_size=200)
)
MESSAGES = MESSAGE_TEXTS | st.binary(max_size=200) | MESSAGE_TEXTS.map(str.encode)
FIELD_NAMES = st.sampled_from(["device_type", "ios_version", "filename"]) | st.text(max_size=10)
FORMS = st.dictionaries(FIELD_NAMES, st.text(max_size=300), max_size=4)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded",
     "multipart/form-data", "multipart/form-data; boundary=x", "application/json; charset=latin-1",
     ""]
)  # fmt: skip
RAW_BODIES = MESSAGE_TEXTS.map(str.encode) | st.binary(max_size=300)


# --- REST ---------------------------------------------------------------------------------------


def assert_refused_or_served(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert body["success"] is False and isinstance(body["detail"], str), body


def body_paths(live: LiveServer) -> list[str]:
    return ["/api/sessions/create", f"/api/sessions/{live.session_id}/screenshot/download"]


@EXAMPLES
@given(which=st.integers(0, 1), form=FORMS, multipart=st.booleans())
def test_any_form(live, which, form, multipart):
    path = body_paths(live)[which]
    if multipart:
        files = {name or "_": (None, value) for name, value in form.items()}
        response = httpx.post(live.url + path, files=files, timeout=STEP_TIMEOUT)
    else:
        response = httpx.post(live.url + path, data=form, timeout=STEP_TIMEOUT)
    assert_refused_or_served(response)
    assert_no_problems(live)


@EXAMPLES
@given(which=st.integers(0, 1), body=RAW_BODIES, content_type=CONTENT_TYPES)
def test_any_body(live, which, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(
        live.url + body_paths(live)[which], content=body, headers=headers, timeout=STEP_TIMEOUT
    )
    assert_refused_or_served(response)
    assert_no_problems(live)


@EXAMPLES
@given(document=MESSAGE_OBJECTS | JSON_VALUES, which=st.integers(0, 1))
def test_any_json_document(live, document, which):
    response = httpx.post(
        live.url + body_paths(live)[which],
        content=json.dumps(document, allow_nan=True),
        headers={"Content-Type": "application/json"},
        timeout=STEP_TIMEOUT,
    )
    assert_refused_or_served(response)
    assert_no_problems(live)


PATH_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)


@EXAMPLES
@given(
    template=st.sampled_from(
        [
            "/api/sessions/{}",
            "/api/sessions/{}/screenshot",
            "/status/{}",
            "/webrtc/quality/{sid}/{}",
            "/webrtc/quality/{}/high",
            "/api/sessions/{}/recording/status",
        ]
    ),
    value=PATH_TEXT,
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
)
def test_any_path_parameter(live, template, value, method):
    if value == live.session_id and method == "DELETE":
        return  # the one session every other example needs
    path = template.replace("{sid}", live.session_id).format(quote(value, safe=""))
    response = httpx.request(method, live.url + path, timeout=STEP_TIMEOUT)
    assert_refused_or_served(response)
    assert_no_problems(live)


# --- WebSockets -----------------------------------------------------------------------------


async def _control_round_trip(live: LiveServer, messages: list[str | bytes]) -> list[dict]:
    """Send ``messages`` on a control socket; every reply, up to the answer to the last."""
    url = f"{live.ws}/ws/{live.session_id}/control"
    replies = []
    with trio.fail_after(STEP_TIMEOUT):
        async with trio_websocket.open_websocket_url(url) as ws:
            for message in messages:
                await ws.send_message(message)
            while True:
                reply = json.loads(await ws.get_message())
                replies.append(reply)
                if reply.get("id") == "probe":
                    return replies


# What a socket answers a good message with, once everything before it was handled.
PROBES = {
    "control": ('{"t":"tap","x":1,"y":1,"id":"probe"}', lambda m: m.get("id") == "probe"),
    "screenshot": ('{"t":"refresh"}', lambda m: m.get("type") == "screenshot"),
    "logs": (
        '{"type":"filter","filter":"probe-marker"}',
        lambda m: m.get("filter") == "probe-marker",
    ),
    "video": ("", lambda m: True),  # any frame
}


def _not_json(name: str) -> Any:
    raise AssertionError(f"the server wrote {name}, which is not JSON")


async def _exchange(live: LiveServer, kind: str, query: str, messages: list) -> int | None:
    """Send ``messages``, then the probe; None if the probe was answered, else the close code."""
    url = f"{live.ws}/ws/{live.session_id}/{kind}" + (f"?{query}" if query else "")
    probe, answered = PROBES[kind]
    with trio.fail_after(STEP_TIMEOUT):
        async with trio_websocket.open_websocket_url(url) as ws:
            try:
                if kind == "screenshot":
                    await ws.get_message()  # the first screenshot comes unasked
                for message in messages:
                    await ws.send_message(message)
                if probe:
                    await ws.send_message(probe)
                while True:
                    reply = await ws.get_message()
                    if isinstance(reply, bytes):
                        if kind == "video":
                            return None
                        continue
                    decoded = json.loads(reply, parse_constant=_not_json)
                    if answered(decoded):
                        return None
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code


@EXAMPLES
@given(
    kind=st.sampled_from(["control", "screenshot", "logs", "video"]),
    messages=st.lists(MESSAGES, min_size=1, max_size=5),
)
def test_any_websocket_message(live, kind, messages):
    code = trio.run(_exchange, live, kind, "", messages)
    assert_no_problems(live)
    assert code is None or code in CLIENT_CLOSE_CODES, code
    if code == 1009:
        assert any(
            len(m if isinstance(m, bytes) else m.encode()) > MAX_MESSAGE_BYTES for m in messages
        )


@EXAMPLES
@given(
    query=st.dictionaries(
        st.sampled_from(["format", "fps", "other"]),
        st.sampled_from(["json", "binary", "0", "0.05", "30", "nan", "inf", "-1", "1e999"])
        | st.text(max_size=10),
        max_size=3,
    )
)
def test_any_video_options(live, query):
    code = trio.run(_exchange, live, "video", str(httpx.QueryParams(query)), [])
    assert_no_problems(live)
    assert code is None or code == 1008, code


def test_the_server_is_healthy_after_all_of_it(live):
    assert_healthy(live)
