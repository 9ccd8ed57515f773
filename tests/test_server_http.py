"""The HTTP routes of docs/protocol.md, end to end against a real server."""

from __future__ import annotations

import re

import trio
from conftest import open_ws, running_server
from prometheus_client.parser import text_string_to_metric_families

from bridge_actors import parse_binary_header

SESSION_INFO_KEYS = {
    "session_id",
    "ios_version",
    "device_type",
    "udid",
    "device_name",
    "created_at",
    "uptime",
    "pid",
    "state",
    "device_width",
    "device_height",
    "stream_width",
    "stream_height",
    "installed_apps",
    "status",
}
LIST_ITEM_KEYS = {
    "session_id",
    "device_type",
    "ios_version",
    "udid",
    "created_at",
    "uptime",
    "installed_apps_count",
    "state",
    "pid",
    "status",
}
CONN_STATS_KEYS = {"total_sessions", "total_connections", "sessions", "rate_limit_buckets"}
RES_STATS_KEYS = {"video_services", "webrtc_services", "total_clients", "metrics", "memory"}


async def test_the_ios_bridge_cli_request_sequence(server):
    http = server.http
    sessions_before = len(server.bridge.list_sessions())

    health = (await http.get("/health")).json()
    assert health["status"] == "healthy"
    assert health["service"] == "bridge_actors"
    assert health["total_sessions"] == sessions_before
    assert set(health["connections"]) == CONN_STATS_KEYS
    assert set(health["resources"]) == RES_STATS_KEYS

    configurations = (await http.get("/api/sessions/configurations")).json()
    assert configurations["success"] is True
    device_types = configurations["configurations"]["device_types"]
    ios_versions = configurations["configurations"]["ios_versions"]
    assert "iPhone 15 (simulated)" in device_types and ios_versions

    listing = (await http.get("/api/sessions/")).json()
    assert listing["success"] is True
    assert [set(item) for item in listing["sessions"]] == [LIST_ITEM_KEYS] * sessions_before

    created = await http.post(
        "/api/sessions/create",
        data={"device_type": "iPhone 15 (simulated)", "ios_version": ios_versions[0]},
    )
    assert created.status_code == 200
    created = created.json()
    assert created["success"] is True
    session_id = created["session_id"]
    assert set(created["session_info"]) == SESSION_INFO_KEYS
    assert created["session_info"]["device_type"] == "iPhone 15 (simulated)"

    info = await http.get(f"/api/sessions/{session_id}")
    assert info.status_code == 200
    info = info.json()
    assert info["success"] is True
    assert set(info["session"]) == SESSION_INFO_KEYS
    assert info["device_width"] == info["session"]["device_width"] > 0
    assert info["device_height"] == info["session"]["device_height"] > 0

    listed = (await http.get("/api/sessions/")).json()["sessions"]
    mine = next(item for item in listed if item["session_id"] == session_id)
    assert mine["status"] == "healthy"  # the CLI shows "Online" only then

    status = (await http.get(f"/status/{session_id}")).json()
    assert set(status) == {"session_id", "udid", "simulator_accessible", "session_info", "status"}
    assert status["simulator_accessible"] is True and status["status"] == "healthy"

    shot = await http.get(f"/api/sessions/{session_id}/screenshot")
    assert shot.status_code == 200
    assert shot.headers["content-type"] == "image/jpeg"
    assert shot.content[:2] == b"\xff\xd8"
    assert shot.headers["content-disposition"] == (
        f"attachment; filename=screenshot_{session_id[:8]}.jpg"
    )

    deleted = (await http.delete(f"/api/sessions/{session_id}")).json()
    assert deleted == {"success": True, "message": f"Session {session_id} deleted"}
    assert len((await http.get("/api/sessions/")).json()["sessions"]) == sessions_before


async def test_status_routes(server):
    everything = (await server.http.get("/status")).json()
    assert everything["status"] == "healthy"
    assert everything["total_sessions"] == 1
    assert set(everything["sessions"][0]) == LIST_ITEM_KEYS
    # Clients depend on the 200 here.
    unknown = await server.http.get("/status/nope")
    assert unknown.status_code == 200
    assert unknown.json() == {"error": "Session not found", "status_code": 404}
    await server.http.delete("/api/sessions/")
    assert (await server.http.get("/status")).json()["status"] == "no_sessions"


async def test_collection_routes_without_the_slash_redirect_with_307(server):
    for method in ("GET", "DELETE"):
        response = await server.http.request(method, "/api/sessions")
        assert response.status_code == 307
        assert response.headers["location"] == "/api/sessions/"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "success": False,
            "detail": "moved to /api/sessions/",
            "location": "/api/sessions/",
        }
    assert len(server.bridge.list_sessions()) == 1  # the DELETE was not carried out


async def test_unknown_sessions_are_404(server):
    http = server.http
    for path in (
        "/api/sessions/nope",
        "/api/sessions/nope/screenshot",
        "/webrtc/quality/nope/high",
    ):
        response = await http.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"success": False, "detail": "Session not found"}
    response = await http.post("/api/sessions/nope/screenshot/download")
    assert response.status_code == 404
    response = await http.delete("/api/sessions/nope")
    assert response.status_code == 404
    assert response.json() == {"success": False, "detail": "Session not found"}


