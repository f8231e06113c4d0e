"""The session a log line is about: a context variable the session shell sets and the log filter reads.

`bind_session` runs in the task that admits a session (the fast relay's upgrade, the sideband's
watch); every task started from it (effects, ticker, late verdicts) inherits the binding, so any
line they log carries `session_id`, `tenant_id` and, with tracing on, `trace_id` and `span_id`.
Transport callbacks do not run in that context: the shells pass `session_fields(...)` as
`extra` on the lines they log there.
"""

from __future__ import annotations

from contextvars import ContextVar

from gateway.telemetry.session_trace import NO_TRACE, SessionTrace

SessionFields = dict[str, str]

_bound: ContextVar[SessionFields | None] = ContextVar("voxgate_session", default=None)


def session_fields(session_id: str, tenant_id: str, trace: SessionTrace = NO_TRACE) -> SessionFields:
    """What every log line about this session carries."""
    fields = {"session_id": session_id, "tenant_id": tenant_id}
    ids = trace.ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


def bind_session(session_id: str, tenant_id: str, trace: SessionTrace = NO_TRACE) -> SessionFields:
    """Mark the current task (and the tasks it starts) as working for this session."""
    fields = session_fields(session_id, tenant_id, trace)
    _bound.set(fields)
    return fields


def bound_session() -> SessionFields | None:
    """The session the running code works for, if any."""
    return _bound.get()
