"""One translation WebSocket: admitted before the upgrade, relayed, metered by appended audio.

`client.realtime.translations.connect(model="gpt-realtime-translate")` with `base_url` at
voxgate opens `/v1/realtime/translations?model=…`. voxgate authenticates the tenant key,
admits the session on the model's per-minute price (allowlist, budget, concurrency, start
rate), opens upstream with its own key and relays every frame. The client's appends are
counted (`meter.TranslationMeter`); at the end one `duration_usage` row books the audio.
While it runs the session is carried in `services.live` (lease heartbeats, drain), and an
exhausted tenant budget closes it: `session.close` upstream (which flushes), then close 4003.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from websockets.asyncio.client import ClientConnection

from gateway.auth.credentials import key_safety_identifier, read_credentials, safety_identifier
from gateway.errors import GatewayError, invalid_api_key, missing_api_key
from gateway.ids import new_id
from gateway.ledger.records import SessionEnded, SessionStarted
from gateway.services import GatewayServices
from gateway.session.admission import draining_error, refusing_outages
from gateway.session.assembly import shared_state
from gateway.session.effects import SessionEffects
from gateway.translation.meter import TranslationMeter
from gateway.upstream import open_upstream
from gateway.websocket_relay import Message, accept_or_refuse, close_client, relay, to_client
from policies.actions import RecordSpend
from policies.policy import TenantPolicy

log = logging.getLogger("voxgate.translation")

UPSTREAM_PATH: Final = "/realtime/translations"
CLOSE_BUDGET: Final = 4003  # docs/close-codes.md
FLUSH_WAIT_S: Final = 2.0  # how long a budget close waits for upstream's `session.closed`


def translation_model(query_string: bytes) -> str:
    """The required `model` query parameter (the only one passed on); else a 400 before the upgrade."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, max_num_fields=8)
    unknown = [name for name, _ in pairs if name != "model"]
    if unknown:
        name = unknown[0][:64]
        raise GatewayError(400, f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)
    models = [value for _, value in pairs]
    if len(models) != 1 or not models[0]:
        raise GatewayError(
            400, "The 'model' query parameter is required.", code="missing_required_parameter", param="model"
        )
    return models[0]


class TranslationSession:
    """A translation socket as `services.live` carries it: budget broadcasts and drains reach it."""

    def __init__(self, services: GatewayServices, started: SessionStarted, policy: TenantPolicy, leased: bool) -> None:
        self.services, self.started, self.policy, self.leased = services, started, policy, leased
        self.meter = TranslationMeter(started.session_id, started.tenant_id, started.model or "")
        # The booked cost joins the tenant's shared spend, as any session's does.
        self.effects = SessionEffects(
            shared_state(services), started.tenant_id, started.session_id, policy, clock=services.clock
        )
        self.closing: tuple[int, str, str] | None = None
        self.stop = asyncio.Event()

    @property
    def live(self) -> TranslationSession:
        return self

    @property
    def session_id(self) -> str:
        return self.started.session_id

    async def budget_exhausted(self, now: float) -> None:
        self.shutdown(CLOSE_BUDGET, "budget exhausted", "budget_exhausted")

    async def policy_changed(self, policy: TenantPolicy, now: float) -> None:
        self.policy = self.effects.policy = policy

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
        """A translation reserves nothing ahead: its spend is recorded once, at the end."""

    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason, end_reason)
            self.stop.set()


