"""`voxgate costs reconcile` against hand-written exports of OpenAI's Costs API (docs/finance.md)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from gateway.finance.rates import register_price_rates
from gateway.ledger.writer import LedgerWriter, SessionStarted
from gateway.settings import LedgerSettings
from policies.actions import UsageRecord
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.support.budget_crossing import own_database
from tests.support.gateway_process import VOXGATE
from tests.support.harness import make_tenant
from tests.support.tls_ca import TestCa

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent / "fixtures"
NOV_3, NOV_4 = 1_793_664_000, 1_793_750_400  # 2026-11-03 and -04, 00:00 UTC

# What the ledger holds: (tenant, UTC day, model, token kind field, tokens, cost micro-USD); each
# response has one token kind, so each is one line item of its whole cost (built-in prices).
RESPONSES = [
    ("alpha", NOV_3 + 3_600, "gpt-realtime", "output_audio_tokens", 12_500, 800_000),  # $64 / 1M
    ("alpha", NOV_3 + 7_200, "gpt-realtime", "input_audio_tokens", 30_000, 960_000),  # $32 / 1M
    ("beta", NOV_3 + 80_000, "gpt-realtime-mini", "output_audio_tokens", 50_000, 1_000_000),  # $20 / 1M
    ("alpha", NOV_4 + 60, "gpt-realtime", "output_text_tokens", 25_000, 400_000),  # $16 / 1M
    ("beta", NOV_4 + 86_000, "gpt-realtime-mini", "input_text_tokens", 100_000, 60_000),  # $0.60 / 1M
]
TOKEN_FIELDS = (
    "input_text_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "cached_text_tokens",
    "cached_audio_tokens",
    "cached_image_tokens",
    "output_text_tokens",
    "output_audio_tokens",
)


@pytest.fixture
async def ledger() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A database whose ledger holds exactly `RESPONSES`; yields its DSN and the tenant ids."""
    async with own_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        await register_price_rates(pool, DEFAULT_PRICE_TABLE)
        tenants = {name: (await make_tenant(pool, name)).tenant_id for name in ("alpha", "beta")}
        writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
        writer.start()
        for i, (name, at, model, kind, tokens, cost) in enumerate(RESPONSES):
            tenant = tenants[name]
            writer.submit(
                SessionStarted(f"vgs_rec{i}", tenant, None, "websocket", "conversation", model, None, "t", at)
            )
            counts = {field: tokens if field == kind else 0 for field in TOKEN_FIELDS}
            inputs = tokens if kind.startswith("input") else 0
            writer.submit(
                UsageRecord(
                    f"resp_rec{i}",
                    f"vgs_rec{i}",
                    tenant,
                    model,
                    "completed",
                    at,
                    inputs,
                    tokens - inputs,
                    tokens,
                    **counts,
                    cost_micro_usd=cost,
                    price_version=DEFAULT_PRICE_TABLE.version_for(model),
                )
            )
        assert await writer.drain(10)
        await writer.stop()
        await pool.close()
        yield dsn, tenants


