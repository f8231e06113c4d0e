"""The Costs API's request, decided without I/O: parameters, groupings, the page cursor, FOCUS rows.

`parse_cost_query` turns a query string's pairs into a `CostQuery` or a `CostQueryError` naming
the offending parameter (the shell answers it as an OpenAI-shaped 400). Zone names are checked
by the shell (resolving one reads the time-zone database); this module only carries the name.
Money is integer micro-USD; `usd` is its exact decimal text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from policies.pricing import MICRO_PER_USD

BucketWidth = Literal["1d", "1h", "1mo"]
OutputFormat = Literal["json", "csv", "focus"]

#: The grouping keys, in the order results are sorted and CSV columns are written.
GROUP_KEYS: Final = ("project_id", "line_item", "model", "api_key_id", "end_user", "tag")
#: As OpenAI's Costs API: 1..180 buckets a page, 7 unless asked.
DEFAULT_LIMIT: Final = 7
MAX_LIMIT: Final = 180
_LIST_PARAMS: Final = frozenset({"group_by", "project_ids", "api_key_ids", "models"})
_SCALAR_PARAMS: Final = frozenset(
    {"start_time", "end_time", "bucket_width", "limit", "page", "tz", "tag_key", "format"}
)
_WIDTHS: Final = ("1d", "1h", "1mo")
_FORMATS: Final = ("json", "csv", "focus")
_CURSOR_PREFIX: Final = "v1:"
_MAX_LIST: Final = 200


class CostQueryError(ValueError):
    """A parameter the Costs API refuses; `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class CostQuery:
    """One Costs API request. Times are Unix seconds; `page` is the start of the page's first bucket."""

    start_time: int
    end_time: int | None = None
    bucket_width: BucketWidth = "1d"
    limit: int = DEFAULT_LIMIT
    page: int | None = None
    group_by: tuple[str, ...] = ()
    tz: str = "UTC"
    project_ids: tuple[str, ...] | None = None
    api_key_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    tag_key: str | None = None
    format: OutputFormat = "json"
    #: Group by each row's whole tag set too (the FOCUS export's `Tags`); not a request parameter.
    group_tag_sets: bool = False


def parse_cost_query(pairs: Iterable[tuple[str, str]]) -> CostQuery:
    """The query a request's parameters ask for; lists may repeat (`k=a&k=b`, `k[]=a`) or be comma lists."""
    scalars: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for raw_name, value in pairs:
        name = raw_name[:-2] if raw_name.endswith("[]") else raw_name
        if name in _LIST_PARAMS:
            lists.setdefault(name, []).extend(v.strip() for v in value.split(",") if v.strip())
        elif name in _SCALAR_PARAMS:
            if name in scalars:
                raise CostQueryError(f"'{name}' may be given once.", name)
            scalars[name] = value
        else:
            raise CostQueryError(f"Unknown parameter '{_printable(raw_name)}'.", _printable(raw_name))
    if "start_time" not in scalars:
        raise CostQueryError("'start_time' (Unix seconds) is required.", "start_time")
    start = _seconds(scalars["start_time"], "start_time")
    end = _seconds(scalars["end_time"], "end_time") if "end_time" in scalars else None
    if end is not None and end <= start:
        raise CostQueryError("'end_time' must be after 'start_time'.", "end_time")
    width = scalars.get("bucket_width", "1d")
    if width not in _WIDTHS:
        raise CostQueryError("'bucket_width' must be one of 1d, 1h, 1mo.", "bucket_width")
    output = scalars.get("format", "json")
    if output not in _FORMATS:
        raise CostQueryError("'format' must be one of json, csv, focus.", "format")
    group_by = _group_by(lists.get("group_by", []))
    tag_key = scalars.get("tag_key") or None
    if ("tag" in group_by) != (tag_key is not None):
        raise CostQueryError("'group_by=tag' needs 'tag_key' (and 'tag_key' needs 'group_by=tag').", "tag_key")
    return CostQuery(
        start_time=start,
        end_time=end,
        bucket_width=width,  # type: ignore[arg-type]  # checked against _WIDTHS
        limit=_limit(scalars.get("limit")),
        page=decode_cursor(scalars["page"]) if "page" in scalars else None,
        group_by=group_by,
        tz=scalars.get("tz", "UTC") or "UTC",
        project_ids=_ids(lists, "project_ids"),
        api_key_ids=_ids(lists, "api_key_ids"),
        models=_ids(lists, "models"),
        tag_key=tag_key,
        format=output,  # type: ignore[arg-type]  # checked against _FORMATS
    )


def encode_cursor(bucket_start: int) -> str:
    """The opaque `next_page` for a page that begins with the bucket starting at `bucket_start`."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{bucket_start}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The bucket start an `encode_cursor` cursor names; anything else is a `CostQueryError`."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        text = ""
    if not text.startswith(_CURSOR_PREFIX) or not text[len(_CURSOR_PREFIX) :].isdigit():
        raise CostQueryError("'page' is not a cursor this API returned.", "page")
    return int(text[len(_CURSOR_PREFIX) :])


def usd(micro_usd: int) -> str:
    """The exact decimal USD text of a micro-USD amount, six decimals (`"1.250000"`)."""
    sign = "-" if micro_usd < 0 else ""
    whole, frac = divmod(abs(micro_usd), MICRO_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def seconds_of_ms(ms: int) -> str:
    """Milliseconds as exact decimal seconds, three decimals, sign first (`-1500` is `"-1.500"`)."""
    sign = "-" if ms < 0 else ""
    whole, frac = divmod(abs(ms), 1000)
    return f"{sign}{whole}.{frac:03d}"


def utc_iso(epoch: int) -> str:
    """Unix seconds as ISO 8601 in UTC with a `Z`, as FOCUS dates are written."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: FOCUS 1.2 columns voxgate writes, in order (docs/finance.md maps each one).
FOCUS_COLUMNS: Final = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "BillingCurrency",
    "BillingAccountId",
    "BillingAccountName",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ServiceName",
    "ServiceCategory",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "SkuId",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)

#: How a rollup's unit is named in FOCUS.
_FOCUS_UNITS: Final = {"tokens": "Tokens", "milliseconds": "Seconds"}


@dataclass(frozen=True, slots=True)
class FocusCharge:
    """One FOCUS row's inputs: a bucket, tenant, line item and tag set, its amount and quantity."""

    period_start: int
    period_end: int
    billing_period_start: int
    billing_period_end: int
    tenant_id: str
    tenant_name: str
    line_item: str
    quantity: int
    unit: str
    amount_micro_usd: int
    tags: Mapping[str, str]
    billing_account: str


def focus_row(charge: FocusCharge) -> dict[str, str]:
    """The FOCUS 1.2 columns of one charge; costs are exact decimals, list = billed (no discounts)."""
    amount = usd(charge.amount_micro_usd)
    unit = _FOCUS_UNITS.get(charge.unit, charge.unit)
    # Durations are summed in milliseconds and shown in seconds, exactly (three decimals).
    quantity = seconds_of_ms(charge.quantity) if charge.unit == "milliseconds" else str(charge.quantity)
    return {
        "BilledCost": amount,
        "EffectiveCost": amount,
        "ListCost": amount,
        "ContractedCost": amount,
        "BillingCurrency": "USD",
        "BillingAccountId": charge.billing_account,
        "BillingAccountName": charge.billing_account,
        "BillingPeriodStart": utc_iso(charge.billing_period_start),
        "BillingPeriodEnd": utc_iso(charge.billing_period_end),
        "ChargePeriodStart": utc_iso(charge.period_start),
        "ChargePeriodEnd": utc_iso(charge.period_end),
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": f"{charge.line_item} (metered by voxgate)",
        "ChargeFrequency": "Usage-Based",
        "ServiceName": "OpenAI Realtime API",
        "ServiceCategory": "AI and Machine Learning",
        "ProviderName": "OpenAI",
        "PublisherName": "OpenAI",
        "InvoiceIssuerName": "OpenAI",
        "SkuId": charge.line_item,
        "ConsumedQuantity": quantity,
        "ConsumedUnit": unit,
        "PricingQuantity": quantity,
        "PricingUnit": unit,
        "SubAccountId": charge.tenant_id,
        "SubAccountName": charge.tenant_name,
        "Tags": json.dumps(dict(sorted(charge.tags.items())), separators=(",", ":")),
    }


def _group_by(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if value not in GROUP_KEYS:
            raise CostQueryError(f"'group_by' takes {', '.join(GROUP_KEYS)}; got '{_printable(value)}'.", "group_by")
    return tuple(k for k in GROUP_KEYS if k in values)


def _ids(lists: Mapping[str, list[str]], name: str) -> tuple[str, ...] | None:
    values = lists.get(name)
    if values is None:
        return None
    if len(values) > _MAX_LIST:
        raise CostQueryError(f"'{name}' takes at most {_MAX_LIST} values.", name)
    return tuple(dict.fromkeys(values))


def _seconds(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 11:
        raise CostQueryError(f"'{name}' must be Unix seconds (a non-negative integer).", name)
    return int(text)


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise CostQueryError(f"'limit' must be an integer from 1 to {MAX_LIMIT}.", "limit")
    return int(text)


def _printable(text: str) -> str:
    # Echo a caller's parameter name only as far as it is plain text of a sane length.
    return "".join(c for c in text if c.isprintable())[:64]
