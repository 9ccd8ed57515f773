"""Which address a request comes from, when a reverse proxy stands in front.

``X-Forwarded-For`` and ``X-Real-IP`` are only what a client wrote, unless the
peer that delivered them is a proxy the operator named as trusted: then each
trusted hop vouches for the address to its left, and the client is the rightmost
address that is not itself a trusted proxy. Anyone else's headers are ignored,
so a client cannot pick the address the rate limiter counts it under.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from .._checks import Network, parse_networks

__all__ = ["Network", "client_address", "connection_client", "parse_networks"]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(
    peer: str | None,
    forwarded_for: Sequence[str],
    real_ip: str | None,
    trusted: Sequence[Network],
) -> str:
    """The address to count a request under.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value in order. A
    malformed hop ends the walk at the last address vouched for.
    """
    if not peer:
        return "unknown"
    if not _trusted(_address(peer), trusted):
        return peer
    # X-Real-IP is the proxy's own word (it sets the header, replacing any a client
    # sent), while a proxy that only sets X-Real-IP passes a client's X-Forwarded-For
    # through untouched: believe X-Real-IP first, and walk the chain only when it
    # names another trusted proxy.
    vouched = _address(real_ip) if real_ip else None
    if vouched is not None and not _trusted(vouched, trusted):
        return str(vouched)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    if not hops:
        return str(vouched) if vouched is not None else peer
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return client
        client = str(address)
        if not _trusted(address, trusted):
            return client
    return client


@functools.lru_cache(maxsize=8)
def _networks(trusted_proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(trusted_proxies)


def connection_client(connection, trusted_proxies: tuple[str, ...]) -> str:
    """:func:`client_address` of a Quart request or WebSocket, under the settings' proxies."""
    headers = connection.headers
    return client_address(
        connection.remote_addr,
        headers.getlist("X-Forwarded-For"),
        headers.get("X-Real-IP"),
        _networks(trusted_proxies),
    )