def reconcile(dsn: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [str(VOXGATE), "costs", "reconcile", "--json", *args],
        env={**os.environ, "VOXGATE_DATABASE_URL": dsn, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


def project_map(tmp_path: Path, tenants: dict[str, str]) -> str:
    path = tmp_path / "projects.json"
    path.write_text(json.dumps({"proj_Alpha7cQk2": tenants["alpha"], "proj_Beta93mXw": tenants["beta"]}))
    return str(path)


def row(date: str, tenant: str | None, line_item: str, openai: int, voxgate: int, ok: bool = True) -> dict[str, Any]:
    return {
        "date": date,
        "tenant_id": tenant,
        "line_item": line_item,
        "openai_micro_usd": openai,
        "voxgate_micro_usd": voxgate,
        "difference_micro_usd": voxgate - openai,
        "ratio": voxgate / openai if openai else None,
        "within_tolerance": ok,
    }


async def test_a_matching_export_reconciles_across_all_tenants(ledger: tuple[str, dict[str, str]]) -> None:
    dsn, _ = ledger
    code, report, stderr = reconcile(dsn, "--openai-costs", str(FIXTURES / "openai-costs-matching.json"))
    assert code == 0, stderr
    assert report == {
        "rows": [
            row("2026-11-03", None, "gpt-realtime, input audio", 960_000, 960_000),
            row("2026-11-03", None, "gpt-realtime, output audio", 800_000, 800_000),
            row("2026-11-03", None, "gpt-realtime-mini, output audio", 1_000_000, 1_000_000),
            row("2026-11-04", None, "gpt-realtime, output text", 400_000, 400_000),
            row("2026-11-04", None, "gpt-realtime-mini, input text", 60_000, 60_000),
        ],
        "within_tolerance": True,
    }


async def test_a_matching_export_reconciles_per_tenant_with_a_project_map(
    ledger: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    dsn, tenants = ledger
    code, report, stderr = reconcile(
        dsn,
        "--openai-costs",
        str(FIXTURES / "openai-costs-matching.json"),
        "--project-map",
        project_map(tmp_path, tenants),
    )
    assert code == 0, stderr
    rows = {(r["date"], r["tenant_id"], r["line_item"]): r["voxgate_micro_usd"] for r in report["rows"]}
    assert rows[("2026-11-03", tenants["beta"], "gpt-realtime-mini, output audio")] == 1_000_000
    assert rows[("2026-11-04", tenants["alpha"], "gpt-realtime, output text")] == 400_000
    assert len(rows) == 5


async def test_a_mismatching_export_names_each_difference_and_fails(
    ledger: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    dsn, tenants = ledger
    mapped = [
        "--openai-costs",
        str(FIXTURES / "openai-costs-mismatching.json"),
        "--project-map",
        project_map(tmp_path, tenants),
    ]
    code, report, stderr = reconcile(dsn, *mapped)
    assert code == 3
    assert "2 of 6 rows differ beyond the tolerance" in stderr
    alpha, beta = tenants["alpha"], tenants["beta"]
    bad = [r for r in report["rows"] if not r["within_tolerance"]]
    assert bad == [
        # voxgate metered 5 % less than OpenAI billed for this line.
        row("2026-11-03", alpha, "gpt-realtime, output audio", 840_000, 800_000, ok=False),
        # Traffic OpenAI billed to the tenant's project that never went through voxgate.
        row("2026-11-04", beta, "gpt-realtime-mini, input audio", 120_000, 0, ok=False),
    ]
    # The unmapped project (a workload outside voxgate) is left out, not reported as a difference.
    assert all("transcribe" not in r["line_item"] for r in report["rows"])
    # A wide enough tolerance accepts the 5 % line, never the missing one.
    code, report, _ = reconcile(dsn, *mapped, "--tolerance", "0.05")
    assert code == 3
    assert [r["line_item"] for r in report["rows"] if not r["within_tolerance"]] == ["gpt-realtime-mini, input audio"]


async def test_the_table_shows_both_amounts_the_difference_and_the_ratio(ledger: tuple[str, dict[str, str]]) -> None:
    dsn, _ = ledger
    done = subprocess.run(
        [str(VOXGATE), "costs", "reconcile", "--openai-costs", str(FIXTURES / "openai-costs-mismatching.json")],
        env={**os.environ, "VOXGATE_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "DATE",
        "(UTC)",
        "TENANT",
        "LINE",
        "ITEM",
        "OPENAI",
        "USD",
        "VOXGATE",
        "USD",
        "DIFFERENCE",
        "USD",
        "RATIO",
    ]
    audio = next(line for line in lines if "gpt-realtime, output audio" in line)
    assert audio.split()[-5:] == ["$0.840000", "$0.800000", "-$0.040000", "0.952381", "MISMATCH"]


class CostsServer:
    """OpenAI's Costs API on loopback over TLS with a certificate from a private CA: serves the
    pages of `openai-costs-matching.json` (the second for the first's `next_page`) and records requests."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = TestCa(tmp_path / "ca")
        issued = self.ca.issue("127.0.0.1", "localhost")
        pages = json.loads((FIXTURES / "openai-costs-matching.json").read_text())
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                recorded.append((url.path, query, self.headers.get("authorization")))
                page = pages[1] if query.get("page") == [pages[0]["next_page"]] else pages[0]
                body = json.dumps(page).encode() if url.path == "/v1/organization/costs" else b"{}"
                self.send_response(200 if url.path == "/v1/organization/costs" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base_url = f"https://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CostsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


ADMIN_KEY = "sk-admin-reconcile-test-0123456789"


async def test_a_live_fetch_trusts_the_upstream_ca_bundle(ledger: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """`--fetch-days` against a Costs API whose certificate only VOXGATE_UPSTREAM_CA_FILE's CA signs
    (a private gateway, a TLS-inspecting egress proxy): it verifies with that bundle added to the
    system store, as every upstream connection does, follows the pages and reconciles them."""
    dsn, _ = ledger
    with CostsServer(tmp_path) as costs:
        env = {
            "VOXGATE_OPENAI_ADMIN_KEY": ADMIN_KEY,
            "VOXGATE_UPSTREAM_URL": costs.base_url,  # the base the Costs API is fetched under by default
        }
        # Without the CA bundle the handshake fails, and the error says why (never the key).
        code, report, stderr = reconcile(dsn, "--fetch-days", "2", env=env)
        assert code == 1 and report == {}
        assert "cannot reach OpenAI's Costs API: certificate" in stderr, stderr
        assert ADMIN_KEY not in stderr and costs.requests == []

        code, report, stderr = reconcile(
            dsn, "--fetch-days", "2", env={**env, "VOXGATE_UPSTREAM_CA_FILE": str(costs.ca.ca_file)}
        )
    assert code == 0, stderr
    assert report["within_tolerance"] is True
    assert [(r["date"], r["line_item"], r["openai_micro_usd"], r["voxgate_micro_usd"]) for r in report["rows"]] == [
        ("2026-11-03", "gpt-realtime, input audio", 960_000, 960_000),
        ("2026-11-03", "gpt-realtime, output audio", 800_000, 800_000),
        ("2026-11-03", "gpt-realtime-mini, output audio", 1_000_000, 1_000_000),
        ("2026-11-04", "gpt-realtime, output text", 400_000, 400_000),
        ("2026-11-04", "gpt-realtime-mini, input text", 60_000, 60_000),
    ]
    (first, first_query, auth), (second, second_query, _) = costs.requests
    assert first == second == "/v1/organization/costs"
    assert auth == f"Bearer {ADMIN_KEY}"
    assert first_query["bucket_width"] == ["1d"] and first_query["group_by"] == ["project_id", "line_item"]
    assert "page" not in first_query and second_query["page"] == ["page_AAAAaxYB5Q0AAAAA"]


async def test_openai_url_overrides_the_base(ledger: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    dsn, _ = ledger
    with CostsServer(tmp_path) as costs:
        env = {"VOXGATE_OPENAI_ADMIN_KEY": ADMIN_KEY, "VOXGATE_UPSTREAM_CA_FILE": str(costs.ca.ca_file)}
        code, report, stderr = reconcile(dsn, "--fetch-days", "2", "--openai-url", costs.base_url + "/", env=env)
    assert code == 0 and report["within_tolerance"] is True, stderr
    assert [path for path, _, _ in costs.requests] == ["/v1/organization/costs"] * 2
