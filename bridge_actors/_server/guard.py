"""The gate in front of every route: Host, Origin, credentials, role, and their refusals.

:class:`Gatekeeper` holds what the decisions need (the mode, the token file, the
share-link signer, the failure limiter, the audit log) and :func:`install` hangs
it in front of the app's routes. Each request is judged in this order:

1. ``Host`` is one of the server names, else 421 (DNS rebinding);
2. routes marked public (the viewer's pages, the probes) pass;
3. a state-changing request or a WebSocket handshake from a browser page whose
   ``Origin`` is not allowed is refused with 403 / 4403 (CSRF, cross-site
   WebSocket hijacking);
4. in mode ``token``: credentials, else 401 with ``WWW-Authenticate`` / 4401, and
   a client address that failed too often lately is refused with 429 / 4029;
5. the route's permission for that principal's role and sessions, else 403 / 4403.

A WebSocket is accepted before it is refused, so the client learns why from the
close code and reason. What is refused, and why, goes to the audit log; no
answer, log line or statistic ever holds a credential.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
from collections import Counter
from functools import partial
from typing import Any

import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio

from .._errors import RateLimited
from .._services.ratelimit import SlidingWindow
from .._settings import Settings
from ..wire import MISDIRECTED, RATE_LIMITED
from .audit import AuditLog
from .authz import (
    ANONYMOUS_ADMIN,
    Decision,
    Mode,
    Permission,
    Principal,
    Role,
    decide,
    effective_mode,
    permission_of,
)
from .forwarded import connection_client
from .json_codec import encode_json
from .origins import (
    SAFE_METHODS,
    cross_site_without_origin,
    default_server_names,
    host_allowed,
    origin_allowed,
)
from .responses import json_response
from .sharelinks import LinkSigner, load_or_create_secret
from .tokens import TokenStore

log = logging.getLogger("bridge_actors.auth")

__all__ = ["Admission", "Gatekeeper", "caller_sees", "install", "redact"]

SUBPROTOCOL_PREFIX = "bridge.token."
AUDIT_FILE = "audit.jsonl"
# Endpoints anyone may reach: the viewer's own files and pages (a browser cannot send a
# token with a navigation), the reference, and the probes an orchestrator asks (answered
# in front of the app as well, see .probes: counts and states, nothing to act on).
PUBLIC_ENDPOINTS = frozenset(
    {
        "static",
        "viewer.index",
        "viewer.docs",
        "viewer.openapi",
        "monitoring.health",
        "monitoring.livez",
        "monitoring.readyz",
    }
)
_CREDENTIAL_PATTERN = re.compile(r"(token=|bridge\.token\.|Bearer\s+)[^\s&,;\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every credential it might hold replaced by ``***``."""
    return _CREDENTIAL_PATTERN.sub(r"\1***", text)