async def test_bad_create_requests_name_the_field_and_change_nothing(server):
    http = server.http
    before = len(server.bridge.list_sessions())
    cases = [
        ({"data": {"ios_version": "18.0"}}, "device_type"),
        ({"data": {"device_type": "iPhone 15 (simulated)"}}, "ios_version"),
        ({"data": {"device_type": "Nokia 3310", "ios_version": "18.0"}}, "device_type"),
        ({"data": {"device_type": "iPhone 15 (simulated)", "ios_version": "2.0"}}, "ios_version"),
        ({"data": {"device_type": "   ", "ios_version": "18.0"}}, "device_type"),
        ({"json": {"device_type": 7, "ios_version": "18.0"}}, "device_type"),
        ({"json": ["device_type"]}, "body"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            "body",
        ),
    ]
    for request, field in cases:
        response = await http.post("/api/sessions/create", **request)
        assert response.status_code == 400, (request, response.text)
        body = response.json()
        assert body["success"] is False
        assert body["field"] == field
        assert body["detail"].startswith(f"{field}:")
        assert "Traceback" not in response.text
    assert len(server.bridge.list_sessions()) == before


async def test_a_json_body_works_too(server):
    response = await server.http.post(
        "/api/sessions/create", json={"device_type": "iPad (simulated)", "ios_version": "18.0"}
    )
    assert response.status_code == 200
    assert response.json()["session_info"]["device_type"] == "iPad (simulated)"


async def test_oversized_bodies_are_413(tmp_path):
    async with running_server(tmp_path, max_body_bytes=2048) as server:
        response = await server.http.post(
            "/api/sessions/create",
            data={"device_type": "x" * 5000, "ios_version": "18.0"},
        )
        assert response.status_code == 413
        assert response.json()["field"] == "body"
        assert len(server.bridge.list_sessions()) == 1
        assert (await server.http.get("/health")).status_code == 200


async def test_session_creation_is_rate_limited_per_address(tmp_path):
    async with running_server(tmp_path, create_sessions_per_minute=2) as server:
        form = {"device_type": "iPhone 15 (simulated)", "ios_version": "18.0"}
        for _ in range(2):
            assert (await server.http.post("/api/sessions/create", data=form)).status_code == 200
        refused = await server.http.post("/api/sessions/create", data=form)
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 60
        assert refused.json()["retry_after"] == wait
        assert len(server.bridge.list_sessions()) == 3
        assert (await server.stats())["server"]["session_creations_refused"] == 1


async def test_other_session_routes(server):
    http = server.http
    sid = server.session_id
    recovered = (await http.post("/api/sessions/recover-orphaned")).json()
    assert recovered["success"] is True and recovered["recovered_count"] == 0
    assert isinstance(recovered["message"], str)
    cleanup = await http.post("/api/sessions/cleanup-recordings")
    assert cleanup.status_code == 200 and cleanup.json()["success"] is True

    quality = (await http.get(f"/webrtc/quality/{sid}/high")).json()
    assert quality["success"] is True and quality["quality"] == "high"
    assert set(quality["settings"]) == {"fps", "resolution", "quality"}
    bad_quality = await http.get(f"/webrtc/quality/{sid}/extreme")
    assert bad_quality.status_code == 400 and bad_quality.json()["field"] == "quality"

    named = await http.post(f"/api/sessions/{sid}/screenshot/download", data={"filename": "home"})
    assert named.status_code == 200
    assert named.headers["content-disposition"] == "attachment; filename=home.jpg"
    bad_name = await http.post(
        f"/api/sessions/{sid}/screenshot/download", data={"filename": "../../etc/passwd"}
    )
    assert bad_name.status_code == 400 and bad_name.json()["field"] == "filename"

    not_allowed = await http.put(f"/api/sessions/{sid}")
    assert not_allowed.status_code == 405
    assert not_allowed.json() == {"success": False, "detail": "Method Not Allowed"}

    deleted = (await http.delete("/api/sessions/")).json()
    assert deleted == {"success": True, "deleted_count": 1, "message": "Deleted 1 sessions"}


async def test_liveness_and_readiness(server):
    assert (await server.http.get("/livez")).json() == {"status": "ok"}
    ready = await server.http.get("/readyz")
    assert ready.status_code == 200
    server.bridge.begin_drain()
    draining = await server.http.get("/readyz")
    assert draining.status_code == 503
    assert "draining" in draining.json()["reasons"]
    assert (await server.http.get("/livez")).status_code == 200


async def test_the_web_viewer_is_served(server):
    index = await server.http.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert (await server.http.get("/static/index.html")).content == index.content
    missing = await server.http.get("/static/no-such-file.js")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "detail": "Not Found"}


