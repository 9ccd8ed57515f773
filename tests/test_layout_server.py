"""The server package stays readable: no function in ``bridge_actors/_server`` over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import bridge_actors

SERVER = Path(bridge_actors.__file__).resolve().parent / "_server"
MAX_FUNCTION_LINES = 80


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(SERVER)}:{node.lineno} {node.name}"
                lengths[where] = node.end_lineno - node.lineno + 1
    return lengths


def test_the_server_is_measured():
    assert any(where.startswith("app.py") for where in _function_lengths())


def test_no_server_function_is_over_80_lines():
    too_long = {where: n for where, n in _function_lengths().items() if n > MAX_FUNCTION_LINES}
    assert not too_long, f"split these (over {MAX_FUNCTION_LINES} lines): {too_long}"
