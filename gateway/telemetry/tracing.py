"""Tracing setup from the standard `OTEL_*` variables; nothing at all when none asks for traces.

Traces are on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp` or `console`), or, with
that variable unset, when an OTLP endpoint is given (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turns them off. The SDK itself reads the rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). Off, `session_tracer()` is
None and every session gets the shared no-op trace: no span object is ever made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

TRACER_NAME = "voxgate"
DEFAULT_SERVICE_NAME = "voxgate"
# The OTLP exporter shipped with voxgate (opentelemetry-exporter-otlp-proto-http) speaks only this.
SUPPORTED_PROTOCOL = "http/protobuf"


class TracingConfigError(ValueError):
    """An `OTEL_*` variable asks for something voxgate cannot export with."""


class _Tracing:
    provider: TracerProvider | None = None
    tracer: Tracer | None = None


_state = _Tracing()


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(env)
    if exporters is not None:
        return bool(exporters)
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters(env: Mapping[str, str]) -> list[str] | None:
    value = env.get("OTEL_TRACES_EXPORTER")
    if value is None or not value.strip():
        return None
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    return [name for name in names if name != "none"]


def _protocol(env: Mapping[str, str]) -> str:
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or SUPPORTED_PROTOCOL
    ).strip()


def build_exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters `env` names; raises `TracingConfigError` for one voxgate does not ship."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    exporters: list[SpanExporter] = []
    for name in _exporters(env) or ["otlp"]:
        if name == "otlp":
            if _protocol(env) != SUPPORTED_PROTOCOL:
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL must be {SUPPORTED_PROTOCOL} (voxgate ships the OTLP/HTTP "
                    f"protobuf exporter), got {_protocol(env)!r}"
                )
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: voxgate exports with otlp, console or none, got {name!r}")
    return exporters


def configure_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Start exporting spans if `env` asks for it (once per process). True when tracing is on."""
    env = os.environ if env is None else env
    if _state.tracer is not None:
        return True
    if not tracing_requested(env):
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = build_exporters(env)
    attributes: dict[str, str] = {SERVICE_VERSION: __version__}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME  # the SDK's default would be "unknown_service"
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _state.provider = provider
    _state.tracer = provider.get_tracer(TRACER_NAME, __version__)
    return True


def session_tracer() -> Tracer | None:
    """The tracer sessions use; None when tracing is off."""
    return _state.tracer


def flush_tracing(timeout_seconds: float = 5.0) -> None:
    """Export the spans buffered so far (the app's shutdown: uvicorn may end the process by its
    signal right after, before any `finally` of the CLI runs)."""
    if _state.provider is not None:
        _state.provider.force_flush(int(timeout_seconds * 1000))


def shutdown_tracing() -> None:
    """Export what is still buffered (at most the SDK's export timeout) and stop."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()
