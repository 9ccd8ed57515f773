"""The viewer's device actions in headless Chromium, against the real server and fake xcrun:
drop an .ipa to install it (with the upload's progress and the server's refusal text),
rotate, and the grid of every session's live thumbnail."""

from __future__ import annotations

import base64
import plistlib
from typing import Any

from conftest import running_server
from test_device_actions import zip_of
from test_web_viewer import STEP_TIMEOUT_MS, BrowserThread, browser, open_ui

__all__ = ["browser"]  # the module-scoped fixture, shared with the viewer's own tests

INFO = {"CFBundleIdentifier": "com.example.drop", "CFBundleName": "Drop"}


def drop_file(page: Any, name: str, data: bytes) -> None:
    """A file dropped on the page, as a person dragging it from their desktop would."""
    page.evaluate(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name));
            for (const type of ["dragover", "drop"]) {
                document.body.dispatchEvent(new DragEvent(type, {
                    dataTransfer: transfer, bubbles: true, cancelable: true,
                }));
            }
        }""",
        [name, base64.b64encode(data).decode()],
    )


def wait_for_actions(page: Any, condition: str) -> None:
    script = f"() => {{ const a = window.bridgeActions.state; return {condition}; }}"
    page.wait_for_function(script, timeout=STEP_TIMEOUT_MS)


async def test_drop_to_install_rotate_and_the_grid(
    browser: BrowserThread, tmp_path, ios_tools
) -> None:
    async with running_server(
        tmp_path / "state", backends=("ios", "simulated"), initial_session=False
    ) as server:
        simulated = await server.http.post(
            "/api/sessions/create",
            data={"device_type": "iPhone 15 (simulated)", "ios_version": "18.0"},
        )
        other = simulated.json()["session_id"]
        response = await server.http.post(
            "/api/sessions/create", data={"device_type": "iPhone 15", "ios_version": "17.2"}
        )
        sid = response.json()["session_id"]
        udid = server.bridge.get_session(sid).device.udid
        async with open_ui(browser, f"{server.url}/#session={sid}") as ui:
            await ui(wait_for_actions, f"a.sessionId === {sid!r}")
            assert await ui(lambda page: page.is_visible("#device-actions"))

            ipa = zip_of({"Payload/Drop.app/Info.plist": plistlib.dumps(INFO)})
            await ui(drop_file, "Drop.ipa", ipa)
            await ui(wait_for_actions, "a.uploads.length === 1 && a.uploads[0].status === 'done'")
            state = await ui(lambda page: page.evaluate("window.bridgeActions.state"))
            assert state["uploads"][0]["loaded"] > 0
            installs = [c for c in ios_tools.calls("xcrun") if c[:2] == ["simctl", "install"]]
            assert [c[2] for c in installs] == [udid]
            await ui(wait_for_actions, "a.apps.some((app) => app.bundle_id === 'com.example.drop')")
            assert "com.example.drop" in await ui(lambda page: page.inner_text("#app-list"))

            evil = zip_of({"Payload/E.app/Info.plist": b"x", "../evil": b"x"})
            await ui(drop_file, "Evil.ipa", evil)
            await ui(
                wait_for_actions, "a.uploads.length === 2 && a.uploads[1].status === 'refused'"
            )
            shown = await ui(lambda page: page.inner_text("#actions-result"))
            assert "refused" in shown and "escapes the archive with '..'" in shown

            await ui(lambda page: page.click("#rotate-button"))
            await ui(wait_for_actions, "a.orientation === 'landscapeleft'")
            rotations = [c for c in ios_tools.calls("xcrun") if c[:2] == ["simctl", "device"]]
            assert rotations == [["simctl", "device", udid, "orientation", "landscapeleft"]]

            await ui(lambda page: page.click("#grid-button"))
            # The fake idb sends its frames once; the simulated device keeps drawing.
            await ui(wait_for_actions, f"a.grid[{other!r}] && a.grid[{other!r}].frames >= 2")
            await ui(lambda page: page.wait_for_selector(f".grid-tile[data-session-id='{sid}']"))
            tile = await ui(lambda page: page.inner_text(f".grid-tile[data-session-id='{sid}']"))
            assert "iPhone 15" in tile and "Booted" in tile
            await ui(lambda page: page.click(f".grid-tile[data-session-id='{sid}']"))
            assert await ui(lambda page: page.is_hidden("#session-grid"))
            # The browser reports the refused upload's 400 itself; nothing else may go wrong.
            refused_upload = "the server responded with a status of 400"
            assert [p for p in ui.problems if refused_upload not in p] == []
