"""`voxgate tenant sip set | show | clear` against a real database, as an operator runs them.

What the command stores is read back through `SipConfig`, the same table reads the inbound-call
path uses to route a called number, and the audit log is the admin API's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway import cli
from gateway.alerts.signing import new_secret
from gateway.sip.config import SipConfig, SipWebhook
from gateway.storage.policy_store import AuditEntry, audit_entries

Voxgate = Callable[..., int]
HOOK = "https://hooks.example.test/sip"


@pytest.fixture
def voxgate(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Voxgate:
    monkeypatch.setenv("VOXGATE_DATABASE_URL", pg_dsn)
    return lambda *argv: cli.main(list(argv))


def run_json(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert voxgate(*argv, "--json") == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def new_tenant(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> str:
    tenant_id: str = run_json(voxgate, capsys, "tenant", "create", f"sip-{secrets.token_hex(4)}")["id"]
    return tenant_id


def secret_file(tmp_path: Path, secret: str) -> str:
    path = tmp_path / f"whsec-{secrets.token_hex(3)}"
    path.write_text(secret + "\n", encoding="utf-8")
    return str(path)


def stored(dsn: str, tenant_id: str, called: str) -> tuple[str | None, list[str], SipWebhook | None, list[AuditEntry]]:
    async def go() -> tuple[str | None, list[str], SipWebhook | None, list[AuditEntry]]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            config = SipConfig(pool)
            return (
                await config.tenant_for(called),
                await config.numbers(tenant_id),
                await config.webhook(tenant_id),
                await audit_entries(pool, tenant_id),
            )
        finally:
            await pool.close()

    return asyncio.run(go())


def unique_number() -> str:
    return "+1800" + str(secrets.randbelow(10**7)).zfill(7)


def test_set_routes_numbers_and_never_prints_the_secret(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str, tmp_path: Path
) -> None:
    tenant = new_tenant(voxgate, capsys)
    first, second = unique_number(), unique_number()
    secret = new_secret()
    argv = ("tenant", "sip", "set", tenant, "--number", second, "--number", first, "--number", second)
    argv += ("--webhook-url", HOOK, "--webhook-secret-file", secret_file(tmp_path, secret))

    assert voxgate(*argv, "--json") == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "tenant_id": tenant,
        "numbers": sorted({first, second}),
        "webhook_url": HOOK,
        "webhook_secret_set": True,
    }
    assert secret not in out + err

    routed_to, numbers, webhook, audits = stored(pg_dsn, tenant, first)
    assert routed_to == tenant
    assert numbers == sorted({first, second})
    assert webhook == SipWebhook(HOOK, secret)  # stored as given, the trailing newline of the file dropped
    assert [(a.actor, a.action, a.detail) for a in audits if a.action.startswith("sip_routing")] == [
        ("cli", "sip_routing.set", {"numbers": sorted({first, second}), "url": HOOK})
    ]

    assert voxgate("tenant", "sip", "show", tenant) == 0
    human, _ = capsys.readouterr()
    assert first in human and HOOK in human and secret not in human
    shown = run_json(voxgate, capsys, "tenant", "sip", "show", tenant)
    assert shown == {
        "tenant_id": tenant,
        "numbers": sorted({first, second}),
        "webhook_url": HOOK,
        "webhook_secret_set": True,
    }


def test_set_replaces_the_previous_numbers(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str, tmp_path: Path
) -> None:
    tenant = new_tenant(voxgate, capsys)
    old, new = unique_number(), unique_number()
    for number in (old, new):
        run_json(
            voxgate, capsys, "tenant", "sip", "set", tenant, "--number", number,
            "--webhook-url", HOOK, "--webhook-secret-file", secret_file(tmp_path, new_secret()),
        )  # fmt: skip

    routed_to, numbers, _, _ = stored(pg_dsn, tenant, old)
    assert routed_to is None
    assert numbers == [new]


def test_a_number_another_tenant_holds_exits_1_and_changes_nothing(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str, tmp_path: Path
) -> None:
    holder, other = new_tenant(voxgate, capsys), new_tenant(voxgate, capsys)
    number, own = unique_number(), unique_number()
    hook_file = secret_file(tmp_path, new_secret())
    run_json(voxgate, capsys, "tenant", "sip", "set", holder, "--number", number,
             "--webhook-url", HOOK, "--webhook-secret-file", hook_file)  # fmt: skip

    code = voxgate("tenant", "sip", "set", other, "--number", own, "--number", number,
                   "--webhook-url", HOOK, "--webhook-secret-file", hook_file)  # fmt: skip

    assert code == 1
    assert number in capsys.readouterr().err
    assert stored(pg_dsn, holder, number)[0] == holder
    _, numbers, webhook, audits = stored(pg_dsn, other, own)
    assert (numbers, webhook) == ([], None)
    assert not [a for a in audits if a.action.startswith("sip_routing")]


@pytest.mark.parametrize(
    ("number", "url", "secret", "complaint"),
    [
        ("+1 800 555", HOOK, new_secret(), "numbers"),
        ("+18005550100", "ftp://hooks.example.test/", new_secret(), "webhook_url"),
        ("+18005550100", HOOK, "not-a-whsec-secret", "whsec_"),
    ],
)
def test_invalid_input_is_a_usage_error_that_echoes_no_secret(
    voxgate: Voxgate,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    number: str,
    url: str,
    secret: str,
    complaint: str,
) -> None:
    tenant = new_tenant(voxgate, capsys)

    code = voxgate(
        "tenant", "sip", "set", tenant, "--number", number,
        "--webhook-url", url, "--webhook-secret-file", secret_file(tmp_path, secret),
    )  # fmt: skip

    out, err = capsys.readouterr()
    assert code == 2
    assert complaint in err
    assert secret not in out + err


def test_clear_removes_the_routing_once(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str, tmp_path: Path
) -> None:
    tenant = new_tenant(voxgate, capsys)
    number = unique_number()
    run_json(voxgate, capsys, "tenant", "sip", "set", tenant, "--number", number,
             "--webhook-url", HOOK, "--webhook-secret-file", secret_file(tmp_path, new_secret()))  # fmt: skip

    assert run_json(voxgate, capsys, "tenant", "sip", "clear", tenant) == {"tenant_id": tenant, "cleared": True}
    assert run_json(voxgate, capsys, "tenant", "sip", "clear", tenant) == {"tenant_id": tenant, "cleared": False}

    routed_to, numbers, webhook, audits = stored(pg_dsn, tenant, number)
    assert (routed_to, numbers, webhook) == (None, [], None)
    assert [a.action for a in audits if a.action == "sip_routing.clear"] == ["sip_routing.clear"]
    assert run_json(voxgate, capsys, "tenant", "sip", "show", tenant) == {
        "tenant_id": tenant,
        "numbers": [],
        "webhook_url": None,
        "webhook_secret_set": False,
    }


@pytest.mark.parametrize("action", ["show", "clear"])
def test_unknown_tenant_exits_1(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], action: str) -> None:
    assert voxgate("tenant", "sip", action, "no-such-tenant") == 1
    assert "no-such-tenant" in capsys.readouterr().err


def test_unreadable_secret_file_is_a_usage_error(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tenant = new_tenant(voxgate, capsys)
    code = voxgate("tenant", "sip", "set", tenant, "--number", unique_number(),
                   "--webhook-url", HOOK, "--webhook-secret-file", str(tmp_path / "missing"))  # fmt: skip
    assert code == 2
    assert "secret file" in capsys.readouterr().err
