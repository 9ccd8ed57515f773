"""Authorization end to end through the real server: every route, every role, both modes.

The table ``ROUTES`` classifies every REST route of the app's url_map and every
WebSocket kind; a route added without a line here fails the first test, so no
route reaches a release unclassified (an unclassified route is admin-only).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import RunningServer, close_of, next_of_type, open_ws, running_server

from bridge_actors import Settings, open_bridge, serve
from bridge_actors._errors import InvalidSettings
from bridge_actors._server.app import create_app
from bridge_actors._server.authz import Role
from bridge_actors._server.guard import Gatekeeper, _view_permission
from bridge_actors._server.tokens import TokenEntry, mint_token

# (endpoint, method) -> what it needs: public, watch, control or admin.
ROUTES: dict[tuple[str, str], str] = {
    ("static", "GET"): "public",
    ("viewer.index", "GET"): "public",
    ("viewer.docs", "GET"): "public",
    ("viewer.openapi", "GET"): "public",
    ("monitoring.livez", "GET"): "public",
    ("monitoring.readyz", "GET"): "public",
    ("monitoring.health", "GET"): "public",  # a probe, answered in front of the app too
    ("monitoring.metrics", "GET"): "watch",
    ("monitoring.stats", "GET"): "admin",
    ("monitoring.status_all", "GET"): "watch",
    ("monitoring.status_one", "GET"): "watch",
    ("sessions.configurations", "GET"): "watch",
    ("sessions.create_session", "POST"): "admin",
    ("sessions.sessions_without_slash", "GET"): "watch",
    ("sessions.sessions_without_slash", "DELETE"): "watch",  # a redirect to the admin route
    ("sessions.list_sessions", "GET"): "watch",
    ("sessions.delete_all_sessions", "DELETE"): "admin",
    ("sessions.recover_orphaned", "POST"): "admin",
    ("sessions.session_info", "GET"): "watch",
    ("sessions.delete_session", "DELETE"): "admin",
    ("extras.screenshot", "GET"): "watch",
    ("extras.screenshot_download", "POST"): "watch",
    ("recording.start_recording", "POST"): "control",
    ("recording.stop_recording", "POST"): "control",
    ("recording.recording_status", "GET"): "control",
    ("recording.cleanup_recordings", "POST"): "admin",
    ("extras.webrtc_quality", "GET"): "watch",
    ("device_actions.install_app", "POST"): "admin",
    ("device_actions.install_and_launch_app", "POST"): "admin",
    ("device_actions.list_apps", "GET"): "control",
    ("device_actions.launch_app", "POST"): "control",
    ("device_actions.terminate_app", "POST"): "control",
    ("device_actions.uninstall_app", "DELETE"): "admin",
    ("device_actions.open_url", "POST"): "control",
    ("device_actions.url_schemes", "GET"): "watch",
    ("device_actions.set_location", "POST"): "control",
    ("device_actions.clear_location", "POST"): "control",
    ("device_actions.location_presets", "GET"): "watch",
    ("device_actions.predefined_locations", "GET"): "watch",
    ("device_actions.set_predefined_location", "POST"): "control",
    ("device_actions.set_orientation", "POST"): "control",
    ("device_actions.push_notification", "POST"): "control",
    ("device_actions.recent_logs", "GET"): "control",
    ("device_actions.clear_logs", "POST"): "control",
    ("device_actions.log_processes", "GET"): "control",
    ("device_actions.add_photos", "POST"): "admin",
    ("device_actions.add_videos", "POST"): "admin",
    ("device_actions.media_info", "GET"): "control",
    ("device_actions.push_file", "POST"): "admin",
    ("device_actions.pull_file", "POST"): "admin",
    ("device_actions.app_container", "GET"): "admin",
    ("access.whoami", "GET"): "watch",
    ("access.share_link", "POST"): "control",
    # WebSockets: what opening each kind needs (a spectator's control messages are refused).
    ("sockets.video_socket", "WS"): "watch",
    ("sockets.control_socket", "WS"): "watch",
    ("sockets.screenshot_socket", "WS"): "watch",
    ("sockets.logs_socket", "WS"): "watch",
    ("sockets.webrtc_socket", "WS"): "watch",
}

ORDER = {"public": 0, "watch": 1, "control": 2, "admin": 3}
# Who may: the highest permission of each principal used below.
HOLDERS = {
    "admin": ("admin", None),
    "operator": ("control", None),
    "granted": ("control", "own"),  # an operator of the first session only
    "spectator": ("watch", None),
    "nobody": (None, None),  # no credentials
    "forger": (None, None),  # a token that is not in the file
}


def _rules(app) -> dict[tuple[str, str], Any]:
    found = {}
    for rule in app.url_map.iter_rules():
        if rule.websocket:
            found[(rule.endpoint, "WS")] = rule
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found[(rule.endpoint, method)] = rule
    return found


def test_every_route_is_classified_and_declares_what_the_table_says(tmp_path):
    settings = Settings(state_dir=tmp_path, initial_session=False)
    app = create_app(_FakeBridge(settings))  # type: ignore[arg-type]
    found = _rules(app)
    assert set(found) - set(ROUTES) == set(), "routes added without a line in ROUTES"
    assert set(ROUTES) - set(found) == set(), "ROUTES names routes the app no longer has"
    for (endpoint, _method), expected in ROUTES.items():
        declared = _view_permission(app, endpoint) or "public"
        assert declared == expected, endpoint


def test_an_undeclared_route_is_admin_only(tmp_path):
    settings = Settings(state_dir=tmp_path, initial_session=False)
    app = create_app(_FakeBridge(settings))  # type: ignore[arg-type]

    @app.get("/added-later")
    async def added_later() -> str:
        return "x"

    assert _view_permission(app, "added_later") == "admin"


class _FakeBridge:
    """Just enough of a Bridge to build an app (its routes are not called)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


