"""Offers upstream may have taken without voxgate seeing the answer (docs/translation.md#unconfirmed-offers).

Once the SDP offer has gone out, a failure to read the answer (a read timeout, a reset, a
broken response) does not mean upstream refused it: the call may exist upstream, and
voxgate, without its call id, can neither hang it up nor meter it. It is then booked at the
cost voxgate reserved for it, its cap: the most the policy lets a call last, and the only
bound voxgate knows. So is an answer without a usable call id. A failure before the offer
could have arrived (connecting, waiting for a pooled connection, writing the request) or a
refusal upstream did send (a non-2xx status) placed nothing, and is released as before.
"""

from __future__ import annotations

from typing import Final

import httpx

from gateway.ledger.records import DurationRecord
from gateway.translation.call_store import TranslationCall
from gateway.translation.meter import TRANSLATION
from policies.prices.table import PriceTable
from policies.pricing import duration_cost_micro_usd

# The bounded `failure` label of voxgate_translation_offers_unconfirmed_total.
FAILURES: Final = ("read_timeout", "read_error", "protocol_error", "other", "no_call_id")
# Upstream answered the offer without a usable `Location`: the call exists, its id is unknown.
NO_CALL_ID: Final = "no_call_id"
# The duration_usage row's usage id: an unconfirmed call has no call id (one per session).
UNCONFIRMED_USAGE_ID: Final = "unconfirmed-offer"

# Failures before the request could have reached upstream in full.
_NOT_DELIVERED: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.ProxyError,
)


def unconfirmed_failure(error: BaseException) -> str | None:
    """The `FAILURES` label if `error` (what posting the offer raised) came from the transport
    after the offer could have reached upstream; None if upstream cannot have taken it.

    The upstream client turns transport failures into GatewayErrors raised while handling
    them, so the httpx exception is found on the chain of causes and contexts."""
    seen: BaseException | None = error
    for _ in range(8):  # a short chain; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, httpx.HTTPError):
            return _label(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _label(error: httpx.HTTPError) -> str | None:
    if isinstance(error, _NOT_DELIVERED) or not isinstance(error, httpx.TransportError | httpx.DecodingError):
        return None
    if isinstance(error, httpx.ReadTimeout):
        return "read_timeout"
    if isinstance(error, httpx.ReadError):
        return "read_error"
    if isinstance(error, httpx.RemoteProtocolError):
        return "protocol_error"
    return "other"


def unconfirmed_record(call: TranslationCall, ms: int, prices: PriceTable) -> DurationRecord:
    """The booking of an unconfirmed offer: `ms` (its cap) from the offer, estimated."""
    price, key = prices.duration_price_for(call.model)
    return DurationRecord(
        session_id=call.session_id,
        kind=TRANSLATION,
        usage_id=UNCONFIRMED_USAGE_ID,
        tenant_id=call.tenant_id,
        model=call.model,
        occurred_at=call.offered_at,
        active_ms=ms,
        standby_ms=0,
        estimated=True,
        cost_micro_usd=duration_cost_micro_usd(price, active_ms=ms),
        price_version=prices.version_for(key),
    )