async def serve_translation(services: GatewayServices, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The whole life of one translation socket."""
    try:
        session = await _admit(services, scope)
        upstream = await _open(services, session)
    except GatewayError as error:
        await accept_or_refuse(scope, receive, send, error)
        return
    if not await accept_or_refuse(scope, receive, send, None):
        await upstream.close()
        await _release(services, session)
        return
    services.ledger.submit(session.started)
    session.effects.start(session)
    services.live.add(session)
    end_reason, detail = "client_closed", None
    try:
        end_reason, detail = await _carry(session, receive, send, upstream)
    finally:
        try:
            now = services.clock.time()
            record = session.meter.book(services.prices, now)
            if record is not None:
                services.ledger.submit(record)
                session.effects.submit(RecordSpend(f"{record.session_id}:{record.kind}", record.cost_micro_usd))
            services.ledger.submit(SessionEnded(session.session_id, now, end_reason, detail))
            services.metrics.sessions_ended.labels(end_reason).inc()
            await session.effects.stop()
            await _release(services, session)
        finally:  # only now: a drain waits for the spend settled and the lease given back
            services.live.discard(session)


async def _carry(
    session: TranslationSession, receive: Any, send: Any, upstream: ClientConnection
) -> tuple[str, str | None]:
    meter, write = session.meter, to_client(send)

    async def from_client(message: Message) -> None:
        # Every client frame is decoded: an append's `type` may come after its audio (the Agents
        # SDK's key order) or an `event_id`, and translation traffic is light enough to read whole.
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            event = orjson.loads(message)
            if isinstance(event, dict):
                meter.on_client(event)
        await upstream.send(message)

    async def from_upstream(message: Message) -> None:
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(message)
            if isinstance(event, dict):
                meter.on_upstream(event)
        await write(message)

    carried = asyncio.ensure_future(relay(receive, send, upstream, from_client, from_upstream))
    stopped = asyncio.ensure_future(session.stop.wait())
    await asyncio.wait({carried, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if session.closing is not None and not carried.done():
        code, reason, end_reason = session.closing
        with contextlib.suppress(Exception):
            await upstream.send(orjson.dumps({"type": "session.close"}).decode())  # flushes, then session.closed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(carried), FLUSH_WAIT_S)
        carried.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await carried
        await upstream.close()
        await close_client(send, code, reason)
        return end_reason, reason
    ended = await carried
    if ended == "upstream":
        await close_client(send, upstream.close_code or 1000, upstream.close_reason or "")
        return "upstream_closed", f"upstream closed with {upstream.close_code}"
    await upstream.close()
    return "client_closed", None


async def _admit(services: GatewayServices, scope: dict[str, Any]) -> TranslationSession:
    if services.live.draining:
        raise draining_error()
    headers = list(scope.get("headers") or ())
    model = translation_model(scope.get("query_string", b""))
    creds = read_credentials(headers, ())
    if not creds.secret:
        raise missing_api_key()
    with refusing_outages():
        identity = await services.tenants.authenticate(creds.secret)
    if identity is None:
        raise invalid_api_key()
    secret = services.settings.security.safety_identifier_secret
    safety_id = (
        safety_identifier(secret, identity.tenant_id, creds.end_user)
        if creds.end_user
        else key_safety_identifier(secret, identity.tenant_id, identity.key_id)
    )
    session_id = new_id("vgs")
    now = services.clock.time()
    with refusing_outages():
        admitted = await services.enforcement.admit(identity.tenant_id, session_id, model, now, basis="durations")
    started = SessionStarted(
        session_id=session_id,
        tenant_id=identity.tenant_id,
        api_key_id=identity.key_id,
        transport="websocket",
        intent="translation",
        model=model,
        end_user_hash=safety_id,
        gateway_instance=services.settings.server.instance_id,
        started_at=now,
    )
    return TranslationSession(services, started, admitted.policy, admitted.leased)


async def _open(services: GatewayServices, session: TranslationSession) -> ClientConnection:
    started = session.started
    try:
        return await open_upstream(
            services.settings.upstream, {"model": started.model or ""}, started.end_user_hash or "", path=UPSTREAM_PATH
        )
    except GatewayError:
        await _release(services, session)
        raise


async def _release(services: GatewayServices, session: TranslationSession) -> None:
    if session.leased:
        session.leased = False
        with contextlib.suppress(Exception):
            await services.enforcement.release(session.started.tenant_id, session.session_id)