async def until(check, within: float = 10) -> None:
    """Wait until ``await check()`` is true (a condition the server reaches on its own)."""
    with trio.fail_after(within):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


# --- the running server -----------------------------------------------------------------------


@asynccontextmanager
async def token_server(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[RunningServer, dict]]:
    """A server in mode token; yields it and the tokens by holder name."""
    tokens: dict[str, str] = {}
    entries: list[TokenEntry] = []
    for name, role in (("admin", Role.ADMIN), ("operator", Role.OPERATOR)):
        tokens[name], entry = mint_token(name, role)
        entries.append(entry)
    tokens["spectator"], entry = mint_token("spectator", Role.SPECTATOR)
    entries.append(entry)
    tokens["blind"], entry = mint_token("blind", Role.SPECTATOR, logs=False)
    entries.append(entry)
    token_file = tmp_path / "tokens.toml"
    token_file.write_text("".join(e.to_toml() for e in entries))
    settings = {"auth": "token", "token_file": token_file, **settings}
    async with running_server(tmp_path / "state", **settings) as server:
        # An operator of the initial session only, added by a reload: SIGHUP, as in production.
        tokens["granted"], entry = mint_token(
            "granted", Role.OPERATOR, sessions=[server.session_id]
        )
        entries.append(entry)
        token_file.write_text("".join(e.to_toml() for e in entries))
        os.kill(os.getpid(), signal.SIGHUP)
        admin = {"Authorization": f"Bearer {tokens['admin']}"}

        async def reloaded() -> bool:
            stats = (await server.http.get("/stats", headers=admin)).json()
            return stats["server"]["auth"]["tokens"]["loads"] == 2

        await until(reloaded)
        tokens["forger"] = "not-a-token-in-the-file"
        yield server, tokens


def _path(rule, own: str, session: str) -> str:
    values = {
        "session_id": session,
        "quality": "low",
        "filename": "app.js",
        "bundle_id": "com.example.app",
    }
    path = rule.rule
    for name in rule.arguments:
        path = path.replace(f"<{name}>", values[name]).replace(f"<path:{name}>", values[name])
    return path


