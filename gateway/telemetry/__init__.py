"""Traces and log context for voice sessions (docs/observability.md).

`tracing` turns OpenTelemetry on from the standard `OTEL_*` variables (off when unset),
`session_trace` gives each session its spans (a shared no-op when off), `context` tells
the log filter which session a line is about, and `attributes` names every span attribute.
"""

from gateway.telemetry.context import SessionFields, bind_session, bound_session, session_fields
from gateway.telemetry.session_trace import NO_TRACE, SessionTrace, start_session_trace
from gateway.telemetry.tracing import TracingConfigError, configure_tracing, flush_tracing, shutdown_tracing

__all__ = [
    "NO_TRACE",
    "SessionFields",
    "SessionTrace",
    "TracingConfigError",
    "bind_session",
    "bound_session",
    "configure_tracing",
    "flush_tracing",
    "session_fields",
    "shutdown_tracing",
    "start_session_trace",
]
