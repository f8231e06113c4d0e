"""Wire types of the admin API (msgspec Structs): request bodies and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from gateway.admin.changes import BrowserAuthInfo
from gateway.auth.browser_keys import MAX_PREVIOUS_VALID_SECONDS
from gateway.ledger.reports import TranscriptionTotals, UsageReport, UsageRow, UsageTotals
from gateway.storage.policy_store import AuditEntry, PolicyVersion
from gateway.storage.tenants import ApiKeyInfo, IssuedKey, Tenant


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    tier: str | None = None


class TierAssignment(msgspec.Struct, forbid_unknown_fields=True):
    tier: str | None  # null clears the assignment (the default tier applies)


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None


class BrowserAuthSet(msgspec.Struct, forbid_unknown_fields=True):
    """A tenant's browser-token keys, replaced whole: an HS256 secret and/or a JWKS URL.

    `previous_valid_seconds`: how long a replaced HS256 secret stays valid (null: 900; 0: at once refused).
    """

    hs256_secret: str | None = None
    jwks_url: str | None = None
    audience: Annotated[str, msgspec.Meta(min_length=1)] = "voxgate"
    previous_valid_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_PREVIOUS_VALID_SECONDS)] | None = None

    def __repr__(self) -> str:  # never the secret, wherever a request body is printed
        return (
            f"BrowserAuthSet(hs256_secret={'***' if self.hs256_secret else None}, jwks_url={self.jwks_url!r}, "
            f"previous_valid_seconds={self.previous_valid_seconds!r})"
        )


class TenantOut(msgspec.Struct):
    id: str
    name: str
    status: Literal["active", "disabled"]
    tier: str | None
    created_at: datetime
    disabled_at: datetime | None
    object: str = "tenant"

    @classmethod
    def of(cls, tenant: Tenant, tier: str | None) -> TenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            status="disabled" if tenant.disabled else "active",
            tier=tier,
            created_at=tenant.created_at,
            disabled_at=tenant.disabled_at,
        )


class TenantList(msgspec.Struct):
    data: list[TenantOut]
    object: str = "list"


class KeyOut(msgspec.Struct):
    id: str
    tenant_id: str
    name: str | None
    prefix: str
    status: Literal["active", "revoked"]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    object: str = "api_key"

    @classmethod
    def of(cls, key: ApiKeyInfo) -> KeyOut:
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            prefix=key.prefix,
            status="revoked" if key.revoked else "active",
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
        )


class KeyList(msgspec.Struct):
    data: list[KeyOut]
    object: str = "list"


class IssuedKeyOut(msgspec.Struct):
    """A new key. `secret` is returned this once and cannot be recovered."""

    id: str
    tenant_id: str
    name: str | None
    prefix: str
    secret: str
    created_at: datetime
    object: str = "api_key"

    @classmethod
    def of(cls, key: IssuedKey) -> IssuedKeyOut:
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            prefix=key.prefix,
            secret=key.secret,
            created_at=key.created_at,
        )


class PolicyOut(msgspec.Struct):
    """The policy in force: `source` is tenant (a stored version), tier, or default."""

    tenant_id: str
    source: Literal["tenant", "tier", "default"]
    version: int | None
    tier: str | None
    policy: dict[str, Any]
    object: str = "policy"


class PolicyVersionOut(msgspec.Struct):
    version: int
    created_at: datetime
    created_by: str
    policy: dict[str, Any]

    @classmethod
    def of(cls, stored: PolicyVersion) -> PolicyVersionOut:
        return cls(
            version=stored.version, created_at=stored.created_at, created_by=stored.created_by, policy=stored.document
        )


class PolicyHistory(msgspec.Struct):
    tenant_id: str
    data: list[PolicyVersionOut]  # newest first
    object: str = "list"


class TierList(msgspec.Struct):
    default_tier: str | None  # the tier tenants with no policy and no tier get (null = unrestricted)
    tiers: dict[str, dict[str, Any]]


class UsageOut(msgspec.Struct):
    """Like `voxgate usage --json`: money is integer micro-USD."""

    tenant_id: str
    since: datetime | None
    responses: list[UsageRow]
    totals: UsageTotals
    transcription: TranscriptionTotals
    total_cost_micro_usd: int

    @classmethod
    def of(cls, report: UsageReport) -> UsageOut:
        return cls(
            tenant_id=report.tenant_id,
            since=report.since,
            responses=report.rows,
            totals=report.totals,
            transcription=report.transcription,
            total_cost_micro_usd=report.total_cost_micro_usd,
        )


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls(
            id=entry.id,
            at=entry.at,
            actor=entry.actor,
            tenant_id=entry.tenant_id,
            action=entry.action,
            detail=entry.detail,
        )


class AuditList(msgspec.Struct):
    data: list[AuditOut]  # newest first
    object: str = "list"


class BrowserAuthOut(msgspec.Struct):
    """A tenant's browser-token keys as the API shows them: a key id, never the HS256 secret or a hash of it."""

    tenant_id: str
    kinds: list[str]  # "hs256" and/or "jwks"
    hs256_key_id: str | None  # "hsk_" + 16 random characters, given when the secret was set
    jwks_url: str | None
    audience: str
    created_at: datetime
    updated_at: datetime
    # A replaced HS256 secret still accepted during a rotation's overlap window (else both null).
    previous_hs256_key_id: str | None
    previous_valid_until: datetime | None
    object: str = "browser_auth"

    @classmethod
    def of(cls, info: BrowserAuthInfo) -> BrowserAuthOut:
        return cls(
            tenant_id=info.tenant_id,
            kinds=info.kinds,
            hs256_key_id=info.hs256_key_id,
            jwks_url=info.jwks_url,
            audience=info.audience,
            created_at=info.created_at,
            updated_at=info.updated_at,
            previous_hs256_key_id=info.previous_hs256_key_id,
            previous_valid_until=info.previous_valid_until,
        )


class BrowserAuthDeleted(msgspec.Struct):
    tenant_id: str
    deleted: bool = True
    object: str = "browser_auth.deleted"
