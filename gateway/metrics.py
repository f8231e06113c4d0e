"""Prometheus metrics: refusals, session ends, policy decisions, money, tokens and latencies.

Labels are bounded sets (codes, reasons, transports, models, directions) plus the tenant id on
the money and token counters: at most tenant x model series each, never a session id, an end
user or a secret. Ledger and live-session figures are read at scrape time, so the relay's hot
path pays nothing for them. Every family, and why its buckets are where they are, is in
docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.upstream_tls import failure_families

# Litestar adds "; charset=utf-8" to every text/ media type (and would add it twice).
CONTENT_TYPE = "text/plain; version=0.0.4"

# Buckets (seconds), each set where its decision lies (docs/observability.md, "Why these buckets").
# A voice turn feels live under ~0.5 s and broken past ~2 s: fine steps there, a tail to 10 s.
FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# voxgate's own work on one read: microseconds on the fast path; past 1 ms the event loop is saturated.
RELAY_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)
# Postgres and Redis round trips (about a millisecond each on a LAN) up to the pools' 5 s timeout.
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# TCP + TLS + the WebSocket upgrade to OpenAI: 0.1-0.5 s across regions, up to the 10 s connect timeout.
CONNECT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


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
        self.cost = Counter(
            "voxgate_cost_micro_usd", "Metered cost in micro-USD.", ["tenant", "model"], registry=self.registry
        )
        self.input_tokens = Counter(
            "voxgate_input_tokens", "Input tokens upstream billed.", ["tenant", "model"], registry=self.registry
        )
        self.output_tokens = Counter(
            "voxgate_output_tokens", "Output tokens upstream billed.", ["tenant", "model"], registry=self.registry
        )
        self.time_to_first_audio = Histogram(
            "voxgate_time_to_first_audio_seconds",
            "From a response's request (the client's response.create) to its first audio delta upstream.",
            ["model"],
            buckets=FIRST_AUDIO_BUCKETS,
            registry=self.registry,
        )
        self.relay_latency = Histogram(
            "voxgate_relay_added_latency_seconds",
            "voxgate's time on one read, from its bytes arriving to their write onward (sampled reads).",
            ["direction"],
            buckets=RELAY_BUCKETS,
            registry=self.registry,
        )
        self.admission = Histogram(
            "voxgate_admission_seconds",
            "Admission of a session: key, policy, start rate, concurrency lease, budget.",
            ["outcome"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self.upstream_connect = Histogram(
            "voxgate_upstream_connect_seconds",
            "Opening the upstream WebSocket (TCP, TLS, upgrade).",
            ["transport"],
            buckets=CONNECT_BUCKETS,
            registry=self.registry,
        )
        self.ledger_write = Histogram(
            "voxgate_ledger_write_seconds",
            "One ledger batch's write to Postgres (a transaction, or one atomic statement).",
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self.translation_offers_unconfirmed = Counter(
            "voxgate_translation_offers_unconfirmed",
            "Translation offers whose answer was lost after they were sent, booked at their cap.",
            ["failure"],
            registry=self.registry,
        )
        # voxgate_upstream_connect_failures_total{cause}: counted where the failure is classified.
        self.watch(failure_families)

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
