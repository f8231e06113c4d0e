"""How the operator commands print: aligned tables for people, ``--json`` for scripts.

The JSON shapes are a stable contract. Timestamps are ISO 8601 in UTC with a ``Z`` suffix;
money is always integer micro-USD (1 USD = 1_000_000) and never a float.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.storage.tenants import ApiKeyInfo, Tenant


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_value(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def format_usd(micro_usd: int) -> str:
    """Integer micro-USD as dollars with 6 decimals, by integer arithmetic: 1234567 -> "$1.234567"."""
    sign = "-" if micro_usd < 0 else ""
    dollars, fraction = divmod(abs(micro_usd), 1_000_000)
    return f"{sign}${dollars}.{fraction:06d}"


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str | None]]) -> None:
    cells = [list(headers), *[[cell or "" for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": iso(tenant.created_at),
        "disabled_at": iso(tenant.disabled_at),
    }


def key_status(key: ApiKeyInfo) -> str:
    return "revoked" if key.revoked else "active"


def key_json(key: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "prefix": key.prefix,
        "status": key_status(key),
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }
