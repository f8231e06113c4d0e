"""Span attribute names, in one place: the OpenTelemetry GenAI conventions and voxgate's own.

Every `gen_ai.*` convention is still "development" upstream, and realtime sessions are only a
proposal there; keeping the names here means a rename in the conventions is one edit. What a
span may carry is listed in docs/observability.md: identifiers, counts, money and reasons,
never a credential, an end user's raw id or what was said.
"""

from __future__ import annotations

from typing import Final

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
ERROR_TYPE: Final = "error.type"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"

PROVIDER_OPENAI: Final = "openai"
# No well-known operation name fits a realtime session yet: the session's intent is the name
# ("realtime" or "transcription"), as the realtime proposal does.
OPERATION_REALTIME: Final = "realtime"

SESSION_ID: Final = "voxgate.session_id"
TENANT_ID: Final = "voxgate.tenant_id"
TRANSPORT: Final = "voxgate.transport"
COST_MICRO_USD: Final = "voxgate.cost_micro_usd"
RESPONSES: Final = "voxgate.responses"
END_REASON: Final = "voxgate.end_reason"
REFUSAL_CODE: Final = "voxgate.refusal.code"
PRICE_VERSION: Final = "voxgate.price_version"
LEDGER_RECORD: Final = "voxgate.ledger.record"

# Span names.
SPAN_ADMISSION: Final = "voxgate.admission"
SPAN_UPSTREAM_CONNECT: Final = "voxgate.upstream.connect"
SPAN_LEDGER_WRITE: Final = "voxgate.ledger.write"