class _RedactCredentials(logging.Filter):
    """Access log lines carry the request line, where a ``?token=`` would be."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = _RedactCredentials()


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """Who the current request or WebSocket speaks for, as :mod:`.audit` records it."""

    principal: Principal | None
    client: str
    audit: AuditLog


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401, 403, 421 or 429
    reason: str
    retry_after: int | None = None

    @property
    def close_code(self) -> int:
        """4401, 4403, 4421; a rate limit is the 4029 every socket uses (docs/protocol.md)."""
        return RATE_LIMITED if self.status == 429 else 4000 + self.status


class Gatekeeper:
    """What the gate decides with, for one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode: Mode = "none"
        self.bind(settings.host)
        self.tokens = TokenStore(settings.token_file)
        self.failures = SlidingWindow(limit=settings.auth_failures_per_minute, window=60.0)
        self.creations_by_principal = SlidingWindow(
            limit=settings.create_sessions_per_minute_per_token, window=60.0
        )
        audit_path = settings.audit_log or settings.state_dir / AUDIT_FILE
        self.audit = AuditLog(
            audit_path if settings.audit else None,
            max_bytes=settings.audit_log_max_bytes,
            backups=settings.audit_log_backups,
        )
        self.admitted: Counter[str] = Counter()
        self.refused: Counter[int] = Counter()
        self.control_refused = 0
        self.control_rate_limited = 0

    def bind(self, host: str) -> None:
        """Decide the mode for a server bound to ``host``. Raises UnsafeBind."""
        self.mode, warning = effective_mode(
            self.settings.auth,
            [host],
            allow_unauthenticated=self.settings.allow_unauthenticated,
        )
        if warning:
            log.warning("%s", warning)

    @functools.cached_property
    def links(self) -> LinkSigner:
        # Created on first use, so a server that never sees a link writes no secret file.
        secret = self.settings.link_signing_key
        if secret is not None:
            return LinkSigner(secret.get_secret_value().encode())
        return LinkSigner(load_or_create_secret(self.settings.state_dir))

    def resolve(self, credential: str) -> Principal | None:
        if credential.startswith("link."):
            link = self.links.verify(credential)
            return link.principal() if link is not None else None
        entry = self.tokens.lookup(credential)
        return entry.principal() if entry is not None else None

    # -- the judgement, shared by requests and WebSockets --

    def judge(
        self,
        connection: Any,
        *,
        permission: Permission | None,
        session_id: str | None,
        credential: str | None,
        checks_origin: bool,
    ) -> tuple[Admission, Refusal | None]:
        """Admit ``connection`` (a request or WebSocket) or say why not. ``permission``
        None marks a public route."""
        client = connection_client(connection, self.settings.trusted_proxies)
        host = connection.headers.get("Host")  # known to be ours: see FrontGate
        admission = Admission(None, client, self.audit)
        if permission is None:
            return admission, None
        if checks_origin:
            origin = connection.headers.get("Origin")
            if origin is not None:
                if not origin_allowed(origin, host, self.settings.allowed_origins):
                    return self.refuse(admission, 403, "Origin not allowed", origin)
            elif cross_site_without_origin(connection.headers.get("Sec-Fetch-Site")):
                return self.refuse(admission, 403, "cross-site request refused", None)
        if self.mode == "none":
            principal: Principal | None = ANONYMOUS_ADMIN
        else:
            now = trio.current_time()
            wait = self.failures.retry_after(client, now)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                self.audit.write("refused", None, client, session_id, status=429)
                return self._count(admission, Refusal(429, "too many failed attempts", seconds))
            principal = self.resolve(credential) if credential else None
            if principal is None and credential:
                with contextlib.suppress(RateLimited):  # refused either way
                    self.failures.consume(client, now)
        decision: Decision = decide(
            principal, permission, session_id, credentials_given=bool(credential)
        )
        admission = Admission(principal, client, self.audit)
        if not decision.allowed:
            return self.refuse(admission, decision.status, decision.reason, None, session_id)
        assert principal is not None
        self.admitted[str(principal.role)] += 1
        if principal.via != "none":
            self.audit.write("token_use", principal, client, session_id)
        return admission, None

    def refuse(
        self,
        admission: Admission,
        status: int,
        reason: str,
        detail: str | None,
        session_id: str | None = None,
    ) -> tuple[Admission, Refusal]:
        fields = {"status": status, "reason": reason}
        if detail is not None:
            fields["detail"] = redact(detail)
        self.audit.write("refused", admission.principal, admission.client, session_id, **fields)
        return self._count(admission, Refusal(status, reason))

    def _count(self, admission: Admission, refusal: Refusal) -> tuple[Admission, Refusal]:
        self.refused[refusal.status] += 1
        return admission, refusal

    def server_names(self, scope: Any) -> frozenset[str]:
        if self.settings.server_names:
            return frozenset(self.settings.server_names)
        server = scope.get("server")
        bound = default_server_names(server[0]) if server else frozenset()
        return default_server_names(self.settings.host) | bound

    def refuse_creation(self, principal: Principal | None) -> int | None:
        """Seconds to wait if ``principal`` created too many sessions lately, else None."""
        if principal is None or principal.via == "none":
            return None
        try:
            self.creations_by_principal.consume(principal.name, trio.current_time())
        except RateLimited as limited:
            self.refused[429] += 1
            return max(1, math.ceil(limited.retry_after))
        return None

    def statistics(self) -> dict[str, Any]:
        """For ``/stats``: counts by role and by refusal; never a credential."""
        return {
            "mode": self.mode,
            "admitted_by_role": {role.value: self.admitted[role.value] for role in Role},
            "refused_by_status": {str(k): v for k, v in sorted(self.refused.items())},
            "spectator_control_refused": self.control_refused,
            "control_rate_limited": self.control_rate_limited,
            "tokens": self.tokens.statistics(),
            "links": self.links.statistics() if "links" in self.__dict__ else None,
            "audit": self.audit.statistics(),
        }


# --- the hooks --------------------------------------------------------------------------------


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _view_permission(app: QuartTrio, endpoint: str | None) -> Permission | None:
    if endpoint in PUBLIC_ENDPOINTS:
        return None
    return permission_of(app.view_functions.get(endpoint) if endpoint else None)


class FrontGate:
    """ASGI in front of Quart, for what must be judged before the router reads a request.

    A ``Host`` that is not ours gets 421 (a WebSocket 4421): the router would turn a
    malformed name into a 500. A request line and headers over ``max_header_bytes``
    get 431 (h11 bounds only what is still incomplete, not a head that came whole).
    """

    def __init__(self, app: Any, gate: Gatekeeper) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.gate.settings.max_header_bytes:
            self.gate.refused[431] += 1
            await _refuse_at_the_door(scope, receive, send, 431, "request headers too large")
            return
        host = next((v.decode("latin-1") for n, v in headers if n == b"host"), None)
        if host_allowed(host, self.gate.server_names(scope)):
            await self.app(scope, receive, send)
            return
        self.gate.refused[421] += 1
        client = scope.get("client")
        address = client[0] if client else "unknown"
        self.gate.audit.write("refused", None, address, None, status=421, detail=redact(host or ""))
        await _refuse_at_the_door(scope, receive, send, 421, "unknown Host")


