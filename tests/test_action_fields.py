"""The pure checks behind the device-action routes, driven with generated input: what simctl
prints (OpenStep plists, ps), URLs to open, device paths, push payloads and log queries;
and an upload whose client breaks off leaves no file behind."""

from __future__ import annotations

import contextlib
import json
import os
import plistlib

import pytest
from conftest import running_server
from hypothesis import given, settings
from hypothesis import strategies as st
from raw import connect, wait_until

from bridge_actors import BadInput
from bridge_actors._backends.simctl_actions import parse_listapps, parse_openstep, parse_processes
from bridge_actors._server import action_fields as checks

# --- what simctl prints ---------------------------------------------------------------------

LISTAPPS = b"""{
    "com.apple.mobilesafari" =     {
        ApplicationType = System;
        Bundle = "file:///Applications/MobileSafari.app/";
        CFBundleDisplayName = Safari;
        CFBundleIdentifier = "com.apple.mobilesafari";
        GroupContainers =         {
            "group.com.apple.safari" = "file:///data/Group/X/";
        };
        Path = "/Applications/MobileSafari.app";
        SBAppTags =         (
        );
    };
    "com.example.demo" =     {
        ApplicationType = User;
        CFBundleName = "Demo \\"quoted\\" \\U00e9";
        CFBundleShortVersionString = "1.0";
        Path = "/data/Bundle/Demo.app";
    };
}
"""


def test_listapps_in_simctls_own_format_and_as_xml():
    apps = parse_listapps(LISTAPPS)
    assert [(a.bundle_id, a.app_name, a.app_type, a.path, a.version) for a in apps] == [
        ("com.example.demo", 'Demo "quoted" \u00e9', "User", "/data/Bundle/Demo.app", "1.0"),
        ("com.apple.mobilesafari", "Safari", "System", "/Applications/MobileSafari.app", ""),
    ]
    xml = plistlib.dumps({"com.x": {"ApplicationType": "User", "CFBundleName": "X"}})
    assert parse_listapps(xml)[0].app_name == "X"
    for broken in (b"{ a = ", b'{ "a" = "b" }', b"(1, 2", b"{ a = b; } trailing", b"\x00"):
        with pytest.raises(ValueError):
            parse_listapps(broken)