def _expected(holder: str, needs: str, session_route: bool, foreign: bool) -> int | None:
    """None: allowed; else the refusal status."""
    if needs == "public":
        return None
    highest, scope = HOLDERS[holder]
    if highest is None:
        return 401
    if ORDER[highest] < ORDER[needs]:
        return 403
    if scope == "own" and session_route and foreign:
        return 403
    return None


def _sorted_routes(found):
    # Deleting runs last, so the others see the sessions they ask about.
    return sorted(
        (key for key in found if key[1] != "WS"),
        key=lambda key: (key[1] == "DELETE", key[0]),
    )


async def test_role_by_route_matrix_in_mode_token(tmp_path):
    async with token_server(tmp_path, auth_failures_per_minute=1000) as (server, tokens):
        found = _rules(create_app(server.bridge))
        own = server.session_id
        refused: list[str] = []
        for holder in ("nobody", "forger", "spectator", "granted", "operator", "admin"):
            headers = {} if holder == "nobody" else {"Authorization": f"Bearer {tokens[holder]}"}
            for endpoint, method in _sorted_routes(found):
                rule = found[(endpoint, method)]
                needs = ROUTES[(endpoint, method)]
                session_route = "session_id" in rule.arguments
                for foreign in (False, True) if session_route else (False,):
                    if holder == "admin" and method == "DELETE" and not foreign:
                        continue  # the admin's deletions are checked below, once
                    session = "someone-elses-session" if foreign else own
                    path = _path(rule, own, session)
                    response = await server.http.request(method, path, headers=headers)
                    expected = _expected(holder, needs, session_route, foreign)
                    got = response.status_code
                    if expected is None:
                        ok = got not in (401, 403, 421, 429, 500)
                    else:
                        ok = got == expected
                    if not ok:
                        refused.append(f"{holder} {method} {path}: {got}, wanted {expected}")
                    if got == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert holder == "nobody" or tokens[holder] not in response.text
        assert refused == []
        # The admin may delete; the session is gone after.
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        deleted = await server.http.delete(f"/api/sessions/{own}", headers=admin)
        assert deleted.status_code == 200


async def test_role_by_route_matrix_in_mode_none(server):
    found = _rules(create_app(server.bridge))
    own = server.session_id
    for endpoint, method in _sorted_routes(found):
        rule = found[(endpoint, method)]
        response = await server.http.request(method, _path(rule, own, own))
        assert response.status_code not in (401, 403, 421, 429, 500), (endpoint, method)


WS_KINDS = ("video", "control", "screenshot", "logs", "webrtc")


async def _ws_outcome(url: str, **options: Any) -> tuple[int, str | None] | str:
    """ "open" if the socket stays open past its first message, else its close."""
    async with open_ws(url, **options) as ws:
        with trio.move_on_after(0.5):
            return await close_of(ws)
        return "open"


