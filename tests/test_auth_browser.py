"""Authorization as a browser meets it, in headless Chromium against a real server.

A page served from another origin (a second loopback port) cannot open the
control socket, delete a session or create one with a form; the built-in viewer
on its own origin works; a share link opens the viewer as a spectator whose taps
are refused and shown as such.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import running_server
from test_web_viewer import STEP_TIMEOUT_MS, browser, open_ui, tap_canvas  # noqa: F401

from bridge_actors._server.authz import Role
from bridge_actors._server.tokens import mint_token

ATTACK_PAGE = """<!doctype html><html><body><script>
const target = "127.0.0.1:%(port)d", sid = "%(sid)s";
window.results = {};
const ws = new WebSocket(`ws://${target}/ws/${sid}/control`);
ws.onopen = () => ws.send(JSON.stringify({t: "tap", x: 1, y: 1, id: 1}));
ws.onmessage = (event) => { results.message = event.data; };
ws.onclose = (event) => { results.close = [event.code, event.reason]; };
fetch(`http://${target}/api/sessions/${sid}`, {method: "DELETE"})
  .then((r) => { results.deleted = r.status; }, () => { results.deleted = "blocked"; });
const form = new URLSearchParams({device_type: "%(device)s", ios_version: "%(version)s"});
fetch(`http://${target}/api/sessions/create`, {method: "POST", mode: "no-cors", body: form})
  .then(() => { results.created = "sent"; }, () => { results.created = "blocked"; });
</script></body></html>"""


@contextmanager
def page_server(html: str) -> Iterator[str]:
    """Serve ``html`` at / on another loopback port: another origin than the bridge's."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _results(page: Any) -> dict[str, Any]:
    page.wait_for_function(
        "window.results && results.close && results.deleted && results.created",
        timeout=STEP_TIMEOUT_MS,
    )
    return page.evaluate("window.results")


async def test_a_page_of_another_origin_cannot_control_delete_or_create(tmp_path, browser):  # noqa: F811
    async with running_server(tmp_path) as server:
        sid = server.session_id
        config = (await server.http.get("/api/sessions/configurations")).json()
        device = config["configurations"]["device_types"][0]
        version = config["configurations"]["ios_versions"][0]
        html = ATTACK_PAGE % {"port": server.port, "sid": sid, "device": device, "version": version}
        before = (await server.stats())["server"]["auth"]["refused_by_status"].get("403", 0)
        with page_server(html) as attacker:
            async with open_ui(browser, attacker) as ui:
                results = await ui(_results)
        assert results["close"] == [4403, "Origin not allowed"]
        assert "message" not in results, "no control reply: the socket never served"
        assert results["deleted"] == "blocked", "the preflight found no CORS grant"
        assert [s.session_id for s in server.bridge.list_sessions()] == [sid]
        after = (await server.stats())["server"]["auth"]["refused_by_status"]["403"]
        assert after - before == 2, "the socket and the form post were refused"


async def test_the_built_in_viewer_on_its_own_origin_works(tmp_path, browser):  # noqa: F811
    async with running_server(tmp_path) as server:
        async with open_ui(browser, server.url) as ui:
            await ui.wait_for("s.framesDrawn >= 2 && s.controlStatus === 'open'")
            await ui(tap_canvas, 0.5, 0.5)
            await ui.wait_for("s.acks >= 1")
            assert ui.problems == [], "its CSP blocks nothing the viewer needs"
        async with open_ui(browser, server.url + "/docs") as docs:
            await docs(lambda page: page.wait_for_selector(".op"))
            width = await docs(
                lambda page: page.evaluate(
                    "getComputedStyle(document.querySelector('main')).maxWidth"
                )
            )
            assert width != "none", "docs.css applies"
            refused = [p for p in docs.problems if "Refused to" in p or "Security Policy" in p]
            assert refused == []


async def test_a_share_link_opens_the_viewer_as_a_spectator_whose_taps_are_refused(
    tmp_path,
    browser,  # noqa: F811
):
    token, entry = mint_token("admin", Role.ADMIN)
    token_file = tmp_path / "tokens.toml"
    token_file.write_text(entry.to_toml())
    async with running_server(tmp_path / "state", auth="token", token_file=token_file) as server:
        sid = server.session_id
        minted = await server.http.post(
            f"/api/sessions/{sid}/share",
            json={"role": "spectator", "ttl": 600, "name": "reviewer"},
            headers={"Authorization": f"Bearer {token}"},
        )
        link = minted.json()
        async with open_ui(browser, server.url + link["url"]) as ui:
            await ui.wait_for("s.framesDrawn >= 2 && s.controlStatus === 'open'")
            address = await ui(lambda page: page.evaluate("location.href"))
            assert link["token"] not in address and address.endswith(f"#session={sid}")
            badge = await ui(lambda page: page.locator("#auth-role").inner_text())
            assert badge == "spectator: watch only"
            assert not await ui(lambda page: page.is_visible("#recording-panel"))
            await ui(tap_canvas, 0.5, 0.5)
            await ui.wait_for("s.errors >= 1")
            state = await ui.state()
            assert "spectator may only watch" in state["lastError"]
            assert state["acks"] == 0
            notice = await ui(lambda page: page.locator("#notice").inner_text())
            assert "spectator may only watch" in notice
            # The page's own problems: a refused tap is an answer, not an error.
            assert [p for p in ui.problems if "401" in p or "403" in p] == []
        admin = {"Authorization": f"Bearer {token}"}
        stats = (await server.http.get("/stats", headers=admin)).json()["server"]["auth"]
        assert stats["spectator_control_refused"] == 1
        assert stats["admitted_by_role"]["spectator"] >= 3  # the page, its sockets, its fetches
        assert link["token"] not in json.dumps(stats)
