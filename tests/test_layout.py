"""The layers of the package and who may import what: the import contracts in
pyproject.toml, and the benchmarks as a client that imports only public names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
BENCHMARKS = ROOT / "benchmarks"


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


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's own command, in a process of its own: it reconfigures logging."""
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_import_contract_holds():
    result = lint_imports(PYPROJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 4


def test_a_wrong_way_import_breaks_a_contract(tmp_path):
    # The same machinery on a contract the code does not keep: it must fail, so a pass
    # above means the contracts were read and checked, not skipped.
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["bridge_actors"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "the server does without the services (it does not)"\n'
        'type = "forbidden"\n'
        'source_modules = ["bridge_actors._server"]\n'
        'forbidden_modules = ["bridge_actors._services"]\n'
    )
    result = lint_imports(config)
    assert result.returncode == 1
    assert "BROKEN" in result.stdout
