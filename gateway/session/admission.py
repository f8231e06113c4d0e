"""Admission of a `/v1/realtime` WebSocket, shared by every relay shell.

The fast relay calls `admit` before it touches the upstream, then `assemble(services,
session_plan(admission))` (gateway/session/assembly.py) once the upstream is open. A
refusal is a `GatewayError`, which the shell turns into an HTTP response before the
upgrade (docs/close-codes.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from gateway.auth.credentials import accepted_subprotocol, key_safety_identifier, read_credentials, safety_identifier
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError, invalid_api_key, missing_api_key, outage_refusal
from gateway.ids import new_id
from gateway.services import GatewayServices
from gateway.session.assembly import SessionPlan, release_admission, shared_state
from gateway.storage.tenants import KeyIdentity
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.session_config import UPSTREAM_DEFAULT_MODEL
from policies.tags import Tags, TagsError, parse_tags


@dataclass(frozen=True, slots=True)
class Admission:
    """A client the gateway has agreed to serve, and what the upstream must be asked for."""

    identity: KeyIdentity
    query: dict[str, str]
    intent: str
    model: str
    safety_id: str
    beta: str | None  # the client's OpenAI-Beta header, passed on
    subprotocol: str | None  # what to answer in the 101
    session_id: str = ""
    policy: TenantPolicy = UNRESTRICTED
    leased: bool = False  # holds a concurrency lease in the shared live state
    tags: Tags = ()  # the client's X-Voxgate-Tags (docs/finance.md)


# The query parameters OpenAI's GA Realtime WebSocket takes for a new session; anything else
# (a differently cased `CALL_ID`, an `api_key`, SDK `extra_query` noise) never reaches upstream.
UPSTREAM_QUERY_PARAMETERS: Final = frozenset({"model", "intent"})
INTENTS: Final = frozenset({"realtime", "transcription"})
# `OpenAI-Beta` values passed on: `realtime=v1` selects the beta Realtime protocol upstream.
OPENAI_BETA_VALUES: Final = frozenset({"realtime=v1"})


def upstream_query(query_string: bytes) -> dict[str, str]:
    """The upstream query, built only from allowlisted parameters; else a 400 before the upgrade.

    Names are case-sensitive; an unknown name is `unknown_parameter`, `call_id` is
    `unsupported_parameter` (attach goes through voxgate's call APIs), a repeated name is
    `duplicate_parameter`, and `intent` is `realtime` or `transcription`.
    """
    try:
        pairs = parse_qsl(
            query_string.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=16,
        )
    except (UnicodeDecodeError, ValueError):
        raise GatewayError(400, "The query string is malformed.", code="invalid_query") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name == "call_id":
            raise GatewayError(
                400,
                "Attach to WebRTC calls through voxgate's call APIs.",
                code="unsupported_parameter",
                param="call_id",
            )
        if name not in UPSTREAM_QUERY_PARAMETERS:
            raise GatewayError(400, f"Unknown parameter: '{name[:64]}'.", code="unknown_parameter", param=name[:64])
        if name in query:
            raise GatewayError(
                400, f"The parameter '{name}' is given more than once.", code="duplicate_parameter", param=name
            )
        query[name] = value
    if "intent" in query and query["intent"] not in INTENTS:
        raise GatewayError(400, "'intent' must be 'realtime' or 'transcription'.", code="invalid_value", param="intent")
    return query


def openai_beta(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The client's `OpenAI-Beta` header when it is one voxgate passes on; any other value is a 400."""
    values = [v for k, v in headers if k.lower() == b"openai-beta"]
    if not values:
        return None
    value = values[0].decode("latin-1").strip()
    if len(values) > 1 or value not in OPENAI_BETA_VALUES:
        raise GatewayError(
            400,
            "Unsupported OpenAI-Beta header: voxgate passes on only 'realtime=v1'.",
            code="invalid_header",
            param="OpenAI-Beta",
        )
    return value


TAGS_HEADER = b"x-voxgate-tags"


def session_tags(headers: Iterable[tuple[bytes, bytes]]) -> Tags:
    """The `X-Voxgate-Tags` of a request (cost per task), or a 400 naming the rule it breaks."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == TAGS_HEADER]
    try:
        return parse_tags(values)
    except TagsError as exc:
        raise GatewayError(400, str(exc), code="invalid_tags", param="X-Voxgate-Tags") from None


def draining_error() -> GatewayError:
    return GatewayError(
        503, "This gateway instance is shutting down; reconnect.", code="gateway_draining", retry_after=1.0
    )


@contextlib.contextmanager
def refusing_outages(clock: Clock = SYSTEM_CLOCK) -> Iterator[None]:
    """Turn "Postgres or Redis is unreachable" into a retryable 503; let every other error through.
    `clock` (the caller's `GatewayServices.clock`) paces the outage log line."""
    try:
        yield
    except Exception as exc:
        refusal = outage_refusal(exc, clock)
        if refusal is None:
            raise
        raise refusal from exc


async def admit(
    services: GatewayServices,
    headers: Iterable[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    query_string: bytes,
    *,
    live: bool = False,
) -> Admission:
    """Authenticate the tenant key and validate the query; raises `GatewayError` to refuse.

    `live`: a GPT-Live WebSocket (no query; its model comes in `session.start`, after the upgrade)."""
    if services.live.draining:
        raise draining_error()
    headers = list(headers)
    creds = read_credentials(headers, subprotocols)
    if not creds.secret:
        raise missing_api_key()
    with refusing_outages(services.clock):
        identity = await services.tenants.authenticate(creds.secret)
    if identity is None:
        raise invalid_api_key()
    tags = session_tags(headers)
    query = upstream_query(query_string)
    intent = "live" if live else query.get("intent", "realtime")
    model = query.get("model") or ("" if intent in ("transcription", "live") else UPSTREAM_DEFAULT_MODEL)
    secret = services.settings.security.safety_identifier_secret
    safety_id = (
        safety_identifier(secret, identity.tenant_id, creds.end_user)
        if creds.end_user
        else key_safety_identifier(secret, identity.tenant_id, identity.key_id)
    )
    beta = openai_beta(headers)
    session_id = new_id("vgs")
    # Policy, budget, concurrency, start rate and upstream headroom: refused before any upstream cost.
    with refusing_outages(services.clock):
        decided = await shared_state(services).admit(
            identity.tenant_id, session_id, model or None, services.clock.time(), model_at_start=live
        )
    policy, leased = decided.policy, decided.leased
    return Admission(
        identity,
        query,
        intent,
        model,
        safety_id,
        beta,
        accepted_subprotocol(creds.offered_subprotocols),
        session_id,
        policy,
        leased,
        tags,
    )


async def abandon(services: GatewayServices, admission: Admission) -> None:
    """Undo an admission whose session never started (upstream refused, client left)."""
    if admission.leased:
        await release_admission(services, admission.identity.tenant_id, admission.session_id)


def session_plan(admission: Admission) -> SessionPlan:
    """What `assemble` needs of a WebSocket admission; the relay holds the opening (docs/governor.md)."""
    identity = admission.identity
    return SessionPlan(
        session_id=admission.session_id,
        tenant_id=identity.tenant_id,
        api_key_id=identity.key_id,
        transport="websocket",
        intent=admission.intent,
        model=admission.model,
        safety_id=admission.safety_id,
        policy=admission.policy,
        leased=admission.leased,
        hold_opening=True,
        tags=admission.tags,
    )
