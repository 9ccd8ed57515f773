"""The web viewer's H.264 mode in headless Chromium: WebCodecs decoding, and the JPEG fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import running_server
from test_web_viewer import (
    STEP_TIMEOUT_MS,
    VIEWPORT,
    BrowserThread,
    Ui,
    browser,  # noqa: F401 (the fixture)
    canvas_picture,
    tap_canvas,
    text_of,
)

REMOVE_WEBCODECS = "delete window.VideoDecoder; delete window.EncodedVideoChunk;"
# A decoder that takes everything and never outputs a frame.
SILENT_DECODER = """window.VideoDecoder = class {
    constructor() { this.state = "unconfigured"; }
    configure() { this.state = "configured"; }
    decode() {}
    close() { this.state = "closed"; }
};"""


def _open_page(thread: BrowserThread, url: str, problems: list[str], init_script: str | None):
    context = thread.browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.goto(url)
    return page


@asynccontextmanager
async def open_ui(
    thread: BrowserThread, url: str, init_script: str | None = None
) -> AsyncIterator[Ui]:
    """A fresh browser context at ``url``, running ``init_script`` before the page's own."""
    problems: list[str] = []
    page = await thread.run(_open_page, thread, url, problems, init_script)
    try:
        yield Ui(thread, page, problems)
    finally:
        with trio.CancelScope(shield=True):
            await thread.run(page.context.close)


def webcodecs_h264_support(page: Any) -> bool:
    return page.evaluate(
        """async () => typeof VideoDecoder === "function" &&
            (await VideoDecoder.isConfigSupported({codec: "avc1.42c01e"})).supported"""
    )


async def test_h264_mode_decodes_advancing_frames_and_a_tap_reaches_the_screen(
    browser: BrowserThread,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/?transport=h264") as ui,
    ):
        assert await ui(webcodecs_h264_support), "this Chromium cannot decode H.264 in WebCodecs"
        await ui.wait_for(
            "s.transport === 'h264' && s.framesDecoded >= 3 && s.controlStatus === 'open'"
        )
        state = await ui.state()
        assert state["codec"].startswith("avc1.42")  # Constrained Baseline, read from the SPS
        assert state["fallbackReason"] is None
        seen, decoded = state["frameSeq"], state["framesDecoded"]
        await ui.wait_for("s.frameSeq > arg[0] && s.framesDecoded > arg[1]", [seen, decoded])
        picture = await ui(canvas_picture)
        assert (picture["width"], picture["height"]) == (390, 844)
        assert picture["opaque"] > 0.99 and picture["colours"] > 20, picture

        expected = await ui(tap_canvas, 0.5, 0.6)
        assert expected["x"] > 0
        await ui.wait_for("s.acks >= 1 && s.tapLatencyMs !== null")
        state = await ui.state()
        assert state["inputSeq"] >= state["lastAck"]["inputSeq"] >= 1

        await ui.wait_for("s.bitrateKbps > 0")
        assert (await ui(text_of, "#codec")).startswith("avc1.42")
        assert int(await ui(text_of, "#bitrate")) > 0
        [service] = server.bridge.encoders.services()
        assert service.statistics().feeds == 1
        await ui(lambda page: page.screenshot(path=str(tmp_path / "h264.png"), full_page=True))
        assert ui.problems == []


@pytest.mark.parametrize(
    ("init_script", "reason"),
    [
        (REMOVE_WEBCODECS, "VideoDecoder is missing"),
        (SILENT_DECODER, "no H.264 frame decoded within 3 s"),
    ],
    ids=["no-webcodecs", "nothing-decodes"],
)
async def test_h264_mode_falls_back_to_jpeg_by_itself(
    browser: BrowserThread,  # noqa: F811
    tmp_path: Path,
    init_script: str,
    reason: str,
) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/?transport=h264", init_script) as ui,
    ):
        await ui.wait_for("typeof s.fallbackReason === 'string' && s.transport === 'jpeg'")
        await ui.wait_for("s.framesDrawn >= 2 && s.codec === 'jpeg'")
        state = await ui.state()
        assert reason in state["fallbackReason"]
        assert await ui(text_of, "#codec") == "jpeg"
        assert await ui(lambda page: page.input_value("#transport")) == "jpeg"
        assert "Falling back to JPEG" in await ui(text_of, "#notice")
        assert ui.problems == []
        assert server.bridge.encoders.services() == [] or all(
            s.statistics().feeds == 0 for s in server.bridge.encoders.services()
        )
