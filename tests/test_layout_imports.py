"""The benchmarks are a client of the package: they import only its public names."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "bridge_actors":
                modules += [f"bridge_actors.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "bridge_actors" and any(map(_is_private, parts[1:])):
                found.append(f"{path.name}:{node.lineno}: {module}")
    return found


def test_benchmarks_import_no_private_names():
    files = sorted(BENCHMARKS.glob("*.py"))
    assert files, f"no benchmarks found in {BENCHMARKS}"
    private = [hit for path in files for hit in _private_imports(path)]
    assert private == []
