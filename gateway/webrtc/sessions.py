"""The session behind a WebRTC call or a minted secret: policed, admitted, opened in the ledger.

The decisions are `policies.session_config` (what the session config may hold) and
`Enforcement.admit` (budget, concurrency, start rate, headroom: the same admission as the
WebSocket path); this module turns their refusals into OpenAI-shaped errors, counts them,
and writes the `SessionStarted` row both routes open their session with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from gateway.errors import GatewayError
from gateway.ledger.records import SessionStarted
from gateway.services import GatewayServices
from gateway.session.admission import draining_error
from gateway.webrtc.access import Caller
from policies.metering import read_session_config
from policies.policy import TenantPolicy
from policies.session_config import SessionRefused


def refusal(refused: SessionRefused) -> GatewayError:
    """The error a refused session config is answered with (400 malformed, 403 not allowed)."""
    detail = refused.detail
    return GatewayError(refused.status, detail.message, code=detail.code, param=detail.param)


async def tenant_policy(services: GatewayServices, tenant_id: str) -> TenantPolicy:
    policy, _ = await services.enforcement.policy_for(tenant_id)
    return policy


async def admit(
    services: GatewayServices,
    tenant_id: str,
    session_id: str,
    model: str | None,
    session: Mapping[str, Any] | None = None,
) -> tuple[TenantPolicy, bool]:
    """Admit a session (`model` None: transcription); the policy in force and whether a lease is held.
    A transcription `session` naming its transcription model is counted under it (per-model caps)."""
    if services.live.draining:
        raise draining_error()
    counted = read_session_config(session).transcription_model if model is None and session is not None else None
    decided = await services.enforcement.admit(
        tenant_id, session_id, model, services.clock.time(), counted_model=counted
    )
    return decided.policy, decided.leased


async def release(services: GatewayServices, tenant_id: str, session_id: str, leased: bool) -> None:
    if leased:
        await services.enforcement.release(tenant_id, session_id)


@contextlib.contextmanager
def counting_refusals(services: GatewayServices) -> Iterator[None]:
    """Count a `GatewayError` raised inside in `voxgate_refusals_total` (by code and status), then re-raise it."""
    try:
        yield
    except GatewayError as error:
        with contextlib.suppress(Exception):
            services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()
        raise


def session_started(
    services: GatewayServices,
    caller: Caller,
    session_id: str,
    transport: Literal["webrtc", "client_secret"],
    intent: str,
    model: str | None,
    now: float,
) -> None:
    """Open the session's books: its `realtime_sessions` row, for `caller`'s tenant and key."""
    services.ledger.submit(
        SessionStarted(
            session_id=session_id,
            tenant_id=caller.tenant_id,
            api_key_id=caller.api_key_id,
            transport=transport,
            intent=intent,
            model=model,
            end_user_hash=caller.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
            tags=caller.tags,
        )
    )