async def test_every_websocket_kind_by_role(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        own = server.session_id
        for kind in WS_KINDS:
            assert await _ws_outcome(server.ws_url(own, kind)) == (4401, "credentials required")
            bad = await _ws_outcome(server.ws_url(own, kind, "token=forged"))
            assert bad == (4401, "invalid or expired credentials")
            for holder in ("spectator", "granted", "operator", "admin"):
                opened = await _ws_outcome(
                    server.ws_url(own, kind), subprotocols=[f"bridge.token.{tokens[holder]}"]
                )
                if kind == "webrtc":  # one error message, then a normal close
                    assert opened in ("open", (1000, ""), (1000, None)), (holder, kind, opened)
                else:
                    assert opened == "open", (holder, kind)
            elsewhere = await _ws_outcome(
                server.ws_url("another-session", kind, f"token={tokens['granted']}")
            )
            assert elsewhere == (4403, "not granted session another-session")
        blind = await _ws_outcome(server.ws_url(own, "logs", f"token={tokens['blind']}"))
        assert blind == (4403, "role spectator may not open logs")


async def test_a_websocket_with_a_token_subprotocol_gets_it_back(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        protocol = f"bridge.token.{tokens['spectator']}"
        async with open_ws(
            server.ws_url(server.session_id, "video"), subprotocols=[protocol]
        ) as ws:
            assert ws.subprotocol == protocol


async def test_a_spectators_controls_are_refused_counted_and_audited(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        own = server.session_id
        url = server.ws_url(own, "control", f"token={tokens['spectator']}")
        async with open_ws(url) as ws:
            for number in range(3):
                await ws.send_message(json.dumps({"t": "tap", "x": 10, "y": 10, "id": number}))
                reply = await next_of_type(ws, "error")
                assert reply["refused"] is True and reply["id"] == number
                assert "spectator may only watch" in reply["message"]
        async with open_ws(server.ws_url(own, "control", f"token={tokens['operator']}")) as ws:
            await ws.send_message(json.dumps({"t": "tap", "x": 10, "y": 10, "id": 7}))
            assert (await next_of_type(ws, "ack"))["id"] == 7
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        stats = (await server.http.get("/stats", headers=admin)).json()["server"]["auth"]
        assert stats["spectator_control_refused"] == 3
        assert stats["admitted_by_role"]["spectator"] >= 1
        assert stats["audit"]["events"]["control_refused"] == 3
        metrics = (await server.http.get("/metrics", headers=admin)).text
        assert "bridge_control_refused_total 3.0" in metrics
        lines = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        control = [e for e in entries if e["event"] == "control"]
        assert control[-1] == {**control[-1], "who": "operator", "kind": "tap", "session": own}
        assert all("text" not in e for e in entries)
        for token in tokens.values():
            assert token not in "\n".join(lines)
            assert token not in json.dumps(stats)


async def test_a_token_reload_keeps_live_viewers_and_admits_the_new_tokens(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        url = server.ws_url(server.session_id, "video", f"token={tokens['operator']}")
        async with open_ws(url) as viewer:
            await viewer.get_message()
            # Drop every token but the admin's, and reload.
            (tmp_path / "tokens.toml").write_text(
                "".join(e.to_toml() for e in [mint_token("x", Role.ADMIN)[1]])
            )
            os.kill(os.getpid(), signal.SIGHUP)
            headers = {"Authorization": f"Bearer {tokens['operator']}"}

            async def operator_refused() -> bool:
                response = await server.http.get("/api/sessions/", headers=headers)
                return response.status_code == 401

            await until(operator_refused)
            # The viewer admitted before the reload still gets frames.
            for _ in range(3):
                await viewer.get_message()


async def test_a_broken_token_file_on_reload_keeps_the_previous_tokens(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        (tmp_path / "tokens.toml").write_text("[[token]]\nname = 'half-written")
        os.kill(os.getpid(), signal.SIGHUP)
        admin = {"Authorization": f"Bearer {tokens['admin']}"}

        async def failed() -> bool:
            stats = (await server.http.get("/stats", headers=admin)).json()
            return stats["server"]["auth"]["tokens"]["load_failures"] == 1

        await until(failed)
        assert (await server.http.get("/api/sessions/", headers=admin)).status_code == 200


async def test_failed_attempts_are_rate_limited_per_client_address(tmp_path):
    async with token_server(tmp_path, auth_failures_per_minute=3) as (server, _):
        bad = {"Authorization": "Bearer wrong"}
        codes = [
            (await server.http.get("/api/sessions/", headers=bad)).status_code for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        limited = await server.http.get("/api/sessions/", headers=bad)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        ws = await _ws_outcome(server.ws_url(server.session_id, "video", "token=wrong"))
        assert ws[0] == 4029 and ws[1].startswith("retry_after=")


async def test_session_creations_are_limited_per_token(tmp_path):
    async with token_server(tmp_path, create_sessions_per_minute_per_token=1) as (server, tokens):
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        config = (await server.http.get("/api/sessions/configurations", headers=admin)).json()
        body = {
            "device_type": config["configurations"]["device_types"][0],
            "ios_version": config["configurations"]["ios_versions"][0],
        }
        first = await server.http.post("/api/sessions/create", json=body, headers=admin)
        assert first.status_code == 200
        second = await server.http.post("/api/sessions/create", json=body, headers=admin)
        assert second.status_code == 429
        assert "token" in second.json()["detail"]


# --- share links ----------------------------------------------------------------------------


async def test_a_share_link_opens_one_session_as_spectator_until_it_expires(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        own = server.session_id
        operator = {"Authorization": f"Bearer {tokens['operator']}"}
        minted = await server.http.post(
            f"/api/sessions/{own}/share", json={"role": "spectator", "ttl": 60}, headers=operator
        )
        assert minted.status_code == 200, minted.text
        link = minted.json()
        assert link["url"] == f"/#token={link['token']}&session={own}"
        viewer = {"Authorization": f"Bearer {link['token']}"}
        me = (await server.http.get("/api/auth/whoami", headers=viewer)).json()
        assert me["role"] == "spectator" and me["sessions"] == [own]
        assert (await server.http.get(f"/api/sessions/{own}", headers=viewer)).status_code == 200
        assert (await server.http.delete(f"/api/sessions/{own}", headers=viewer)).status_code == 403
        # A spectator mints no links; nobody mints an admin link.
        spectator = {"Authorization": f"Bearer {tokens['spectator']}"}
        shared = await server.http.post(f"/api/sessions/{own}/share", json={}, headers=spectator)
        assert shared.status_code == 403
        admin_link = await server.http.post(
            f"/api/sessions/{own}/share", json={"role": "admin"}, headers=operator
        )
        assert admin_link.status_code == 400 and admin_link.json()["field"] == "role"
        # Altered, it is refused; expired, too.
        forged = link["token"][:-2] + ("AA" if not link["token"].endswith("AA") else "BB")
        assert (
            await server.http.get("/api/sessions/", headers={"Authorization": f"Bearer {forged}"})
        ).status_code == 401
        short = await server.http.post(
            f"/api/sessions/{own}/share", json={"ttl": 1}, headers=operator
        )
        expiring = {"Authorization": f"Bearer {short.json()['token']}"}
        assert (await server.http.get("/api/sessions/", headers=expiring)).status_code == 200
        # Expiry is calendar time (links outlive restarts): wait for it, as its holder would.

        async def expired() -> bool:
            return (await server.http.get("/api/sessions/", headers=expiring)).status_code == 401

        await until(expired)


# --- browsers and proxies -------------------------------------------------------------------


async def test_an_unknown_host_is_refused_with_421_in_both_modes(tmp_path, server):
    rebinding = {"Host": f"rebind.evil.example:{server.port}"}
    response = await server.http.delete("/api/sessions/", headers=rebinding)
    assert response.status_code == 421
    assert server.bridge.list_sessions(), "the sessions survive"
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "127.0.0.1"):
        assert (await server.http.get("/api/sessions/", headers={"Host": host})).status_code == 200
    (tmp_path / "t").mkdir()
    async with token_server(tmp_path / "t") as (token, tokens):
        admin = {"Authorization": f"Bearer {tokens['admin']}", **rebinding}
        assert (await token.http.get("/api/sessions/", headers=admin)).status_code == 421


async def test_configured_server_names_replace_the_defaults(tmp_path):
    async with running_server(tmp_path, server_names=("bridge.example:8443",)) as server:
        assert (await server.http.get("/api/sessions/")).status_code == 421
        named = {"Host": "bridge.example:8443"}
        assert (await server.http.get("/api/sessions/", headers=named)).status_code == 200
        assert (await server.http.get("/", headers=named)).status_code == 200


async def test_cross_site_form_posts_and_foreign_origins_are_refused(server):
    form = {"device_type": "iPhone 15", "ios_version": "17.0"}
    before = len(server.bridge.list_sessions())
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": f"http://127.0.0.1:{server.port + 1}"},
    ):
        response = await server.http.post("/api/sessions/create", data=form, headers=headers)
        assert response.status_code == 403, headers
        assert "access-control-allow-origin" not in response.headers
    assert len(server.bridge.list_sessions()) == before
    own = await server.http.delete(
        f"/api/sessions/{server.session_id}", headers={"Origin": server.url}
    )
    assert own.status_code == 200


async def test_a_websocket_from_a_foreign_origin_is_refused(server):
    url = server.ws_url(server.session_id, "control")
    foreign = await _ws_outcome(url, extra_headers=[(b"Origin", b"http://evil.example")])
    assert foreign == (4403, "Origin not allowed")
    own = await _ws_outcome(url, extra_headers=[(b"Origin", server.url.encode())])
    assert own == "open"
    assert await _ws_outcome(url) == "open"  # no Origin: not a browser


async def test_listed_origins_get_cors_and_never_a_wildcard(tmp_path):
    listed = "http://tools.example"
    async with running_server(tmp_path, allowed_origins=(listed,)) as server:
        response = await server.http.get("/api/sessions/", headers={"Origin": listed})
        assert response.headers["access-control-allow-origin"] == listed
        preflight = await server.http.options(
            "/api/sessions/create",
            headers={"Origin": listed, "Access-Control-Request-Method": "POST"},
        )
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = await server.http.get("/api/sessions/", headers={"Origin": "http://x.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_the_viewer_pages_carry_security_headers(server):
    for path in ("/", "/docs"):
        response = await server.http.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_the_viewer_pages_hold_no_inline_script():
    static = Path(__file__).resolve().parent.parent / "bridge_actors" / "static"
    import re

    for page in static.glob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", page.read_text()):
            assert "src=" in tag, f"{page.name}: inline script {tag}"
        assert " on" not in re.sub(r"<[^>]*>", "", "") and not re.search(
            r"<[^>]+\son[a-z]+=", page.read_text()
        ), f"{page.name}: an inline event handler"


async def test_forwarded_addresses_count_only_from_trusted_proxies(tmp_path):
    async with token_server(tmp_path, auth_failures_per_minute=2) as (server, _):
        spoofed = {"Authorization": "Bearer wrong", "X-Forwarded-For": "203.0.113.9"}
        codes = [
            (await server.http.get("/api/sessions/", headers=spoofed)).status_code for _ in range(3)
        ]
        assert codes == [401, 401, 429], "a client cannot pick a fresh address"


async def test_tokens_in_a_query_never_reach_the_access_log(tmp_path, caplog):
    import logging

    async with token_server(tmp_path, access_log=True) as (server, tokens):
        with caplog.at_level(logging.INFO, logger="hypercorn.access"):
            url = server.ws_url(server.session_id, "video", f"token={tokens['spectator']}")
            async with open_ws(url) as ws:
                await ws.get_message()
            await server.http.get(f"/health?token={tokens['admin']}")
        text = "\n".join(record.getMessage() for record in caplog.records)
        for token in tokens.values():
            assert token not in text


# --- start-up ---------------------------------------------------------------------------------


async def test_a_non_loopback_bind_without_auth_refuses_to_start(tmp_path):
    settings = Settings(state_dir=tmp_path, auth="none", initial_session=False)
    async with open_bridge(settings) as bridge:
        # Refused before anything is bound: no socket on 0.0.0.0 is ever opened.
        with pytest.raises(InvalidSettings, match="BRIDGE_ALLOW_UNAUTHENTICATED"):
            await serve(bridge, host="0.0.0.0", port=0)


def test_allowing_unauthenticated_warns_and_an_exposed_default_is_token(tmp_path, caplog):
    import logging

    allowed = Settings(state_dir=tmp_path, host="0.0.0.0", auth="none", allow_unauthenticated=True)
    with caplog.at_level(logging.WARNING, logger="bridge_actors.auth"):
        assert Gatekeeper(allowed).mode == "none"
    assert "authentication is off while binding 0.0.0.0" in caplog.text
    assert Gatekeeper(Settings(state_dir=tmp_path, host="0.0.0.0")).mode == "token"
    assert Gatekeeper(Settings(state_dir=tmp_path, host="::1")).mode == "none"
    with pytest.raises(InvalidSettings):
        Gatekeeper(Settings(state_dir=tmp_path, host="192.0.2.1", auth="none"))


async def test_session_changes_token_use_and_refusals_are_audited(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        config = (await server.http.get("/api/sessions/configurations", headers=admin)).json()
        body = {
            "device_type": config["configurations"]["device_types"][0],
            "ios_version": config["configurations"]["ios_versions"][0],
        }
        created = await server.http.post("/api/sessions/create", json=body, headers=admin)
        new = created.json()["session_id"]
        await server.http.delete(f"/api/sessions/{new}", headers=admin)
        spectator = {"Authorization": f"Bearer {tokens['spectator']}"}
        await server.http.get(f"/api/sessions/{server.session_id}", headers=spectator)
        await server.http.delete(f"/api/sessions/{server.session_id}", headers=spectator)
        lines = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        events = [(e["event"], e.get("who"), e.get("session")) for e in entries]
        assert ("sessions.create_session", "admin", None) in events
        assert ("sessions.delete_session", "admin", new) in events
        assert ("token_use", "spectator", server.session_id) in events
        refusal = [e for e in entries if e["event"] == "refused" and e.get("who") == "spectator"]
        assert refusal[-1]["status"] == 403 and refusal[-1]["client"] == "127.0.0.1"
        for token in tokens.values():
            assert token not in "\n".join(lines)


async def test_other_features_record_their_events_through_the_hook(tmp_path):
    from quart import Blueprint

    from bridge_actors._server.audit import record

    settings = Settings(state_dir=tmp_path, initial_session=False)
    app = create_app(_FakeBridge(settings))  # type: ignore[arg-type]
    extra = Blueprint("pushes", __name__)

    @extra.post("/api/sessions/<session_id>/files")
    async def push_file(session_id: str) -> dict[str, bool]:
        record("file_push", session_id, name="report.pdf")
        return {"success": True}

    app.register_blueprint(extra)
    client = app.test_client()
    response = await client.post("/api/sessions/s1/files", headers={"Host": "127.0.0.1"})
    assert response.status_code == 200
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    pushed = [e for e in entries if e["event"] == "file_push"]
    assert pushed == [{**pushed[0], "who": "anonymous", "session": "s1", "name": "report.pdf"}]


async def test_a_request_line_or_headers_over_the_limit_are_refused(tmp_path):
    from raw import connect, read_to_eof, status_of

    async with running_server(tmp_path, max_header_bytes=2048) as server:
        close = b"Host: 127.0.0.1\r\nConnection: close\r\n"
        for head in (
            b"GET /api/sessions/?" + b"a" * 3000 + b" HTTP/1.1\r\n" + close + b"\r\n",
            b"GET /api/sessions/ HTTP/1.1\r\n" + close + b"X-Big: " + b"b" * 3000 + b"\r\n\r\n",
        ):
            stream = await connect(server.port)
            await stream.send_all(head)
            answer = await read_to_eof(stream)
            assert status_of(answer) == 431, answer[:100]
        fits = await server.http.get("/api/sessions/", headers={"X-Small": "c" * 1000})
        assert fits.status_code == 200
        stats = await server.stats()
        assert stats["server"]["auth"]["refused_by_status"]["431"] == 2
        metrics = (await server.http.get("/metrics")).text
        assert 'bridge_auth_refused_total{status="431"} 2.0' in metrics


async def test_a_token_granted_some_sessions_lists_only_those(tmp_path):
    async with token_server(tmp_path) as (server, tokens):
        own = server.session_id
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        created = await server.http.post(
            "/api/sessions/create",
            data={"device_type": "iPhone 15 (simulated)", "ios_version": "18.0"},
            headers=admin,
        )
        assert created.status_code == 200, created.text
        other = created.json()["session_id"]
        granted = {"Authorization": f"Bearer {tokens['granted']}"}

        async def listed(path: str, headers: dict) -> set[str]:
            body = (await server.http.get(path, headers=headers)).json()
            return {item["session_id"] for item in body["sessions"]}

        assert await listed("/api/sessions/", granted) == {own}
        assert await listed("/status", granted) == {own}
        assert await listed("/api/sessions/", admin) == {own, other}
        assert await listed("/status", admin) == {own, other}
