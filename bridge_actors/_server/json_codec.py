"""Reading untrusted JSON: one decoder for every request body and WebSocket message.

``json.loads`` alone accepts what no client of ours may send and what the rest of
the server cannot survive: nesting deep enough to exhaust the recursion limit
(a ``RecursionError``, which used to become a 500 or a 1011 and a traceback),
and ``NaN``/``Infinity``, which Python parses but which are not JSON, so echoing
one back (an ack's ``id``) produced invalid JSON. :func:`decode_json` refuses
both with a :class:`~bridge_actors.BadInput` naming the problem, and
:func:`encode_json` never writes a non-finite number.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._errors import BadInput

__all__ = ["MAX_JSON_DEPTH", "decode_json", "encode_json", "json_depth"]

# Every document of the protocol is an object of scalars (a control message, a form);
# 32 leaves room for any client's extras and stays far below the recursion limit.
MAX_JSON_DEPTH = 32

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SPECIAL = re.compile(r'[\[\]{}"]')


def json_depth(text: str, *, stop_above: int | None = None) -> int:
    """How deeply arrays and objects nest in ``text``, brackets inside strings not counted.

    A scan, not a parse: it runs before ``json.loads`` so that a deep document is
    refused before it can recurse. It visits each character once, whatever the
    text (an unterminated string ends the scan: nothing after it can count), and
    stops as soon as the depth passes ``stop_above``. Unbalanced text gives some
    depth; the parse that follows reports it as invalid.
    """
    depth = deepest = 0
    position = 0
    while (special := _SPECIAL.search(text, position)) is not None:
        char = special.group()
        if char == '"':
            string = _STRING.match(text, special.start())
            if string is None:
                break
            position = string.end()
            continue
        position = special.end()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if stop_above is not None and deepest > stop_above:
                break
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is out of range for a number")
    return value


def decode_json(raw: str | bytes, field: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document in ``raw``; raises BadInput(``field``, what is wrong).

    Refuses text that is not UTF-8, nesting deeper than ``max_depth``, ``NaN``,
    ``Infinity`` and numbers too large for a float, and anything else
    ``json.loads`` refuses.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise BadInput(field, "is not UTF-8 text") from None
    depth = json_depth(raw, stop_above=max_depth)
    if depth > max_depth:
        raise BadInput(field, f"nests arrays or objects more than {max_depth} deep")
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as error:
        # JSONDecodeError says where; our own refusals say what.
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise BadInput(field, f"is not valid JSON ({detail})") from None


def encode_json(document: Any, *, compact: bool = False) -> str:
    """``document`` as JSON (``compact``: no spaces at all, for answers written below the
    app); ValueError rather than ever writing NaN/Infinity."""
    separators = (",", ":") if compact else None
    return json.dumps(document, allow_nan=False, separators=separators)
