"""One voice session's spans: the session, and its admission, upstream connect, responses and ledger writes.

The session span follows the GenAI conventions (`gateway.telemetry.attributes`): its name is
`{operation} {model}`, its kind CLIENT (voxgate calls OpenAI for the tenant), and at the end it
carries the session's token totals, its cost in micro-USD and why it ended. Each response is a
child span from `response.created` to the moment its `response.done` may go to the client; its
ledger write (the wait for the batch that commits it) is a child of the response.

`start_session_trace` returns the shared `NO_TRACE` when tracing is off: every method of it is
an empty call, so a session pays nothing. What a span may carry is an identifier, a count, an
amount or a reason (docs/observability.md); no method takes text from the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.telemetry import attributes as attr
from gateway.telemetry.tracing import session_tracer

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

# A session's responses waiting for their `response.done`: more in flight at once is a broken
# upstream; the oldest is dropped from the trace, never from the ledger.
MAX_OPEN_RESPONSES = 64


class SessionTrace:
    """The no-op trace: what a session holds when tracing is off (and the interface of the real one)."""

    recording = False

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A child span around one step before the session starts (admission, upstream connect)."""
        return contextlib.nullcontext()

    def admitted(self, session_id: str, tenant_id: str, model: str, intent: str) -> None:
        """Name the session once admission knows who it is for."""

    def refused(self, code: str, status: int) -> None:
        """The session never started: end its span as an error."""

    def response_created(self, response_id: str) -> None:
        """Upstream announced a response (its span starts now)."""

    def response_done(
        self,
        response_id: str,
        status: str,
        input_tokens: int,
        output_tokens: int,
        cost_micro_usd: int,
        durable: asyncio.Future[None] | None,
    ) -> None:
        """A response was metered; `durable` resolves when the ledger has it (its span ends then)."""

    def end(self, reason: str, responses: int, input_tokens: int, output_tokens: int, cost_micro_usd: int) -> None:
        """The session ended: totals on its span, and the span ends."""

    def ids(self) -> tuple[str, str] | None:
        """The session span's (trace id, span id) in hex, for log lines; None when not recording."""
        return None


NO_TRACE = SessionTrace()


def start_session_trace(transport: str, clock: Clock = SYSTEM_CLOCK) -> SessionTrace:
    """A recording trace when tracing is on (gateway.telemetry.tracing), else `NO_TRACE`."""
    tracer = session_tracer()
    return NO_TRACE if tracer is None else RecordingSessionTrace(tracer, transport, clock)


class RecordingSessionTrace(SessionTrace):
    recording = True

    def __init__(self, tracer: Tracer, transport: str, clock: Clock) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context

        self._tracer = tracer
        self._clock = clock
        self._model = ""
        self.span: Span = tracer.start_span(
            attr.OPERATION_REALTIME,
            kind=SpanKind.CLIENT,
            start_time=self._now(),
            attributes={
                attr.GEN_AI_OPERATION_NAME: attr.OPERATION_REALTIME,
                attr.GEN_AI_PROVIDER_NAME: attr.PROVIDER_OPENAI,
                attr.TRANSPORT: transport,
            },
        )
        self._context = set_span_in_context(self.span)
        self._responses: dict[str, int] = {}  # response id -> start (ns)
        self._ended = False

    def _now(self) -> int:
        return int(self._clock.time() * 1e9)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        span = self._tracer.start_span(name, context=self._context, start_time=self._now())
        try:
            yield
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end(end_time=self._now())

    def admitted(self, session_id: str, tenant_id: str, model: str, intent: str) -> None:
        self._model = model
        self.span.update_name(f"{intent} {model}".strip())
        self.span.set_attributes(
            {
                attr.GEN_AI_OPERATION_NAME: intent,
                attr.GEN_AI_REQUEST_MODEL: model,
                attr.GEN_AI_CONVERSATION_ID: session_id,
                attr.SESSION_ID: session_id,
                attr.TENANT_ID: tenant_id,
            }
        )

    def refused(self, code: str, status: int) -> None:
        from opentelemetry.trace import StatusCode

        if self._ended:
            return
        self._ended = True
        self.span.set_attributes({attr.REFUSAL_CODE: code, attr.HTTP_RESPONSE_STATUS_CODE: status})
        self.span.set_attribute(attr.ERROR_TYPE, code)
        self.span.set_status(StatusCode.ERROR, code)
        self.span.end(end_time=self._now())

    def response_created(self, response_id: str) -> None:
        if len(self._responses) >= MAX_OPEN_RESPONSES:
            self._responses.pop(next(iter(self._responses)))
        self._responses.setdefault(response_id, self._now())

    def response_done(
        self,
        response_id: str,
        status: str,
        input_tokens: int,
        output_tokens: int,
        cost_micro_usd: int,
        durable: asyncio.Future[None] | None,
    ) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context

        now = self._now()
        response = self._tracer.start_span(
            f"response {self._model}".strip(),
            context=self._context,
            kind=SpanKind.CLIENT,
            start_time=self._responses.pop(response_id, now),
            attributes={
                attr.GEN_AI_OPERATION_NAME: attr.OPERATION_REALTIME,
                attr.GEN_AI_PROVIDER_NAME: attr.PROVIDER_OPENAI,
                attr.GEN_AI_REQUEST_MODEL: self._model,
                attr.GEN_AI_RESPONSE_ID: response_id,
                attr.GEN_AI_RESPONSE_FINISH_REASONS: (status,),
                attr.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
                attr.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
                attr.COST_MICRO_USD: cost_micro_usd,
            },
        )
        if durable is None:
            response.end(end_time=now)
            return
        write = self._tracer.start_span(
            attr.SPAN_LEDGER_WRITE,
            context=set_span_in_context(response),
            start_time=now,
            attributes={attr.LEDGER_RECORD: "usage", attr.GEN_AI_RESPONSE_ID: response_id},
        )

        def written(future: asyncio.Future[None]) -> None:
            end = self._now()
            if future.cancelled() or future.exception() is not None:
                _failed(write, future.exception() or asyncio.CancelledError())
            write.end(end_time=end)
            response.end(end_time=end)

        durable.add_done_callback(written)

    def end(self, reason: str, responses: int, input_tokens: int, output_tokens: int, cost_micro_usd: int) -> None:
        if self._ended:
            return
        self._ended = True
        self.span.set_attributes(
            {
                attr.END_REASON: reason,
                attr.RESPONSES: responses,
                attr.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
                attr.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
                attr.COST_MICRO_USD: cost_micro_usd,
            }
        )
        self.span.end(end_time=self._now())

    def ids(self) -> tuple[str, str] | None:
        context = self.span.get_span_context()
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _failed(span: Span, exc: BaseException) -> None:
    """Mark a span failed with the error's type (or OpenAI-shaped code): never its message."""
    from opentelemetry.trace import StatusCode

    code = getattr(exc, "code", None)
    kind = code if isinstance(code, str) and code else type(exc).__name__
    span.set_attribute(attr.ERROR_TYPE, kind)
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        span.set_attribute(attr.HTTP_RESPONSE_STATUS_CODE, status)
    span.set_status(StatusCode.ERROR, kind)
