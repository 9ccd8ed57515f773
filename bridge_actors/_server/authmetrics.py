"""The gate's counters in ``/metrics``: admitted by role, refused by status, controls refused."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from .authz import Role
from .guard import Gatekeeper

__all__ = ["AuthCollector"]


class AuthCollector:
    """The gate's counters for ``/metrics``."""

    def __init__(self, gate: Gatekeeper) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        admitted = CounterMetricFamily(
            "bridge_auth_admitted", "Requests and WebSockets admitted, by role.", labels=["role"]
        )
        for role in Role:
            admitted.add_metric([role.value], self.gate.admitted[role.value])
        yield admitted
        refused = CounterMetricFamily(
            "bridge_auth_refused",
            "Requests and WebSockets refused by the gate, by HTTP status (401 403 421 429 431).",
            labels=["status"],
        )
        for status in (401, 403, 421, 429, 431):
            refused.add_metric([str(status)], self.gate.refused[status])
        yield refused
        yield CounterMetricFamily(
            "bridge_control_refused",
            "Control messages refused because the role may only watch.",
            value=self.gate.control_refused,
        )
        yield CounterMetricFamily(
            "bridge_control_rate_limited",
            "Control messages refused over the per-connection rate.",
            value=self.gate.control_rate_limited,
        )
