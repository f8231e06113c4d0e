"""A GPT-Live WebRTC session's config under the tenant's policy, and the browser's data channel.

The clamps and allowlists are the Live governor's (`policies.live.config`: model, voice,
delegation, tools). The browser talks to upstream directly over its data channel, so one
more rule is baked into every WebRTC create and fork: `client.data_channel.allowed_client_events`
is cut down to `BROWSER_CLIENT_EVENTS`, so the browser can never send `session.update` or
`response.create` around the policy (both change or drive the delegated backend, the cost
lever). Upstream rejects unknown keys; `client` is a key the WebRTC session config declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.errors import GatewayError
from policies.live.config import LiveRefusal, LiveRules, Policed, police_overrides, police_start
from policies.policy import TenantPolicy
from policies.prices.table import PriceTable

#: Client events a browser's data channel may send: none changes the session's policed
#: config or asks the delegated backend for a response.
BROWSER_CLIENT_EVENTS: Final = (
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.instructions.append",
    "session.thinking.append",
    "session.commentary.append",
    "session.output_audio.fixture.play",
    "decision.item.create",
    "decision.item.delete",
    "session.close",
)


def refusal_error(refusal: LiveRefusal) -> GatewayError:
    """A refused config as an HTTP error: 403 for what a policy list does not allow, else 400."""
    status = 403 if refusal.code.endswith("_not_allowed") or refusal.code == "model_not_priced" else 400
    return GatewayError(status, refusal.message, code=refusal.code, param=refusal.param or None, type=refusal.type)


def police_webrtc_session(session: object, policy: TenantPolicy, prices: PriceTable, *, fork: bool = False) -> Policed:
    """The config a WebRTC create (or a fork's overrides) is forwarded with; a refusal raises."""
    rules = LiveRules.from_policy(policy, prices)
    policed = police_overrides(session, rules) if fork else police_start(session, rules, prices)
    if isinstance(policed, LiveRefusal):
        raise refusal_error(policed)
    restricted = {**policed.session, "client": restrict_browser(policed.session.get("client"))}
    return Policed(restricted, (*policed.clamped, "client.data_channel.allowed_client_events"))


def restrict_browser(client: object) -> dict[str, Any]:
    """The `client` block with the data channel's client events cut down to `BROWSER_CLIENT_EVENTS`."""
    block = dict(client) if isinstance(client, Mapping) else {}
    channel = dict(block.get("data_channel") or {})
    asked = channel.get("allowed_client_events", "all")
    if isinstance(asked, list | tuple):
        allowed = [kind for kind in asked if kind in BROWSER_CLIENT_EVENTS]
    else:
        allowed = list(BROWSER_CLIENT_EVENTS)
    channel["allowed_client_events"] = allowed
    block["data_channel"] = channel
    return block
