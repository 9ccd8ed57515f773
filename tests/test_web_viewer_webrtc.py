"""The web viewer's WebRTC mode in headless Chromium: connected, frames on a <video>, and a
clear failure (back to JPEG) when the browser has no RTCPeerConnection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import open_ws, running_server
from test_web_viewer import (
    CHROMIUM_ARGS,
    BrowserThread,
    _chromium,
    _missing_requirement,
    assert_near,
    click_at,
    collect_log_messages,
    text_of,
    wait_for_logs,
)
from test_web_viewer_h264 import open_ui

# Chromium leaves loopback out of ICE unless told, and hides host addresses behind
# mDNS names, which the server does not resolve (it would have to query multicast).
WEBRTC_ARGS = [
    *CHROMIUM_ARGS,
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
REMOVE_WEBRTC = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"


class WebRTCBrowser(BrowserThread):
    def launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=WEBRTC_ARGS
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    missing = _missing_requirement()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the web viewer test needs a browser in CI: {missing}")
        pytest.skip(f"web viewer test skipped: {missing}")
    thread = WebRTCBrowser()
    try:
        thread.call(thread.launch)
        yield thread
    finally:
        thread.close()


CONNECT_TIMEOUT_MS = 30_000


def wait_long(page, condition: str) -> None:
    script = f"() => {{ const s = window.bridgeViewer.state; return {condition}; }}"
    page.wait_for_function(script, timeout=CONNECT_TIMEOUT_MS)


def video_picture(page) -> dict:
    """The <video>'s size and how varied its current picture is (drawn onto a canvas)."""
    return page.evaluate(
        """() => {
            const video = document.getElementById("device-video");
            const canvas = document.createElement("canvas");
            canvas.width = video.videoWidth; canvas.height = video.videoHeight;
            const context = canvas.getContext("2d");
            context.drawImage(video, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4 * 97) {
                colours.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
            }
            const canvasStyle = getComputedStyle(document.getElementById("device-canvas"));
            return {width: video.videoWidth, height: video.videoHeight, colours: colours.size,
                    canvasShown: canvasStyle.display !== "none"};
        }"""
    )


async def test_webrtc_mode_connects_and_renders_frames_on_a_video(
    browser: BrowserThread, tmp_path: Path
) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/?transport=webrtc") as ui,
    ):
        # Connecting (ICE, DTLS) is the slow part on a loaded machine: it gets more time.
        await ui(wait_long, "s.transport === 'webrtc' && s.webrtcState === 'connected'")
        await ui(wait_long, "s.framesDecoded >= 10")
        state = await ui.state()
        assert state["fallbackReason"] is None and state["webrtcError"] is None
        decoded = state["framesDecoded"]
        await ui.wait_for("s.framesDecoded > arg + 10", decoded)
        device = server.bridge.get_session(server.session_id).device
        picture = await ui(video_picture)
        assert (picture["width"], picture["height"]) == (device.pixel_width, device.pixel_height)
        assert picture["colours"] > 20 and not picture["canvasShown"], picture
        assert await ui(text_of, "#status") == "live"
        await ui.wait_for("s.bitrateKbps > 0")
        assert (await ui(text_of, "#codec")).startswith("H264")
        stats = (await server.stats())["server"]["webrtc"]
        assert stats["peers"] == 1 and stats["peers_connected"] == 1
        assert stats["keyframe_requests"] >= 1
        await ui(lambda page: page.screenshot(path=str(tmp_path / "webrtc.png"), full_page=True))
        assert ui.problems == []


async def test_a_click_on_the_webrtc_video_taps_the_device_where_it_landed(
    browser: BrowserThread, tmp_path: Path
) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ws(server.ws_url(server.session_id, "logs")) as logs,
        trio.open_nursery() as nursery,
        open_ui(browser, server.url + "/?transport=webrtc") as ui,
    ):
        messages: list[str] = []
        nursery.start_soon(collect_log_messages, logs, messages)
        await ui(wait_long, "s.webrtcState === 'connected' && s.framesDecoded >= 3")
        await ui.wait_for("s.controlStatus === 'open'")
        await ui(click_at, "#device-video", 0.25, 0.75)
        await ui.wait_for("s.acks >= 1")
        assert (await ui.state())["errors"] == 0
        device = server.bridge.get_session(server.session_id).device
        (tap,) = await wait_for_logs(messages, [r"^tap at \((\d+), (\d+)\)"])
        assert_near(tap[1], 0.25 * device.point_width)
        assert_near(tap[2], 0.75 * device.point_height)
        assert ui.problems == []
        nursery.cancel_scope.cancel()


async def test_webrtc_mode_without_rtcpeerconnection_says_so_and_falls_back(
    browser: BrowserThread, tmp_path: Path
) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/?transport=webrtc", REMOVE_WEBRTC) as ui,
    ):
        await ui.wait_for("typeof s.fallbackReason === 'string' && s.transport === 'jpeg'")
        await ui.wait_for("s.framesDrawn >= 2 && s.codec === 'jpeg'")
        state = await ui.state()
        assert "RTCPeerConnection is missing" in state["fallbackReason"]
        assert "RTCPeerConnection is missing" in await ui(text_of, "#notice")
        assert await ui(lambda page: page.input_value("#transport")) == "jpeg"
        assert (await server.stats())["server"]["webrtc"]["peers_opened"] == 0
        assert ui.problems == []
