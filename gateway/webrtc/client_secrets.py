"""`POST /v1/realtime/client_secrets`: mint an ephemeral key upstream under the tenant's policy.

The request is OpenAI's, policed (`policies.session_config`) before it is sent: the session
gets the policy's model and output ceiling, `expires_after` the policy's longest lifetime.
A minted secret is not a live session: admission runs (budget, concurrency, start rate,
headroom) and its concurrency lease is released at once. The secret's session is opened in
the ledger and the secret recorded, so a call a browser opens with it can be attached later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway.ids import new_id
from gateway.webrtc.access import Caller
from gateway.webrtc.bodies import bad_request, json_object
from gateway.webrtc.calls_store import MintedSecret
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.sessions import admit, counting_refusals, refusal, release, session_started, tenant_policy
from policies.actions import SessionInfoRecord
from policies.session_config import SessionRefused, police_expires_after, police_session, secret_expires_at

log = logging.getLogger("voxgate.webrtc")


async def mint_client_secret(context: WebRtcContext, caller: Caller, body: Mapping[str, Any]) -> bytes:
    """Upstream's response to the policed request (its body as it came); refusals are counted."""
    services = context.services
    with counting_refusals(services):
        policy = await tenant_policy(services, caller.tenant_id)
        raw_session = body.get("session", {"type": "realtime"})
        if not isinstance(raw_session, dict):
            raise bad_request("'session' must be an object.", "invalid_value", "session")
        policed = police_session(raw_session, policy, services.prices)
        if isinstance(policed, SessionRefused):
            raise refusal(policed)
        request = {**body, "session": policed.session}
        expires_after = police_expires_after(body.get("expires_after"), policy)
        if isinstance(expires_after, SessionRefused):
            raise refusal(expires_after)
        if expires_after is not None:
            request["expires_after"] = expires_after
        session_id = new_id("vgs")
        _, leased = await admit(services, caller.tenant_id, session_id, policed.model, policed.session)
        # A minted secret is not a live session: admission was the gate, the lease is not kept.
        await release(services, caller.tenant_id, session_id, leased)
        response = await context.upstream.mint_client_secret(request, caller.safety_id)
    minted = json_object(response, "upstream response")
    await _record_minted(context, caller, session_id, request, minted, policed.model)
    return response


async def _record_minted(
    context: WebRtcContext,
    caller: Caller,
    session_id: str,
    request: Mapping[str, Any],
    minted: Mapping[str, Any],
    model: str | None,
) -> None:
    """Open the secret's session in the ledger and record the secret for a later attach."""
    services = context.services
    raw_session = minted.get("session")
    minted_session: Mapping[str, Any] = raw_session if isinstance(raw_session, dict) else {}
    upstream_session_id = minted_session.get("id") if isinstance(minted_session.get("id"), str) else None
    now = context.clock.time()
    intent = request["session"].get("type", "realtime")
    session_started(services, caller, session_id, "client_secret", intent, model, now)
    if upstream_session_id is not None:
        voice = _voice(minted_session)
        services.ledger.submit(
            SessionInfoRecord(session_id, minted_session.get("model") or model, voice, upstream_session_id)
        )
        secret_key = upstream_session_id
    else:
        log.warning("upstream minted a client secret without a session id; it cannot be attached later")
        secret_key = f"unattachable:{session_id}"  # no upstream id matches it; the sweep still ends the session
    expires_at = secret_expires_at(minted, request, now)
    await context.calls.record_minted(
        MintedSecret(secret_key, caller.tenant_id, session_id, caller.safety_id), expires_at
    )


def _voice(session: Mapping[str, Any]) -> str | None:
    audio = session.get("audio")
    output = audio.get("output") if isinstance(audio, dict) else None
    voice = output.get("voice") if isinstance(output, dict) else None
    return voice if isinstance(voice, str) else None