openstep_values = st.recursive(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def openstep(value) -> str:
    if isinstance(value, dict):
        return "{" + "".join(f"{openstep(k)} = {openstep(v)};" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "(" + ", ".join(map(openstep, value)) + ")"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@settings(max_examples=200, deadline=None)
@given(openstep_values)
def test_openstep_reads_back_what_was_written(value):
    assert parse_openstep(openstep(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_listapps_never_fails_with_anything_but_value_error(data):
    with contextlib.suppress(ValueError):
        parse_listapps(data)


def test_ps_output():
    output = (
        "USER PID %CPU %MEM VSZ RSS TT STAT STARTED TIME COMMAND\n"
        "mobile 62 1.5 0.8 1 2 ?? S 10:00 0:01.00 /System/SpringBoard.app/SpringBoard -x\n"
        "short line\n"
    )
    [process] = parse_processes(output)
    assert (process.pid, process.process, process.cpu, process.memory) == (
        "62",
        "SpringBoard",
        "1.5",
        "0.8",
    )


# --- fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "opened"),
    [
        ("example.com", "https://example.com"),
        ("localhost:8080/x", "https://localhost:8080/x"),
        ("http://example.com", "http://example.com"),
        ("myapp://deep/link", "myapp://deep/link"),
        ("tel:123", "tel:123"),
        ("mailto:a@b.c", "mailto:a@b.c"),
    ],
)
def test_urls_get_a_scheme_when_they_have_none(given_url, opened):
    assert checks.url_to_open({"url": given_url}) == opened


@given(st.sampled_from(checks.BLOCKED_SCHEMES), st.text(max_size=20), st.booleans())
def test_blocked_schemes_are_refused_however_written(scheme, rest, upper):
    url = (scheme.upper() if upper else scheme) + ":" + rest
    with pytest.raises(BadInput) as refusal:
        checks.url_to_open({"url": url})
    assert refusal.value.field == "url"


@given(st.text(max_size=60))
def test_an_opened_url_never_has_a_blocked_scheme(text):
    try:
        url = checks.url_to_open({"url": text})
    except BadInput:
        return
    assert url.split(":", 1)[0].lower() not in checks.BLOCKED_SCHEMES
    assert not any(c.isspace() or not c.isprintable() for c in url)


@given(st.text(st.sampled_from("ab./\\\x00 "), max_size=20))
def test_device_paths_stay_relative_and_without_parent_steps(text):
    try:
        parts = checks.device_path_parts(text)
    except BadInput as refusal:
        assert refusal.field == "device_path"
        return
    assert parts and ".." not in parts and all(p and "/" not in p and "\\" not in p for p in parts)


@given(
    st.dictionaries(
        st.sampled_from(["aps", "x"]),
        st.one_of(
            st.text(max_size=5000),
            st.dictionaries(st.text(max_size=8), st.text(max_size=3000), max_size=3),
        ),
    )
)
def test_push_payloads_are_objects_with_aps_and_at_most_4_kb(payload):
    try:
        bundle_id, checked = checks.push_payload({"bundle_id": "com.x", "payload": payload})
    except BadInput as refusal:
        assert refusal.field in ("payload", "bundle_id")
        return
    assert bundle_id == "com.x" and isinstance(checked["aps"], dict)
    assert len(json.dumps(checked, separators=(",", ":")).encode()) <= checks.MAX_PUSH_BYTES


def test_log_queries():
    query = checks.log_query({"lines": "5", "level": "ERROR", "process": "Spring Board"})
    assert (query.lines, query.level, query.process) == (5, "error", "Spring Board")
    for bad in ({"lines": "1001"}, {"level": "x"}, {"process": 'a" OR 1'}):
        with pytest.raises(BadInput):
            checks.log_query(bad)


# --- an upload cut short --------------------------------------------------------------------


async def test_an_upload_the_client_breaks_off_leaves_no_file(tmp_path, temp_root):
    async with running_server(tmp_path / "state") as server:
        sid = server.session_id
        boundary = "xyz"
        head = (
            f"POST /api/sessions/{sid}/media/photos/add HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 10000000\r\n\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
        ).encode()
        # The simulated backend has no photo library: refused before the body is read.
        stream = await connect(server.port)
        await stream.send_all(head + b"\xff\xd8\xff" + bytes(70000))
        response = await stream.receive_some(4096)
        assert b" 501 " in response.split(b"\r\n")[0]
        await stream.aclose()
        # A backend that does take uploads: the body is cut off half way.
        backend = server.bridge.get_session(sid).backend
        backend.unsupported_groups = frozenset()
        stream = await connect(server.port)
        await stream.send_all(head + b"\xff\xd8\xff" + bytes(70000))
        await wait_until(lambda: any(temp_root.iterdir()))
        await stream.aclose()
        await wait_until(lambda: not any(temp_root.iterdir()))
        assert os.listdir(temp_root) == []
        del backend.unsupported_groups


# --- multipart bodies, cut anywhere ---------------------------------------------------------


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


part_lists = st.lists(
    st.tuples(
        st.sampled_from(["file", "photos", "device_path"]),
        st.one_of(st.none(), st.sampled_from(["a.jpg", "../../x.ipa", "b c.zip", ""])),
        st.binary(max_size=300),
    ),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(
    parts=part_lists, cuts=st.lists(st.integers(1, 200), max_size=8), garbage=st.binary(max_size=40)
)
def test_multipart_parts_arrive_whole_however_the_body_is_cut(
    tmp_path_factory, parts, cuts, garbage
):
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    from bridge_actors._server.uploads import Upload, _Parts

    boundary = "b0undary"
    body = multipart(boundary, parts)
    if garbage:
        body = body[: len(body) // 2] + garbage  # a body that breaks off into noise
    upload = Upload(tmp_path_factory.mktemp("upload"))
    sink = _Parts(upload, 10**6)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        at = 0
        for cut in [*cuts, len(body)]:
            parser.write(body[at : at + cut])
            at += cut
        parser.write(body[at:])
        parser.finalize()
    except (BadInput, MultipartParseError):
        return
    if garbage:
        return  # noise can look like an unfinished part; the request is refused elsewhere
    files = [(n, f, d) for n, f, d in parts if f is not None]
    assert [(f.field, len(f.head)) for f in upload.files] == [
        (n, min(len(d), 64)) for n, _, d in files
    ]
    assert [bytes(sink.pending[i]) for i in range(len(upload.files))] == [d for _, _, d in files]
    for uploaded in upload.files:
        assert "/" not in uploaded.path.name and uploaded.path.parent == upload.directory


async def test_malformed_uploads_answer_400_not_500(tmp_path, ios_tools):
    async with running_server(tmp_path / "state", backends=("ios",), initial_session=False) as s:
        created = await s.http.post(
            "/api/sessions/create", data={"device_type": "iPhone 15", "ios_version": "17.2"}
        )
        url = f"/api/sessions/{created.json()['session_id']}/apps/install"
        for content_type, body in [
            ("multipart/form-data", b"--x\r\n"),
            ("multipart/form-data; boundary=x", b"garbage with no boundary at all"),
            ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n"),
            ("application/octet-stream", b"PK\x03\x04"),
        ]:
            response = await s.http.post(url, content=body, headers={"Content-Type": content_type})
            assert response.status_code == 400, (content_type, body, response.text)
            assert response.json()["success"] is False
