"""Prometheus metrics: every admission refusal, session end and policy decision is counted.

Labels are bounded sets (codes, reasons, transports, models); tenant ids and secrets never
appear in metrics. Ledger and live-session figures are read at scrape time, so the relay's
hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics:
    """One registry per app, so tests and several apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_started = Counter(
            "voxgate_sessions_started",
            "Sessions admitted and started.",
            ["transport"],
            registry=self.registry,
        )
        self.sessions_ended = Counter(
            "voxgate_sessions_ended", "Sessions ended, by end reason.", ["end_reason"], registry=self.registry
        )
        self.refusals = Counter(
            "voxgate_admission_refusals",
            "Sessions refused before the upgrade, by error code and status.",
            ["code", "status"],
            registry=self.registry,
        )
        self.policy_decisions = Counter(
            "voxgate_policy_decisions",
            "Policy decisions in live sessions (budget cuts, re-clamps, cap closes).",
            ["kind"],
            registry=self.registry,
        )
        self.responses = Counter(
            "voxgate_responses",
            "Upstream responses metered into the ledger.",
            ["model", "status"],
            registry=self.registry,
        )
        self.cost = Counter("voxgate_cost_micro_usd", "Metered cost in micro-USD.", ["model"], registry=self.registry)

    def watch(self, collector: Callable[[], Iterator[Any]]) -> None:
        """Register a scrape-time collector (ledger stats, live sessions)."""
        self.registry.register(_FunctionCollector(collector))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FunctionCollector(Collector):
    def __init__(self, fn: Callable[[], Iterator[Any]]) -> None:
        self._fn = fn

    def collect(self) -> Iterator[Any]:
        yield from self._fn()


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, labels: list[str], samples: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in samples.items():
        family.add_metric(list(label_values), value)
    return family
