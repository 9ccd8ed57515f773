"""Argument checks shared by the actors' constructors and the settings, and exception-group
helpers."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable

import trio

from ._errors import BadInput, BridgeError, InvalidSettings

MAX_FPS = 120  # the highest capture rate a setting or a backend accepts


def require_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSettings(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_number(name: str, value: float, *, allow_zero: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidSettings(f"{name} must be a finite number {bound}, got {value!r}")


def require_positive(name: str, value: float) -> None:
    _require_number(name, value, allow_zero=False)


def require_non_negative(name: str, value: float) -> None:
    _require_number(name, value, allow_zero=True)


def fps_problem(fps: object) -> str | None:
    """What is wrong with a capture rate, or None if it is one (an integer, 1 to MAX_FPS)."""
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        return f"must be an integer from 1 to {MAX_FPS}, not {fps!r}"
    return None


def require_fps(fps: object) -> None:
    """Raise BadInput unless ``fps`` is a capture rate a backend accepts."""
    if (problem := fps_problem(fps)) is not None:
        raise BadInput("fps", problem)


def exception_leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The non-group exceptions inside a (nested) exception group, in order."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(exception_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def one_exception(group: BaseExceptionGroup, what: str) -> BaseException:
    """The one plain exception a public call raises for the group its nursery raised.

    Cancellation from outside stays cancellation: when every leaf is a
    ``Cancelled``, one of them comes back, so the caller's cancel scope catches it
    as its own. Otherwise the ``Cancelled`` leaves are only the echo of the real
    failure (the nursery cancelling the other tasks) and are left out: one failure
    comes back as it is, several as one BridgeError naming each.
    """
    leaves = exception_leaves(group)
    failures = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if not failures:
        return leaves[0]
    if len(failures) == 1:
        return failures[0]
    error = BridgeError(
        f"{what} failed: " + "; ".join(f"{type(e).__name__}: {e}" for e in failures)
    )
    error.__cause__ = group
    return error


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks; raises ValueError naming the first bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value.strip()!r} is not an IP address or network") from None
    return tuple(networks)
