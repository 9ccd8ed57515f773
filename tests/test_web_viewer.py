"""The built-in web viewer (``GET /``), driven in headless Chromium against a real server.

Playwright's sync API must be called from the one thread that started it, and
``trio.to_thread.run_sync`` may pick any worker thread, so every browser call
goes through :class:`BrowserThread`, a single dedicated thread. The server runs
on the Trio loop meanwhile; Playwright's own timeouts bound every browser step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from conftest import open_ws, running_server
from fakes import make_frame
from raw import wait_until

from bridge_actors.wire import binary_frame

STEP_TIMEOUT_MS = 10_000
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _missing_requirement() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    if _chromium() is None:
        return "no chromium executable (/usr/bin/chromium or chromium on PATH)"
    return None


class BrowserThread:
    """Headless Chromium, owned by one thread; ``await run(fn, *args)`` calls ``fn`` there."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._playwright: Any = None
        self.browser: Any = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._pool.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result)

    def launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )

    def shut(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    def close(self) -> None:
        try:
            self.call(self.shut)
        finally:
            self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    missing = _missing_requirement()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the web viewer test needs a browser in CI: {missing}")
        pytest.skip(f"web viewer test skipped: {missing}")
    thread = BrowserThread()
    try:
        thread.call(thread.launch)
        yield thread
    finally:
        thread.close()


class Ui:
    """One page of the viewer: ``await ui(step, *args)`` runs ``step(page, *args)`` over there."""

    def __init__(self, browser: BrowserThread, page: Any, problems: list[str]) -> None:
        self.browser = browser
        self.page = page
        self.problems = problems  # console errors and uncaught exceptions of the page

    async def __call__(self, step: Callable[..., Any], *args: Any) -> Any:
        return await self.browser.run(step, self.page, *args)

    async def state(self) -> dict[str, Any]:
        return await self(lambda page: page.evaluate("window.bridgeViewer.state"))

    async def wait_for(self, condition: str, arg: Any = None) -> Any:
        """Wait until the JavaScript ``condition`` (a function of ``s`` = state, ``arg``) holds."""
        script = f"(arg) => {{ const s = window.bridgeViewer.state; return {condition}; }}"
        return await self(
            lambda page: page.wait_for_function(script, arg=arg, timeout=STEP_TIMEOUT_MS)
        )


def _open_page(browser: BrowserThread, url: str, problems: list[str]) -> Any:
    context = browser.browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
    page.goto(url)
    return page


@asynccontextmanager
async def open_ui(browser: BrowserThread, url: str) -> AsyncIterator[Ui]:
    """A fresh browser context showing the viewer at ``url``."""
    problems: list[str] = []
    page = await browser.run(_open_page, browser, url, problems)
    try:
        yield Ui(browser, page, problems)
    finally:
        with trio.CancelScope(shield=True):
            await browser.run(page.context.close)


# --- steps run in the browser thread ----------------------------------------------------------


def create_session(page: Any, device_type: str) -> None:
    page.wait_for_selector("#device-type:not([disabled])")
    page.get_by_label("Device type").select_option(device_type)
    page.get_by_role("button", name="Create session").click()
    page.wait_for_selector("#session-list li.session")


def focus_survives_a_refresh(page: Any) -> bool:
    """The list refreshes every few seconds; a keyboard user must not lose their place."""
    page.get_by_role("button", name=re.compile(r"^Open ")).first.focus()
    return page.evaluate(
        """async () => {
            await window.bridgeViewer.refresh();
            return document.activeElement.dataset.action === "open";
        }"""
    )


def open_first_session(page: Any) -> None:
    page.get_by_role("button", name=re.compile(r"^Open ")).first.click()


def canvas_picture(page: Any) -> dict[str, Any]:
    """How much of the canvas is painted, and with how many colours (a blank one has none)."""
    return page.evaluate(
        """() => {
            const canvas = document.getElementById("device-canvas");
            const context = canvas.getContext("2d");
            const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
            const colours = new Set();
            let opaque = 0, samples = 0;
            for (let i = 0; i < data.length; i += 4 * 13) {
                samples += 1;
                if (data[i + 3] === 255) opaque += 1;
                colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
            }
            return { opaque: opaque / samples, colours: colours.size,
                     width: canvas.width, height: canvas.height };
        }"""
    )


def click_at(page: Any, selector: str, fx: float, fy: float) -> None:
    """Click an element at a fraction of its displayed size."""
    element = page.locator(selector)
    box = element.bounding_box()
    element.click(position={"x": box["width"] * fx, "y": box["height"] * fy})


def tap_canvas(page: Any, fx: float, fy: float) -> dict[str, float]:
    """Click the canvas at a fraction of its displayed size; returns the expected point."""
    click_at(page, "#device-canvas", fx, fy)
    state = page.evaluate("window.bridgeViewer.state")
    return {"x": fx * state["pointWidth"], "y": fy * state["pointHeight"]}


def drag_canvas(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    box = page.locator("#device-canvas").bounding_box()

    def at(fraction: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + box["width"] * fraction[0], box["y"] + box["height"] * fraction[1]

    page.mouse.move(*at(start))
    page.mouse.down()
    page.mouse.move(*at(end), steps=8)
    page.mouse.up()


def press_button(page: Any, name: str) -> None:
    page.get_by_role("group", name="Hardware buttons").get_by_role("button", name=name).click()


def type_text(page: Any, text: str) -> None:
    page.get_by_label("Type text").fill(text)
    page.get_by_label("Type text").press("Enter")


def press_key(page: Any, label: str) -> None:
    page.get_by_label("Press a key").select_option(label=label)
    page.get_by_role("button", name="Press key").click()


def type_on_screen(page: Any, keys: list[str]) -> None:
    """Keys pressed while the screen has keyboard focus go to the device."""
    page.locator("#device-canvas").focus()
    for key in keys:
        page.keyboard.press(key)


def delete_first_session(page: Any) -> None:
    page.get_by_role("button", name=re.compile(r"^Delete ")).first.click()
    page.wait_for_selector("#session-list li.session", state="detached")


def text_of(page: Any, selector: str) -> str:
    return page.locator(selector).inner_text()


# --- the server side --------------------------------------------------------------------------


async def collect_log_messages(ws: trio_websocket.WebSocketConnection, into: list[str]) -> None:
    try:
        while True:
            message = json.loads(await ws.get_message())
            if message.get("type") == "log":
                into.append(message["message"])
    except trio_websocket.ConnectionClosed:
        pass


async def wait_for_logs(messages: list[str], patterns: list[str]) -> list[re.Match[str]]:
    """The first device log message matching each pattern, waiting for them to arrive."""
    with trio.fail_after(10):
        while True:
            found = [
                next((m for m in map(re.compile(p).search, messages) if m), None) for p in patterns
            ]
            if all(found):
                return found  # type: ignore[return-value]
            await trio.sleep(0.05)


def assert_near(actual: str, expected: float) -> None:
    # A pointer position in CSS pixels may land a fraction of a point either way.
    assert abs(int(actual) - expected) <= 1.5, (actual, expected)


# --- tests ------------------------------------------------------------------------------------


async def test_viewer_creates_watches_drives_and_deletes_a_session(
    browser: BrowserThread, tmp_path: Path
) -> None:
    async with (
        running_server(tmp_path / "state", initial_session=False) as server,
        open_ui(browser, server.url + "/") as ui,
    ):
        # Create through the form, then open the live view.
        await ui(create_session, "iPhone 15 (simulated)")
        [session] = server.bridge.list_sessions()
        assert session.device.device_type == "iPhone 15 (simulated)"
        listed = await ui(text_of, "#session-list")
        assert "iPhone 15 (simulated)" in listed
        assert session.device.udid[:8] in listed
        assert await ui(focus_survives_a_refresh)

        async with (
            open_ws(server.ws_url(session.session_id, "logs")) as logs,
            trio.open_nursery() as nursery,
        ):
            messages: list[str] = []
            nursery.start_soon(collect_log_messages, logs, messages)

            await ui(open_first_session)
            await ui.wait_for("s.framesDrawn >= 3 && s.controlStatus === 'open'")
            state = await ui.state()
            assert state["sessionId"] == session.session_id
            assert state["status"] == "live"
            assert (state["pointWidth"], state["pointHeight"]) == (390, 844)

            picture = await ui(canvas_picture)
            assert (picture["width"], picture["height"]) == (390, 844)
            assert picture["opaque"] > 0.99, picture
            assert picture["colours"] > 20, picture

            # The figures move, and the page shows what the state says.
            seen = state["frameSeq"]
            await ui.wait_for("s.frameSeq > arg && s.fps > 0", seen)
            shown = {
                name: await ui(text_of, f"#{name}")
                for name in ("fps", "frame-seq", "input-seq", "latency", "status")
            }
            assert int(shown["frame-seq"]) > seen
            assert int(shown["fps"]) > 0
            assert re.fullmatch(r"-?\d+", shown["latency"])
            assert shown["status"] == "live"

            # A click is a tap at the same place in device points; the frames catch up with it.
            expected = await ui(tap_canvas, 0.5, 0.6)
            await ui.wait_for("s.acks >= 1 && s.tapLatencyMs !== null")
            state = await ui.state()
            tap_seq = state["lastAck"]["inputSeq"]
            assert tap_seq >= 1
            assert state["inputSeq"] >= tap_seq
            assert state["ackedInputSeq"] == tap_seq
            assert "tap" in await ui(text_of, "#last-ack")
            assert int(await ui(text_of, "#input-seq")) >= tap_seq

            # A drag is a swipe, then a hardware button, typed text and a key.
            await ui(drag_canvas, (0.3, 0.7), (0.7, 0.3))
            await ui.wait_for("s.acks >= 2")
            await ui(press_button, "Home")
            await ui.wait_for("s.acks >= 3")
            await ui(type_text, "hello")
            await ui.wait_for("s.acks >= 4")
            await ui(press_key, "Enter")
            await ui.wait_for("s.acks >= 5")
            await ui(type_on_screen, ["ArrowDown", "x"])
            await ui.wait_for("s.acks >= 7 && s.inputSeq >= s.ackedInputSeq")
            state = await ui.state()
            assert state["ackedInputSeq"] == tap_seq + 6
            assert state["errors"] == 0
            assert await ui(text_of, "#text-input") == ""

            tap, swipe, *_ = await wait_for_logs(
                messages,
                [
                    r"^tap at \((\d+), (\d+)\)",
                    r"^swipe from \((\d+), (\d+)\) to \((\d+), (\d+)\)",
                    r"^button home ",
                    r"^typed 5 characters ",
                    r"^key enter ",
                    r"^key arrowdown ",
                    r"^typed 1 characters ",
                ],
            )
            assert_near(tap[1], expected["x"])
            assert_near(tap[2], expected["y"])
            for actual, fraction, size in zip(
                swipe.groups(), (0.3, 0.7, 0.7, 0.3), (390, 844, 390, 844), strict=True
            ):
                assert_near(actual, fraction * size)

            screenshot = tmp_path / "viewer.png"
            await ui(lambda page: page.screenshot(path=str(screenshot), full_page=True))
            assert screenshot.read_bytes().startswith(b"\x89PNG")

            # Delete through the list: the session goes, on the server and in the page.
            await ui(delete_first_session)
            nursery.cancel_scope.cancel()

        assert server.bridge.list_sessions() == []
        await ui.wait_for("s.sessionId === null && s.status === 'idle'")
        assert "Deleted session" in await ui(text_of, "#notice")
        assert await ui(text_of, "#viewer-heading") == "No session open"
        assert ui.problems == []


async def test_viewer_tells_why_a_socket_closed(browser: BrowserThread, tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/") as ui,
    ):
        sid = server.session_id
        await ui.wait_for("s.sessions.length === 1")
        await ui(lambda page: page.evaluate("(sid) => window.bridgeViewer.open(sid)", sid))
        await ui.wait_for("s.framesDrawn >= 1 && s.controlStatus === 'open'")

        # Deleted by someone else: the page hears 4004, says so, and stops reconnecting.
        response = await server.http.delete(f"/api/sessions/{sid}")
        assert response.status_code == 200
        await ui.wait_for("s.lastClose !== null && s.sessionId === null")
        state = await ui.state()
        assert state["lastClose"]["code"] == 4004
        assert state["lastClose"]["reason"] == "session deleted"
        assert "This session was deleted." in await ui(text_of, "#notice")
        await ui.wait_for("s.sessions.length === 0")

        # The other close codes, decided without a server.
        plans = await ui(
            lambda page: page.evaluate(
                """() => {
                    const { closePlan, Backoff, reconnectDelay } = window.bridgeViewer.lib;
                    const backoff = new Backoff({ random: () => 0.5 });
                    const plans = {};
                    for (const [code, reason] of [[4029, "retry_after=7"], [4009, "full"],
                            [1008, "fell behind"], [1001, ""], [1011, "restarts exceeded"],
                            [1006, ""]]) {
                        const plan = closePlan(code, reason);
                        plans[code] = { ...plan, delay: reconnectDelay(plan, backoff) };
                    }
                    return plans;
                }"""
            )
        )
        assert plans["4029"]["delay"] == 7000
        assert "Rate limited" in plans["4029"]["message"]
        assert plans["4009"]["delay"] >= 5000
        assert plans["1008"]["retry"] == "backoff"
        assert plans["1001"]["retry"] == "backoff"
        assert plans["1011"]["delay"] is None
        assert "capture failed" in plans["1011"]["message"]
        assert plans["1006"]["retry"] == "backoff"
        # Each retry waits longer than the last (the jitter is pinned to its middle).
        delays = [plans[code]["delay"] for code in ("1008", "1001", "1006")]
        assert delays == sorted(delays) and delays[0] < delays[-1]
        assert ui.problems == []


async def test_viewer_reads_the_binary_header_and_scales_to_points(
    browser: BrowserThread, tmp_path: Path
) -> None:
    """Every header field in its place, and pixels scaled to points on a 3x screen.

    The simulated device has one pixel per point, which could hide a swapped field.
    """
    frame = make_frame(70_000, pixel_width=1170, pixel_height=2532, input_seq=123_456)
    async with (
        running_server(tmp_path / "state", initial_session=False) as server,
        open_ui(browser, server.url + "/") as ui,
    ):
        header, point = await ui(
            lambda page: page.evaluate(
                """(bytes) => {
                    const { parseFrameHeader, pixelToPoint } = window.bridgeViewer.lib;
                    const header = parseFrameHeader(new Uint8Array(bytes).buffer);
                    return [header, pixelToPoint({ x: 600, y: 3000 }, header)];
                }""",
                list(binary_frame(frame)),
            )
        )
        assert header == {
            "seq": 70_000,
            "timestamp": 1_700_000_000.25,
            "pixelWidth": 1170,
            "pixelHeight": 2532,
            "pointWidth": 390,
            "pointHeight": 844,
            "inputSeq": 123_456,
            "codec": 1,
            "keyframe": True,
        }
        assert point == {"x": 200, "y": 843}  # 600 px / 3; below the screen clamps to its edge
        assert ui.problems == []


async def test_viewer_opens_on_the_initial_session_and_on_each_one_it_creates(
    browser: BrowserThread, tmp_path: Path
) -> None:
    """What the README promises: start the server, open the page, and a device is streaming."""
    async with (
        running_server(tmp_path / "state") as server,
        open_ui(browser, server.url + "/") as ui,
    ):
        initial = server.bridge.get_session(server.session_id)
        await ui.wait_for("s.sessionId === arg && s.framesDrawn >= 1", initial.session_id)
        assert await ui(text_of, "#viewer-heading") != "No session open"
        assert initial.session_id[:8] in await ui(text_of, "#viewer-heading")
        # The form offers the version the initial session runs, not merely the first listed.
        offered = await ui(lambda page: page.eval_on_selector_all(
            "#ios-version option", "options => options.map(o => o.value)"))  # fmt: skip
        assert offered[0] != initial.device.ios_version  # else this would prove nothing
        version = await ui(lambda page: page.input_value("#ios-version"))
        assert version == initial.device.ios_version

        # A session created from the form is opened at once.
        await ui(create_session, "iPad (simulated)")
        # The form's request is under way when the click returns: wait for its session.
        await wait_until(lambda: len(server.bridge.list_sessions()) == 2)
        [created] = [s for s in server.bridge.list_sessions() if s is not initial]
        assert created.device.ios_version == initial.device.ios_version
        await ui.wait_for("s.sessionId === arg && s.framesDrawn >= 1", created.session_id)
        assert "iPad (simulated)" in await ui(text_of, "#viewer-heading")
        assert ui.problems == []