def json_bytes(body: dict[str, Any]) -> bytes:
    return encode_json(body).encode()


async def _refuse_at_the_door(scope, receive, send, status: int, reason: str) -> None:
    if scope["type"] == "http":
        body = json_bytes({"success": False, "detail": reason})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    code = MISDIRECTED if status == 421 else 4000 + status
    await send({"type": "websocket.close", "code": code, "reason": reason})


def caller_sees(session_id: str) -> bool:
    """Whether the principal of the current request may see ``session_id`` in a listing:
    a token granted some sessions lists only those."""
    admission = g.get("admission")
    principal = admission.principal if admission is not None else None
    return principal is None or principal.sessions is None or session_id in principal.sessions


def install(app: QuartTrio, gate: Gatekeeper) -> None:
    """Put ``gate`` in front of every route of ``app``."""
    app.asgi_app = FrontGate(app.asgi_app, gate)  # type: ignore[method-assign]
    access = logging.getLogger("hypercorn.access")
    if _REDACTOR not in access.filters:
        access.addFilter(_REDACTOR)

    @app.before_request
    async def admit_request() -> Response | None:
        await trio.lowlevel.checkpoint()
        if request.method == "OPTIONS":  # a preflight carries no credentials
            g.admission = Admission(None, "preflight", gate.audit)
            return None
        permission = _view_permission(app, request.endpoint)
        credential = _bearer(request.headers.get("Authorization"))
        admission, refusal = gate.judge(
            request,
            permission=permission,
            session_id=(request.view_args or {}).get("session_id"),
            credential=credential,
            checks_origin=request.method not in SAFE_METHODS,
        )
        g.admission = admission
        if refusal is not None:
            return _refusal_response(refusal, credential is not None)
        if request.endpoint == "sessions.create_session":
            wait = gate.refuse_creation(admission.principal)
            if wait is not None:
                body = {
                    "success": False,
                    "detail": f"too many sessions created with this token; retry after {wait} s",
                    "retry_after": wait,
                }
                return json_response(body, 429, {"Retry-After": str(wait)})
        return None

    @app.after_request
    async def audit_changes(response: Response) -> Response:
        if request.method not in SAFE_METHODS and response.status_code < 400:
            admission = g.get("admission")
            if admission is not None:
                gate.audit.write(
                    request.endpoint or "request",
                    admission.principal,
                    admission.client,
                    (request.view_args or {}).get("session_id"),
                    status=response.status_code,
                )
        return response

    app.before_websocket(partial(_admit_websocket, app, gate))


async def _admit_websocket(app: QuartTrio, gate: Gatekeeper) -> str | None:
    """Admit the WebSocket being opened, or accept and close it with the refusal's code."""
    credential, subprotocol = _websocket_credential()
    kind = (websocket.view_args or {}).get("kind") or _kind_of(websocket.endpoint)
    session_id = (websocket.view_args or {}).get("session_id")
    admission, refusal = gate.judge(
        websocket,
        permission=_view_permission(app, websocket.endpoint),
        session_id=session_id,
        credential=credential,
        checks_origin=True,
    )
    g.admission = admission
    principal = admission.principal
    if (
        refusal is None
        and principal is not None
        and session_id is not None
        and not principal.may_open(kind, session_id)
    ):
        reason = f"role {principal.role} may not open {kind}"
        _, refusal = gate.refuse(admission, 403, reason, None, session_id)
    # A browser that offered subprotocols fails the handshake unless one is chosen.
    await websocket.accept(subprotocol=subprotocol)
    if refusal is None:
        return None
    reason = refusal.reason
    code = refusal.close_code
    if refusal.status == 429:
        reason = f"retry_after={refusal.retry_after}"
    await websocket.close(code, reason)  # UNAUTHORIZED, FORBIDDEN, RATE_LIMITED (wire)
    return ""  # the handler does not run: the socket is closed


def _kind_of(endpoint: str | None) -> str:
    """``sockets.video_socket`` -> ``video``."""
    name = (endpoint or "").rpartition(".")[2]
    return name.removesuffix("_socket")


def _websocket_credential() -> tuple[str | None, str | None]:
    """The token a WebSocket handshake carries, and the subprotocol to answer with."""
    offered = websocket.requested_subprotocols
    for protocol in offered:
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX) :] or None, protocol
    token = websocket.args.get("token")
    return (token or None), None


def _refusal_response(refusal: Refusal, credential_given: bool) -> Response:
    body = {"success": False, "detail": refusal.reason}
    headers: dict[str, str] = {}
    if refusal.status == 401:
        challenge = 'Bearer realm="bridge_actors"'
        if credential_given:
            challenge += ', error="invalid_token"'
        headers["WWW-Authenticate"] = challenge
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(refusal.retry_after)
        body["retry_after"] = refusal.retry_after
    return json_response(body, refusal.status, headers)
