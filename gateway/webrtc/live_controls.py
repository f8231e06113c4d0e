"""Tenant-facing GPT-Live controls: only for session ids the calling tenant owns.

Upstream, voxgate's one key reaches every session of the project, so each of `/attach`
(WebSocket), `/fork` (WebSocket and POST), `/hangup`, `/content` and the SIP
`/accept|reject|refer` first looks the id up in `live_store`: an id another tenant owns (or
a browser user's session seen by another user) gets the same 404 as an unknown one, before
any upstream connection or request. A WebSocket fork is a new session, admitted and
metered on its own under the same policy, its `session.start` overrides and every
`session.update` policed like a create's config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from litestar import Litestar
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.auth.credentials import END_USER_HEADER
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.records import SessionStarted
from gateway.session.admission import draining_error, refusing_outages
from gateway.session.live_call import LiveCall, LiveSides
from gateway.upstream import open_upstream
from gateway.webrtc.access import Caller, Presented, authenticate
from gateway.webrtc.context import WebRtcContext, context_of
from gateway.webrtc.live_attach import relay_policed
from gateway.webrtc.live_calls import LIVE_SESSIONS, LiveContext, live_context_of
from gateway.webrtc.live_config import refusal_error
from gateway.webrtc.live_store import LiveRecord, LiveStore
from gateway.webrtc.sessions import tenant_policy
from gateway.webrtc.upstream_http import is_call_id
from gateway.websocket_relay import Message, accept_or_refuse, close_client, relay, to_client
from policies.live.config import LiveRefusal, LiveRules, police_overrides, police_start
from policies.live.governor import LiveGovernor, live_error
from policies.live.meter import LiveIdentity
from policies.policy import UNRESTRICTED, TenantPolicy

log = logging.getLogger("voxgate.live")

#: Control action -> the Accept header the SDK sends with it.
CONTROLS: Final = {"hangup": "*/*", "accept": "*/*", "reject": "*/*", "refer": "*/*"}
_END_USER: Final = END_USER_HEADER.encode()


def live_not_found(live_id: str) -> GatewayError:
    # The same answer for an unknown session and another tenant's.
    return GatewayError(404, f"Live session '{live_id}' not found.", code="not_found", param="session_id")


async def visible_live(store: LiveStore, caller: Caller, live_id: str) -> LiveRecord:
    """The session if `caller` owns it (a browser token: only its own user's); else the 404."""
    record = await store.get(live_id) if is_call_id(live_id) else None
    if record is None or record.tenant_id != caller.tenant_id:
        raise live_not_found(live_id)
    if caller.via == "browser_token" and record.safety_id != caller.safety_id:
        raise live_not_found(live_id)
    return record


async def control(context: WebRtcContext, caller: Caller, record: LiveRecord, action: str, body: Any) -> bytes:
    """Proxy one control to upstream (ownership already checked); upstream's body.

    An accept starts the SIP session, so its `session` is policed like a `session.start`."""
    path = f"{LIVE_SESSIONS}/{record.live_session_id}/{action}"
    sent = body if isinstance(body, dict) and action != "hangup" else None
    if action == "accept" and sent is not None:
        services = context.services
        policy = await tenant_policy(services, caller.tenant_id)
        policed = police_start(sent.get("session"), LiveRules.from_policy(policy, services.prices), services.prices)
        if isinstance(policed, LiveRefusal):
            raise refusal_error(policed)
        sent = {**sent, "session": policed.session}
    response = await context.upstream.send("POST", path, caller.safety_id, accept=CONTROLS[action], body=sent)
    return response.content


async def content(context: WebRtcContext, caller: Caller, record: LiveRecord) -> bytes:
    path = f"{LIVE_SESSIONS}/{record.live_session_id}/content"
    response = await context.upstream.send("GET", path, caller.safety_id, accept="application/binary")
    return response.content


async def _socket_caller(context: WebRtcContext, scope: dict[str, Any]) -> Caller:
    headers = dict(scope.get("headers") or ())
    authorization = headers.get(b"authorization", b"").decode("latin-1") or None
    services = context.services
    return await authenticate(
        Presented(authorization, headers.get(_END_USER, b"")),
        services.tenants,
        context.browser_tokens,
        services.settings.security.safety_identifier_secret,
        allow_browser=False,
    )


async def _owned(app: Litestar, scope: dict[str, Any], live_id: str) -> tuple[WebRtcContext, Caller, LiveRecord]:
    context = context_of(app)
    # A socket has no exception handler: an outage is a 503 before the upgrade.
    with refusing_outages(context.services.clock):
        caller = await _socket_caller(context, scope)
        record = await visible_live(live_context_of(context).store, caller, live_id)
    return context, caller, record


async def serve_attach(app: Litestar, scope: dict[str, Any], receive: Any, send: Any, live_id: str) -> None:
    """A tenant's sideband on its own session: its client events policed (`live_attach`); voxgate
    meters on its own sideband."""
    try:
        context, caller, record = await _owned(app, scope, live_id)
        query = {k: v for k, v in _query(scope) if k == "graceful_close"}  # the only parameter attach takes
        upstream = await open_upstream(
            context.services.settings.upstream, query, caller.safety_id, path=f"{LIVE_SESSIONS}/{live_id}/attach"
        )
    except GatewayError as error:
        await accept_or_refuse(scope, receive, send, error)
        return
    if await accept_or_refuse(scope, receive, send, None):
        await relay_policed(context.services, caller.tenant_id, record.session_id, receive, send, upstream)
    else:
        await upstream.close()


async def serve_fork(app: Litestar, scope: dict[str, Any], receive: Any, send: Any, live_id: str) -> None:
    """A WebSocket fork of the tenant's own session: a new session, policed, admitted and metered."""
    try:
        context, caller, parent = await _owned(app, scope, live_id)
        fork = ForkSocket(context, live_context_of(context), caller, parent)
        with refusing_outages(context.services.clock):
            await fork.admit()
    except GatewayError as error:
        await accept_or_refuse(scope, receive, send, error)
        return
    try:
        upstream = await open_upstream(
            context.services.settings.upstream, {}, caller.safety_id, path=f"{LIVE_SESSIONS}/{live_id}/fork"
        )
    except GatewayError as error:
        await fork.release()
        await accept_or_refuse(scope, receive, send, error)
        return
    if not await accept_or_refuse(scope, receive, send, None):
        await fork.release()
        await upstream.close()
        return
    await fork.run(receive, send, upstream)


class ForkSocket:
    """One WebSocket fork: its own voxgate session under the parent's policy, driven by a `LiveCall`.

    Its `session.start` carries overrides only (the model is inherited), policed as a fork's
    (`police_overrides`); everything after it goes through the Live governor like any session.
    """

    def __init__(self, context: WebRtcContext, live: LiveContext, caller: Caller, parent: LiveRecord) -> None:
        self.context, self.live, self.caller, self.parent = context, live, caller, parent
        self.services = context.services
        self.session_id = new_id("vgs")
        self.leased = False
        self.policy: TenantPolicy | None = None
        self.recorded = False

    async def admit(self) -> None:
        services = self.services
        if services.live.draining:
            raise draining_error()
        admitted = await services.enforcement.admit(
            self.caller.tenant_id, self.session_id, self.parent.model, services.clock.time(), basis="durations"
        )
        self.policy, self.leased = admitted.policy, admitted.leased

    async def release(self) -> None:
        if self.leased:
            self.leased = False
            await self.services.enforcement.release(self.caller.tenant_id, self.session_id)

    async def run(self, receive: Any, send: Any, upstream: ClientConnection) -> None:
        services, caller, clock = self.services, self.caller, self.services.clock
        now = clock.time()
        started = SessionStarted(
            session_id=self.session_id,
            tenant_id=caller.tenant_id,
            api_key_id=caller.api_key_id,
            transport="websocket",
            intent="live",
            model=self.parent.model,
            end_user_hash=caller.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
        )
        governor = LiveGovernor(
            LiveIdentity(self.session_id, caller.tenant_id, self.parent.model), services.prices, self.policy, now
        )

        async def close_socket(code: int, reason: str) -> None:
            await close_client(send, code, reason)

        async def close_upstream(code: int, reason: str) -> None:
            await upstream.close()

        sides = LiveSides(to_client(send), upstream.send, close_socket, close_upstream)
        call = LiveCall(services, governor, started, self.policy, sides, leased=self.leased, clock=clock)
        self.leased = False  # the call owns the lease now
        call.start()
        services.live.add(call)
        ticks = asyncio.create_task(call.run_ticks())
        rules = LiveRules.from_policy(self.policy or UNRESTRICTED, services.prices)

        async def from_client(message: Message) -> None:
            event = _json(message)
            if event is None or event.get("type") != "session.start":
                await call.from_client(message)
                return
            policed = police_overrides(event.get("session") or {}, rules)
            if isinstance(policed, LiveRefusal):
                client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
                error = live_error(
                    policed.code,
                    policed.message,
                    policed.param or None,
                    new_id("vgev"),
                    type=policed.type,
                    client_event_id=client_id,
                )
                await to_client(send)(orjson.dumps(error).decode())
                return
            await upstream.send(orjson.dumps({**event, "session": policed.session}).decode())

        async def from_upstream(message: Message) -> None:
            await call.from_upstream(message)
            await self._record_fork(governor)

        try:
            await call.act(governor.opening(now))
            ended = await relay(receive, send, upstream, from_client, from_upstream)
            if ended == "client":
                await call.client_gone()  # session.close upstream: its session.closed books the final usage
                with contextlib.suppress(TimeoutError, ConnectionClosed):
                    async with clock.timeout(governor.config.close_wait_s):
                        while call.awaiting_upstream:
                            await from_upstream(await upstream.recv())
        finally:
            ticks.cancel()
            call.end(
                call.end_reason or ("client_closed" if governor.meter and governor.meter.closed else "upstream_closed")
            )
            try:
                await call.aclose()
            finally:  # only now: a drain waits for the session's settles and its lease given back
                services.live.discard(call)
            with contextlib.suppress(Exception):
                await upstream.close()
            await close_client(send, call.close_code or upstream.close_code or 1000)

    async def _record_fork(self, governor: LiveGovernor) -> None:
        """The fork's own `live_…` id is the tenant's too: it may attach to it, hang it up, fork it."""
        if self.recorded or governor.upstream_session_id is None:
            return
        self.recorded = True
        record = LiveRecord(
            live_session_id=governor.upstream_session_id,
            tenant_id=self.caller.tenant_id,
            session_id=self.session_id,
            model=self.parent.model,
            api_key_id=self.caller.api_key_id,
            safety_id=self.caller.safety_id,
            forked_from=self.parent.live_session_id,
        )
        try:
            await self.live.store.record(record, self.services.clock.time())
        except Exception:
            log.exception("could not record fork %s", record.live_session_id)


def _json(message: Message) -> dict[str, Any] | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _query(scope: dict[str, Any]) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"))
