"""The accept loop's probe lane: which requests it answers itself, and how."""

import json

from bridge_actors._server.worker import probe_request, probe_response

PROBES = {"/health": lambda: ({"status": "healthy"}, 200), "/readyz": lambda: ({}, 503)}


def test_a_whole_probe_request_is_recognised_with_its_length():
    data = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert probe_request(data, PROBES) == ("GET", "/health", len(data))
    assert probe_request(b"HEAD /readyz HTTP/1.0\r\n\r\n", PROBES) == ("HEAD", "/readyz", 25)


def test_a_probe_with_pipelined_requests_behind_it_is_left_to_the_server():
    # Answering it alone and closing would reset the connection under the requests behind it.
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
    assert probe_request(data, PROBES) is None


def test_anything_else_is_left_to_the_server():
    for data in (
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # not whole yet
        b"GET /stats HTTP/1.1\r\n\r\n",
        b"GET /health?verbose=1 HTTP/1.1\r\n\r\n",
        b"POST /health HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /health SPDY/3\r\n\r\n",
        b"GET /ws/abc/video HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"",
    ):
        assert probe_request(data, PROBES) is None, data


def test_the_answer_is_a_complete_http_response_that_closes():
    response = probe_response("GET", {"status": "healthy"}, 200)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "connection: close" in lines
    assert f"content-length: {len(body)}" in lines
    assert json.loads(body) == {"status": "healthy"}
    head_only = probe_response("HEAD", {}, 503)
    assert head_only.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert head_only.endswith(b"\r\n\r\n")
