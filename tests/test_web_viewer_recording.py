"""The viewer's Record button in headless Chromium, against the real server: record, see the
elapsed time, stop and download a playable MP4; a refusal shows the server's text."""

from __future__ import annotations

from typing import Any

from conftest import running_server
from test_recording import probe
from test_web_viewer import STEP_TIMEOUT_MS, BrowserThread, browser, open_ui

__all__ = ["browser"]  # the module-scoped fixture, shared with the viewer's own tests


def wait_for_recording(page: Any, condition: str) -> None:
    script = f"() => {{ const r = window.bridgeRecording.state; return {condition}; }}"
    page.wait_for_function(script, timeout=STEP_TIMEOUT_MS)


def record_and_download(page: Any) -> tuple[str, bytes]:
    page.click("#record-button")
    wait_for_recording(page, "r.recording && r.elapsed >= 1")
    assert page.inner_text("#record-status").startswith("Recording 0:0")
    with page.expect_download(timeout=STEP_TIMEOUT_MS) as info:
        page.click("#record-stop-button")
    download = info.value
    with open(download.path(), "rb") as saved:
        return download.suggested_filename, saved.read()


async def test_record_then_stop_and_download(browser: BrowserThread, tmp_path) -> None:
    async with running_server(tmp_path) as server:
        sid = server.session_id
        async with open_ui(browser, f"{server.url}/#session={sid}") as ui:
            await ui(wait_for_recording, f"r.sessionId === {sid!r}")
            assert await ui(lambda page: page.is_visible("#recording-panel"))
            name, data = await ui(record_and_download)
            assert name.startswith(f"ios-recording_{sid[:8]}_") and name.endswith(".mp4")
            frames, duration, decoded, _size = probe(data)
            assert frames == decoded > 0 and duration >= 1.0
            assert server.bridge.recordings.get(sid) is None  # downloaded, then removed

            await server.http.post(f"/api/sessions/{sid}/recording/start")
            await ui(lambda page: page.click("#record-button"))
            await ui(wait_for_recording, "r.lastError !== null")
            text = await ui(lambda page: page.inner_text("#record-status"))
            assert text == "Recording already in progress"
