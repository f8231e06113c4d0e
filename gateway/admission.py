"""Admission of a `/v1/realtime` WebSocket, shared by every relay shell.

Both the ASGI relay and the fast relay call `admit` before they touch the upstream, then
`start_live_session` once the upstream is open. A refusal is a `GatewayError`, which the
shell turns into an HTTP response before the upgrade (docs/close-codes.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.auth import accepted_subprotocol, read_credentials, safety_identifier
from gateway.enforcement import SessionEffects
from gateway.errors import GatewayError, invalid_api_key, missing_api_key
from gateway.ids import new_id
from gateway.ledger import SessionStarted
from gateway.live_session import LiveSession
from gateway.services import GatewayServices
from gateway.storage.tenants import KeyIdentity
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import UNRESTRICTED, TenantPolicy


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


def draining_error() -> GatewayError:
    return GatewayError(503, "This gateway instance is shutting down; reconnect.", code="gateway_draining",
                        retry_after=1.0)  # fmt: skip


async def admit(
    services: GatewayServices,
    headers: Iterable[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    query_string: bytes,
) -> Admission:
    """Authenticate the tenant key and validate the query; raises `GatewayError` to refuse."""
    if services.live.draining:
        raise draining_error()
    headers = list(headers)
    creds = read_credentials(headers, subprotocols)
    if not creds.secret:
        raise missing_api_key()
    identity = await services.tenants.authenticate(creds.secret)
    if identity is None:
        raise invalid_api_key()
    query = dict(parse_qsl(query_string.decode("latin-1")))
    if "call_id" in query:
        raise GatewayError(400, "Attach to WebRTC calls through voxgate's call APIs.", code="unsupported_parameter",
                           param="call_id")  # fmt: skip
    intent = query.get("intent", "realtime")
    model = query.get("model") or ("" if intent == "transcription" else "gpt-realtime")
    end_user = creds.end_user or f"key:{identity.key_id}"
    safety_id = safety_identifier(services.settings.security.safety_identifier_secret, identity.tenant_id, end_user)
    beta = next((v.decode("latin-1") for k, v in headers if k.lower() == b"openai-beta"), None)
    session_id = new_id("vgs")
    policy, leased = UNRESTRICTED, False
    if services.enforcement is not None:
        # Policy, budget, concurrency, start rate and upstream headroom: refused before any upstream cost.
        decided = await services.enforcement.admit(identity.tenant_id, session_id, model or None, time.time())
        policy, leased = decided.policy, decided.leased
    return Admission(identity, query, intent, model, safety_id, beta, accepted_subprotocol(creds.offered_subprotocols),
                     session_id, policy, leased)  # fmt: skip


async def abandon(services: GatewayServices, admission: Admission) -> None:
    """Undo an admission whose session never started (upstream refused, client left)."""
    if admission.leased and services.enforcement is not None:
        await services.enforcement.release(admission.identity.tenant_id, admission.session_id)


def start_live_session(services: GatewayServices, admission: Admission) -> LiveSession:
    """Open the session's books (records `SessionStarted`) once the upstream has accepted."""
    identity = admission.identity
    session_id = admission.session_id or new_id("vgs")
    now = time.time()
    started = SessionStarted(
        session_id=session_id, tenant_id=identity.tenant_id, api_key_id=identity.key_id,
        transport="websocket", intent=admission.intent, model=admission.model or None,
        end_user_hash=admission.safety_id, gateway_instance=services.settings.server.instance_id,
        started_at=now,
    )  # fmt: skip
    identity_ = SessionIdentity(session_id, identity.tenant_id, admission.model, admission.intent)
    enforcement = services.enforcement
    policy = admission.policy if enforcement is not None else None
    governor = SessionGovernor(identity_, services.prices, policy=policy, started_at=now)
    effects = SessionEffects(enforcement, identity.tenant_id, session_id, admission.policy) if enforcement else None
    services.metrics.sessions_started.labels(started.transport, services.settings.server.relay).inc()
    return LiveSession(governor, services.ledger, started, effects=effects, enforcement=enforcement,
                       leased=admission.leased, metrics=services.metrics)  # fmt: skip
