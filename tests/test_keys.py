"""One key table and one meaning of a key, whichever way a control reaches a device."""

from __future__ import annotations

import json
import os

import pytest
from conftest import next_json, open_ws, running_server

from bridge_actors import BadInput, Key, parse_control
from bridge_actors._controls import KEY_CODES, KEY_NAMES, key_code, resolve_key


@pytest.mark.parametrize(
    ("given", "name", "code"),
    [
        ("4", "a", 4),  # numbers are HID usage codes, as the desktop viewer sends them
        ("9", "f", 9),
        ("30", "digit1", 30),
        ("39", "digit0", 39),
        ("40", "enter", 40),
        ("200", "200", 200),  # a key this table has no name for, still by its code
        ("a", "a", 4),
        ("digit9", "digit9", 38),
        ("Digit9", "digit9", 38),
        ("Enter", "enter", 40),
        ("return", "enter", 40),
        ("ESC", "escape", 41),
        (" ", "space", 44),
        ("ArrowUp", "arrowup", 82),
        ("up", "arrowup", 82),
        ("F12", "f12", 69),
        ("A", "A", None),  # a character that needs a modifier is typed as text
        ("!", "!", None),
    ],
)
def test_every_key_has_one_name_and_one_code(given, name, code):
    assert resolve_key(given) == name
    assert resolve_key(name) == name  # a canonical name means itself
    assert key_code(given) == code
    assert parse_control({"t": "key", "key": given}) == Key(name)


@pytest.mark.parametrize("bad", ["0", "3", "256", "0009999", "Hyper", "\x07", "digit10"])
def test_what_is_not_a_key_is_refused_by_name(bad):
    with pytest.raises(BadInput, match=r"^key: ") as error:
        resolve_key(bad)
    assert error.value.field == "key"


def test_the_table_names_each_code_once():
    assert all(KEY_CODES[name] == code for code, name in KEY_NAMES.items())
    assert not any(name.isdigit() for name in KEY_CODES)  # or a name could read as a code


async def test_key_9_is_the_same_key_on_the_socket_and_through_the_bridge(
    tmp_path, tools, monkeypatch
):
    monkeypatch.setenv("PATH", f"{tools.dir}{os.pathsep}{os.environ.get('PATH', '')}")
    async with running_server(tmp_path / "state", backends=("ios",), initial_session=False) as s:
        created = await s.http.post(
            "/api/sessions/create", data={"device_type": "iPhone 15", "ios_version": "17.2"}
        )
        assert created.status_code == 200, created.text
        session_id = created.json()["session_id"]
        udid = created.json()["session_info"]["udid"]

        async with open_ws(s.ws_url(session_id, "control")) as control:
            for key in ("9", "digit9"):
                await control.send_message(json.dumps({"t": "key", "key": key, "id": key}))
                assert (await next_json(control))["type"] == "ack"
        await s.bridge.control(session_id, {"t": "key", "key": "9"})
        await s.bridge.control(session_id, {"t": "key", "key": "digit9"})
        await s.bridge.control(session_id, Key("9"))
        await s.bridge.control(session_id, Key("digit9"))

        keys = [call[2] for call in tools.calls("idb") if call[:2] == ["ui", "key"]]
        assert keys == ["9", "38", "9", "38", "9", "38"]
        assert all(call[-2:] == ["--udid", udid] for call in tools.calls("idb") if call[1] == "key")
        deleted = await s.http.delete(f"/api/sessions/{session_id}")
        assert deleted.status_code == 200
