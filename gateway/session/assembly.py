"""Session assembly, the same for every transport: admitted plan -> governor, effects, `LiveSession`.

A transport admits a session its own way (the WebSocket upgrade: `gateway.session.admission`;
a WebRTC call: minted or attached through the call APIs), then calls `assemble` once upstream
has accepted. `assemble` records `SessionStarted`; `LiveSession.end` records the end and
`LiveSession.aclose` finishes the shared-state work and gives the lease back. An admission
whose session never starts is undone with `release_admission`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger.writer import SessionStarted
from gateway.services import GatewayServices
from gateway.session.effects import SessionEffects
from gateway.session.enforcement import Enforcement
from gateway.session.live import LiveSession
from gateway.session.model_gate import ModelGate
from gateway.telemetry import NO_TRACE, SessionTrace, bind_session
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import UNRESTRICTED, TenantPolicy


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """Everything admission decided about a session that is about to start."""

    session_id: str
    tenant_id: str
    api_key_id: str | None
    transport: str  # "websocket" or "webrtc": the row's `transport`, the metric's label
    intent: str
    model: str  # "" for a transcription session
    safety_id: str
    policy: TenantPolicy | None  # None: metering only
    leased: bool = False  # holds a concurrency lease in the shared live state
    # The shell carries the client's socket: hold `session.created` until voxgate's own
    # configuration is confirmed upstream (docs/governor.md, "Opening").
    hold_opening: bool = False
    # False when the call APIs opened the session and a sideband (re)attaches to it: not a new start.
    new_session: bool = True
    tags: tuple[tuple[str, str], ...] = ()  # X-Voxgate-Tags, kept on the session row (docs/finance.md)


def shared_state(services: GatewayServices) -> Enforcement:
    """The process's enforcement (over Redis, or over memory in a single-process deployment)."""
    return services.enforcement


def assemble(
    services: GatewayServices, plan: SessionPlan, clock: Clock = SYSTEM_CLOCK, trace: SessionTrace = NO_TRACE
) -> LiveSession:
    """Open the session's books (records `SessionStarted`) and build its governor and effects.

    `trace` is the session's span (started by the transport, which traced its admission and
    upstream connect); this task, and the tasks the session starts, log with its ids.
    """
    now = clock.time()
    trace.admitted(plan.session_id, plan.tenant_id, plan.model, plan.intent)
    bind_session(plan.session_id, plan.tenant_id, trace)
    started = SessionStarted(
        session_id=plan.session_id,
        tenant_id=plan.tenant_id,
        api_key_id=plan.api_key_id,
        transport=plan.transport,
        intent=plan.intent,
        model=plan.model or None,
        end_user_hash=plan.safety_id,
        gateway_instance=services.settings.server.instance_id,
        started_at=now,
        tags=plan.tags,
    )
    # A sideband (re)attaching to a session gets a governor of its own: its reservation ids must not
    # repeat those an earlier holder of the session reserved and settled.
    holder = "" if plan.new_session else secrets.token_hex(4)
    identity = SessionIdentity(plan.session_id, plan.tenant_id, plan.model, plan.intent, holder)
    governor = SessionGovernor(
        identity, services.prices, policy=plan.policy, started_at=now, hold_opening=plan.hold_opening
    )
    effects = SessionEffects(
        shared_state(services),
        plan.tenant_id,
        plan.session_id,
        plan.policy or UNRESTRICTED,
        metrics=services.metrics,
        clock=clock,
        trace=trace,
    )
    if plan.new_session:
        services.metrics.sessions_started.labels(plan.transport).inc()
    # A transcription session's model arrives in a `session.update`: counted under its cap there.
    gate = (
        ModelGate(shared_state(services), plan.tenant_id, plan.session_id) if plan.intent == "transcription" else None
    )
    return LiveSession(governor, effects, started, clock=clock, leased=plan.leased, model_gate=gate)


async def release_admission(services: GatewayServices, tenant_id: str, session_id: str) -> None:
    """Undo an admission whose session never started (upstream refused, the client left)."""
    await shared_state(services).release(tenant_id, session_id)
