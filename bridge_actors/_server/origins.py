"""What a browser's request says about where it comes from: Host, Origin, Sec-Fetch-Site.

Pure decisions, no I/O.

* ``Host`` must name this server: a DNS-rebinding page reaches us under its own
  name (``rebind.evil.example:8000``), which no configured name matches.
* ``Origin`` of a WebSocket handshake or a state-changing request must be the
  server's own (the scheme and the ``Host`` the request was sent to) or one the
  operator listed. ``null`` and ``file://`` (local pages, the compatible desktop
  viewer) count only when listed. No Origin at all is a client that is not a
  browser, judged by its credentials alone; a browser that still says
  ``Sec-Fetch-Site: cross-site`` is refused.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

__all__ = [
    "LOCAL_PAGE_ORIGINS",
    "SAFE_METHODS",
    "default_server_names",
    "host_allowed",
    "origin_allowed",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_PAGE_ORIGINS = frozenset({"null", "file://"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def default_server_names(bind_host: str) -> frozenset[str]:
    """The bind address, ``localhost`` and the loopback addresses.

    Each is an address or ``localhost``, which no DNS answer can rebind, so they are
    accepted with any port (a proxy in front forwards its own). A wildcard bind
    (``0.0.0.0``, ``::``) has no name of its own: set the server names.
    """
    names = {_bracketed(bind_host.strip().lower()), *_LOOPBACK_NAMES}
    return frozenset(names - {"0.0.0.0", "[::]"})


def normalize_host(host: str) -> str:
    return host.strip().lower()


def _split_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, None


def host_allowed(host: str | None, names: Iterable[str]) -> bool:
    """Whether a request's ``Host`` is one of ``names``.

    A name given with a port matches that port only; a bare name matches any port.
    No Host at all (HTTP/1.0, a client that is not a browser) is allowed: a browser,
    the only way a rebinding page reaches us, always sends one.
    """
    if not host:
        return True
    host = normalize_host(host)
    wanted = {normalize_host(name) for name in names}
    if host in wanted:
        return True
    name, port = _split_port(host)
    return port is not None and name in wanted


def origin_allowed(origin: str, host: str | None, listed: Iterable[str]) -> bool:
    """Whether a page of ``origin`` may talk to us when it sent its request to ``host``."""
    origin = origin.strip()
    listed_set = {item.strip().rstrip("/").lower() for item in listed}
    if origin.rstrip("/").lower() in listed_set:
        return True
    if origin.lower() in LOCAL_PAGE_ORIGINS or not host:
        return False
    try:
        parts = urllib.parse.urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    # Behind a TLS proxy the page is https:// while we see http: compare the authority.
    return normalize_host(parts.netloc) == normalize_host(host)


def cross_site_without_origin(fetch_site: str | None) -> bool:
    """A browser request that says it is cross-site although it sent no Origin."""
    return fetch_site is not None and fetch_site.strip().lower() == "cross-site"
