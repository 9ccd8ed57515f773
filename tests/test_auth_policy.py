"""The pure parts of authorization: roles, modes, the token file, share links, origins.

And Hypothesis against a live server in mode token: whatever a client writes in
its credentials, Host or Origin, the answer is a 2xx/4xx or a documented close
code, never a 500 or a traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
import trio_websocket
from conftest import TEST_DEFAULTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_actors import Settings, open_bridge, serve
from bridge_actors._server import tokens as tokens_module
from bridge_actors._server.audit import AuditLog
from bridge_actors._server.authz import (
    ANONYMOUS_ADMIN,
    Principal,
    Role,
    UnsafeBind,
    decide,
    effective_mode,
    is_loopback,
    permission_of,
    requires,
)
from bridge_actors._server.control_admission import ControlRate
from bridge_actors._server.guard import Gatekeeper, _bearer, redact
from bridge_actors._server.origins import (
    default_server_names,
    host_allowed,
    origin_allowed,
)
from bridge_actors._server.sharelinks import LinkSigner, load_or_create_secret
from bridge_actors._server.tokens import (
    TokenFileError,
    TokenStore,
    hash_token,
    mint_token,
    parse_token_file,
)

# --- roles and decisions ----------------------------------------------------------------------


def test_each_role_gets_exactly_its_permissions():
    admin = Principal("a", Role.ADMIN)
    operator = Principal("o", Role.OPERATOR)
    spectator = Principal("s", Role.SPECTATOR)
    granted = Principal("g", Role.OPERATOR, sessions=frozenset({"one"}))
    table = {
        (admin, "watch"): 200,
        (admin, "control"): 200,
        (admin, "admin"): 200,
        (operator, "watch"): 200,
        (operator, "control"): 200,
        (operator, "admin"): 403,
        (spectator, "watch"): 200,
        (spectator, "control"): 403,
        (spectator, "admin"): 403,
    }
    for (principal, permission), status in table.items():
        assert decide(principal, permission, "one").status == status, (principal, permission)
    assert decide(granted, "control", "one").allowed
    refusal = decide(granted, "control", "two")
    assert (refusal.status, refusal.reason) == (403, "not granted session two")
    assert decide(granted, "watch", None).allowed  # routes of no one session
    assert decide(None, "watch").status == 401
    assert decide(None, "watch", credentials_given=True).reason == "invalid or expired credentials"
    assert decide(spectator, "control").close_code == 4403
    assert decide(None, "watch").close_code == 4401
    assert ANONYMOUS_ADMIN.may("admin", "any")


def test_websocket_kinds_and_a_spectators_logs():
    spectator = Principal("s", Role.SPECTATOR)
    blind = Principal("b", Role.SPECTATOR, logs=False)
    for kind in ("video", "screenshot", "control", "webrtc", "logs"):
        assert spectator.may_open(kind, "x")
    assert not blind.may_open("logs", "x") and blind.may_open("video", "x")
    assert not spectator.may_open("a-kind-added-later", "x")  # unclassified: admin-only
    assert Principal("a", Role.ADMIN).may_open("a-kind-added-later", "x")


def test_requires_marks_a_view_and_undeclared_means_admin():
    @requires("watch")
    async def watched() -> None: ...

    async def undeclared() -> None: ...

    assert permission_of(watched) == "watch"
    assert permission_of(undeclared) == "admin"
    assert permission_of(None) == "admin"
    with pytest.raises(ValueError, match="permission"):
        requires("everything")  # type: ignore[arg-type]


def test_the_mode_follows_the_bind_address():
    assert effective_mode(None, ["127.0.0.1"], allow_unauthenticated=False) == ("none", None)
    assert effective_mode(None, ["10.0.0.1"], allow_unauthenticated=False) == ("token", None)
    assert effective_mode("token", ["::1"], allow_unauthenticated=False) == ("token", None)
    with pytest.raises(UnsafeBind, match=r"0\.0\.0\.0"):
        effective_mode("none", ["0.0.0.0"], allow_unauthenticated=False)
    mode, warning = effective_mode("none", ["0.0.0.0"], allow_unauthenticated=True)
    assert mode == "none" and warning is not None
    for host in ("localhost", "127.0.0.2", "::1", "[::1]"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "example.com", "192.168.1.2", ""):
        assert not is_loopback(host)


# --- the token file -------------------------------------------------------------------------


def test_a_minted_entry_round_trips_through_the_file_and_stores_only_the_hash(tmp_path):
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    token, entry = mint_token("ci", Role.SPECTATOR, sessions=["s1"], logs=False, expires=expires)
    text = entry.to_toml()
    assert token not in text and hash_token(token) in text
    assert parse_token_file(text) == (entry,)
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    store = TokenStore(path, clock=lambda: expires - datetime.timedelta(seconds=1))
    found = store.lookup(token)
    assert found is not None and found.principal().sessions == frozenset({"s1"})
    assert store.lookup(token + "x") is None
    store.clock = lambda: expires
    assert store.lookup(token) is None, "expired"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[token]", "not valid TOML"),
        ("tokens = 1", "unknown top-level"),
        ("token = 1", "array of tables"),
        ('[[token]]\nsha256 = "' + "0" * 64 + '"\nrole = "admin"', "'name'"),
        ('[[token]]\nname = "a"\nsha256 = "abc"\nrole = "admin"', "64 hexadecimal"),
        ('[[token]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nrole = "root"', "'role'"),
        ('[[token]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nrole = "admin"\nexpires = 3', "date"),
        ('[[token]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nrole = "admin"\nextra = 1', "extra"),
        (
            '[[token]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nrole = "admin"\nsessions = [1]',
            "list",
        ),
    ],
)
def test_a_bad_token_file_is_refused_naming_the_problem(text, problem):
    with pytest.raises(TokenFileError, match=problem):
        parse_token_file(text)


def test_a_token_is_compared_with_every_entry_in_constant_time(monkeypatch):
    """The time of a lookup depends on the number of entries only: each comparison is
    hmac.compare_digest, and every entry is compared, matched first, last or never."""
    entries = [mint_token(f"t{i}", Role.OPERATOR) for i in range(5)]
    store = TokenStore(None)
    store.entries = tuple(entry for _, entry in entries)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)
    for token in (entries[0][0], entries[-1][0], "nothing", entries[0][0][:10]):
        calls.clear()
        store.lookup(token)
        assert len(calls) == 5
        assert all(len(a) == len(b) == 64 for a, b in calls), "always digests of equal length"


def test_the_token_command_prints_the_token_once_and_the_entry(capsys):
    from bridge_actors._cli import main

    assert main(["token", "--name", "ci", "--role", "spectator", "--expires-in", "60"]) == 0
    out, err = capsys.readouterr()
    token = err.rsplit(": ", 1)[1].strip()
    (entry,) = parse_token_file(out)
    assert entry.sha256 == hash_token(token) and token not in out
    assert entry.role is Role.SPECTATOR and entry.expires is not None


# --- share links ----------------------------------------------------------------------------


def test_a_share_link_is_signed_scoped_and_expires():
    now = [1000.0]
    signer = LinkSigner(b"k" * 32, clock=lambda: now[0])
    token, _ = signer.mint("sess", Role.SPECTATOR, 60, "for bob")
    principal = signer.verify(token).principal()  # type: ignore[union-attr]
    assert principal.role is Role.SPECTATOR and principal.sessions == frozenset({"sess"})
    assert not principal.may("control", "sess") and not principal.may("watch", "other")
    assert LinkSigner(b"x" * 32, clock=lambda: now[0]).verify(token) is None, "another key"
    assert signer.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    now[0] += 60
    assert signer.verify(token) is None
    with pytest.raises(ValueError):
        signer.mint("sess", Role.ADMIN, 60, "no")
    assert signer.statistics() == {"minted": 1, "refused": 2}


def test_the_server_secret_is_generated_once_with_mode_0600(tmp_path):
    secret = load_or_create_secret(tmp_path)
    assert (tmp_path / "auth-secret").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(tmp_path) == secret and len(secret) >= 32


# --- Host and Origin ------------------------------------------------------------------------


def test_host_names_and_origins():
    names = default_server_names("127.0.0.1")
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:9", "127.0.0.1", None):
        assert host_allowed(host, names), host
    for host in ("rebind.evil.example:8000", "evil", "127.0.0.1.evil:8000"):
        assert not host_allowed(host, names), host
    assert host_allowed("bridge.example:8443", ["bridge.example:8443"])
    assert not host_allowed("bridge.example:8444", ["bridge.example:8443"])
    assert host_allowed("bridge.example:1", ["bridge.example"])
    assert "0.0.0.0" not in default_server_names("0.0.0.0")

    own = "127.0.0.1:8000"
    assert origin_allowed("http://127.0.0.1:8000", own, ())
    assert origin_allowed("https://127.0.0.1:8000", own, ())  # a TLS proxy in front
    for origin in ("http://127.0.0.1:8001", "http://evil.example", "null", "file://", "x"):
        assert not origin_allowed(origin, own, ()), origin
    assert origin_allowed("null", own, ("null",)) and origin_allowed("file://", own, ("file://",))
    assert origin_allowed("http://tools.example", own, ("http://tools.example/",))


def test_credentials_are_redacted_wherever_text_may_hold_them():
    assert redact("GET /ws/x/video?format=binary&token=abc.def HTTP/1.1") == (
        "GET /ws/x/video?format=binary&token=*** HTTP/1.1"
    )
    assert redact("bridge.token.secret, other") == "bridge.token.***, other"
    assert redact("Authorization: Bearer abc") == "Authorization: Bearer ***"


@given(st.text(max_size=200))
def test_any_authorization_header_parses_or_is_none(header):
    value = _bearer(header)
    assert value is None or (value and header.lower().lstrip().startswith("bearer"))


@given(st.text(max_size=300))
def test_any_credential_resolves_to_a_principal_or_none(credential):
    gate = _pure_gate()
    assert gate.resolve(credential) is None
    assert gate.resolve("link." + credential) is None


@given(st.text(max_size=400))
def test_any_token_file_text_is_entries_or_a_token_file_error(text):
    with contextlib.suppress(TokenFileError):
        parse_token_file(text)


_GATE: list[Gatekeeper] = []


def _pure_gate() -> Gatekeeper:
    if not _GATE:
        import tempfile

        state = Path(tempfile.mkdtemp(prefix="gate-"))
        _GATE.append(Gatekeeper(Settings(state_dir=state, auth="token", link_signing_key="k" * 40)))
    return _GATE[0]


# --- a live server, fuzzed --------------------------------------------------------------------

EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DOCUMENTED_CLOSES = {4401, 4403, 4029, 4421, 1000}


class _Problems(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.into.append(self.format(record))


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[dict[str, Any]]:
    ready = threading.Event()
    box: dict[str, Any] = {"problems": []}

    async def main() -> None:
        stop = trio.Event()
        box["token"], box["stop"] = trio.lowlevel.current_trio_token(), stop
        values = {
            **TEST_DEFAULTS,
            "auth": "token",
            "auth_failures_per_minute": 100_000,
            "state_dir": tmp_path_factory.mktemp("authfuzz"),
        }
        async with open_bridge(Settings(**values)) as bridge, trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve, bridge, host="127.0.0.1", port=0, shutdown_trigger=stop.wait)
            )
            box["url"], box["ws"] = f"http://{host}:{port}", f"ws://{host}:{port}"
            box["session"] = bridge.list_sessions()[0].session_id
            ready.set()

    handler = _Problems(box["problems"])
    logging.getLogger().addHandler(handler)
    thread = threading.Thread(target=lambda: trio.run(main), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        yield box
    finally:
        if "stop" in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)
        logging.getLogger().removeHandler(handler)
    assert box["problems"] == []


# What a client can put in a header at all (httpx refuses surrounding whitespace).
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_TEXT = st.text(alphabet=PRINTABLE, max_size=120).map(str.strip)


@EXAMPLES
@given(
    authorization=HEADER_TEXT | HEADER_TEXT.map(lambda text: f"Bearer link.{text}".strip()),
    origin=HEADER_TEXT,
    host=HEADER_TEXT,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_any_credentials_host_or_origin_get_a_4xx_never_a_500(
    live, authorization, origin, host, method
):
    headers = {"Authorization": authorization, "Origin": origin}
    if host.strip():
        headers["Host"] = host
    response = httpx.request(
        method, f"{live['url']}/api/sessions/{live['session']}", headers=headers, timeout=10
    )
    assert response.status_code in (400, 401, 403, 405, 421, 429), response.text
    assert (
        authorization.strip() == "" or authorization not in response.text or len(authorization) < 4
    )
    assert live["problems"] == []


TOKEN_CHARS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!#$%&'*+^`|",
    max_size=80,
)


@EXAMPLES
@given(
    subprotocol=TOKEN_CHARS | TOKEN_CHARS.map(lambda text: "link." + text),
    query=st.text(max_size=80),
    kind=st.sampled_from(["video", "control", "logs"]),
)
def test_any_websocket_credential_gets_a_documented_close(live, subprotocol, query, kind):
    async def attempt() -> int:
        url = f"{live['ws']}/ws/{live['session']}/{kind}?token={quote(query)}"
        protocols = [f"bridge.token.{subprotocol}"] if subprotocol else None
        async with trio_websocket.open_websocket_url(url, subprotocols=protocols) as ws:
            with trio.fail_after(10):
                while True:
                    try:
                        await ws.get_message()
                    except trio_websocket.ConnectionClosed as closed:
                        return closed.reason.code

    code = trio.run(attempt)
    assert code in DOCUMENTED_CLOSES
    assert live["problems"] == []


def test_control_messages_are_limited_per_second_per_connection():
    rate = ControlRate(limit=3)
    assert [rate.admit(10.0 + i * 0.1) for i in range(5)] == [True, True, True, False, False]
    assert rate.admit(11.0) and rate.admit(11.5) and rate.admit(11.9)
    assert not rate.admit(11.95)
    assert rate.admit(12.0)


def test_the_audit_log_is_json_lines_rotated_and_holds_no_token(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=4096, backups=2)
    who = Principal("ci", Role.OPERATOR)
    for number in range(100):
        log.write("control", who, "127.0.0.1", "session-1", kind="tap", number=number)
    log.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    last = [json.loads(line) for line in files[0].read_text().splitlines()][-1]
    assert last == {
        "time": last["time"],
        "event": "control",
        "who": "ci",
        "role": "operator",
        "client": "127.0.0.1",
        "session": "session-1",
        "kind": "tap",
        "number": 99,
    }
    assert log.statistics()["events"] == {"control": 100}