async def test_stats_and_metrics_while_streaming(server):
    sid = server.session_id
    async with open_ws(server.ws_url(sid, "video", "format=binary")) as ws:
        with trio.fail_after(10):
            first = parse_binary_header(await ws.get_message())
        assert first["seq"] >= 1
        stats = await server.stats()
        for key in (
            "success",
            "timestamp",
            "connection_manager",
            "resource_manager",
            "rate_limiter",
            "warden",
            "supervisor",
            "captures",
        ):
            assert key in stats
        capture = await server.capture_stats()
        assert capture["viewers"] == 1
        assert capture["backend"] == "simulated"
        for key in ("fps_in", "fps_out", "frames_in", "restarts", "last_error", "source"):
            assert key in capture
        assert len(capture["dropped_per_viewer"]) == 1
        metrics = stats["resource_manager"]["metrics"]
        assert metrics["client_connections"] - metrics["client_disconnections"] == 1
        assert stats["connection_manager"]["sessions"][sid]["connection_types"] == {"video": 1}

        text = (await server.http.get("/metrics")).text
        families = {family.name: family for family in text_string_to_metric_families(text)}
        for name in (
            "bridge_capture_viewers",
            "bridge_capture_frames_in",
            "bridge_capture_frames_delivered",
            "bridge_capture_frames_dropped",
            "bridge_connections_refused",
            "bridge_rate_limit_buckets",
            "bridge_resident_memory_bytes",
            "bridge_capture_restarts",
            "bridge_warden_tier",
        ):
            assert name in families, name
        viewers = families["bridge_capture_viewers"].samples
        assert [sample.value for sample in viewers] == [1.0]
        tiers = {s.labels["tier"]: s.value for s in families["bridge_warden_tier"].samples}
        assert tiers == {"normal": 1.0, "elevated": 0.0, "critical": 0.0}
    with trio.fail_after(10):
        while True:
            metrics = (await server.stats())["resource_manager"]["metrics"]
            if metrics["client_connections"] == metrics["client_disconnections"]:
                break
            await trio.sleep(0.02)


async def test_the_viewer_files_are_revalidated_on_every_load(server):
    for path in ("/", "/static/app.js"):
        response = await server.http.get(path)
        assert response.status_code == 200
        assert "max-age=0" in response.headers["cache-control"]


async def test_a_download_name_with_spaces_is_quoted(server):
    response = await server.http.post(
        f"/api/sessions/{server.session_id}/screenshot/download", data={"filename": "my shot.jpg"}
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="my shot.jpg"'


async def test_probes_answer_head_and_get_alike(server):
    for path in ("/health", "/livez", "/readyz"):
        got = await server.http.get(path)
        head = await server.http.head(path)
        assert got.status_code == head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(len(got.content))
        assert got.headers["cache-control"] == "no-store"


async def test_stats_give_no_memory_growth_before_its_window(server):
    kpis = (await server.stats())["kpis"]
    # A fresh server has not run past the warm-up and the window: no extrapolated figure.
    assert kpis["rss_growth_mb_per_hour"] is None
    assert kpis["rss_growth_window_s"] == 0.0
    assert kpis["rss_growth_min_window_s"] == 600.0


async def test_a_slash_redirect_answers_json(server):
    response = await server.http.get("/api//sessions/configurations")  # merged by a redirect
    assert response.status_code == 308
    assert response.headers["content-type"] == "application/json"
    assert response.headers["location"].endswith("/api/sessions/configurations")
    assert response.json()["location"] == response.headers["location"]


async def test_the_reference_documents_every_route(server):
    from bridge_actors._server.fields import CreateSessionBody

    response = await server.http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    app_rules = {
        (rule.rule, method)
        for rule in _app_of(server).url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (re.sub(r"\{(\w+)\}", r"<\1>", path), method.upper())
        for path, operations in paths.items()
        for method in operations
    }
    assert documented == app_rules
    create = paths["/api/sessions/create"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema == CreateSessionBody.model_json_schema()
    assert set(schema["required"]) == {"device_type", "ios_version"}
    assert paths["/api/sessions/{session_id}"]["get"]["parameters"][0]["name"] == "session_id"
    assert paths["/ws/{session_id}/video"]["get"]["tags"] == ["websocket"]
    assert "4004" in paths["/ws/{session_id}/video"]["get"]["description"]
    assert all(op["summary"] for ops in paths.values() for op in ops.values())
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["success", "detail"]


async def test_the_docs_page_and_its_script_are_served_locally(server):
    page = await server.http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") for source in sources)  # no CDN
    for source in sources:
        assert (await server.http.get(source)).status_code == 200, source


async def test_every_error_body_has_the_same_shape(server):
    sid = server.session_id
    answers = [
        await server.http.get("/api/sessions/nope"),
        await server.http.delete("/api/sessions/nope"),
        await server.http.post("/api/sessions"),
        await server.http.put(f"/api/sessions/{sid}"),
        await server.http.get("/no/such/route"),
        await server.http.post("/api/sessions/create", data={"device_type": "x"}),
        await server.http.get(f"/webrtc/quality/{sid}/extreme"),
        await server.http.post(f"/api/sessions/{sid}/recording/stop"),
    ]
    for response in answers:
        assert response.status_code >= 400, response.request.url
        body = response.json()
        assert body["success"] is False and isinstance(body["detail"], str), body


def _app_of(server):
    from bridge_actors._server.app import create_app

    return create_app(server.bridge)
