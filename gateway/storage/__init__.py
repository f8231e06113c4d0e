"""Postgres storage for voxgate: migrations, the tenant directory and usage reports.

Plain SQL over asyncpg, no ORM; every statement lives in ``gateway.storage.queries``.
"""

from __future__ import annotations

from gateway.storage.migrations import (
    ADVISORY_LOCK_KEY,
    MigrationError,
    apply_migrations,
    required_schema_version,
    schema_version,
)
from gateway.storage.tenants import (
    ApiKeyInfo,
    IssuedKey,
    KeyIdentity,
    Tenant,
    TenantDirectory,
    TenantDirectoryError,
    TenantExists,
    TenantNotFound,
)
from gateway.storage.usage_reports import (
    DailyCost,
    TranscriptionTotals,
    UsageReport,
    UsageRow,
    UsageTotals,
    daily_costs,
    ledger_for_tenant,
)

__all__ = [
    "ADVISORY_LOCK_KEY",
    "ApiKeyInfo",
    "DailyCost",
    "IssuedKey",
    "KeyIdentity",
    "MigrationError",
    "Tenant",
    "TenantDirectory",
    "TenantDirectoryError",
    "TenantExists",
    "TenantNotFound",
    "TranscriptionTotals",
    "UsageReport",
    "UsageRow",
    "UsageTotals",
    "apply_migrations",
    "daily_costs",
    "ledger_for_tenant",
    "required_schema_version",
    "schema_version",
]
