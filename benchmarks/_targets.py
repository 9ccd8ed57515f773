"""The numbers to reach, each judged PASS or FAIL (or n/a when it could not be measured)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    scenario: str
    name: str
    requirement: str
    measured: str
    passed: bool | None  # None: not measured

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "target", **asdict(self), "verdict": self.verdict}


def _show(value: float | None, unit: str, digits: int) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}{unit}"


def at_most(
    scenario: str, name: str, value: float | None, limit: float, unit: str = "", digits: int = 1
) -> Target:
    return Target(
        scenario,
        name,
        f"<= {limit:.4g}{unit}",
        _show(value, unit, digits),
        None if value is None else value <= limit,
    )


def below(
    scenario: str, name: str, value: float | None, limit: float, unit: str = "", digits: int = 2
) -> Target:
    return Target(
        scenario,
        name,
        f"< {limit:.4g}{unit}",
        _show(value, unit, digits),
        None if value is None else value < limit,
    )


def at_least(
    scenario: str, name: str, value: float | None, limit: float, unit: str = "", digits: int = 1
) -> Target:
    return Target(
        scenario,
        name,
        f">= {limit:.4g}{unit}",
        _show(value, unit, digits),
        None if value is None else value >= limit,
    )


def holds(scenario: str, name: str, ok: bool | None, requirement: str, measured: str) -> Target:
    return Target(scenario, name, requirement, measured, ok)
