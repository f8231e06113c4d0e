"""Every admission refusal, session end and policy decision leaves a metric; no secret ever does.

Money and tokens are counted per tenant and model (the tenant id is their only identity label);
latencies are histograms (docs/observability.md).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.harness import UPSTREAM_KEY, gateway_settings, start_gateway

pytestmark = pytest.mark.e2e


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, rest = metric.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if base == name and got == want:
            return float(value)
    return 0.0


async def scrape(gateway) -> str:
    async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
    return response.text


async def test_refusals_session_ends_and_policy_decisions_are_counted(gateway, tenant, pg_pool) -> None:
    before = await scrape(gateway)
    with pytest.raises(InvalidStatus):
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": "Bearer vg_live_" + "B" * 43}
        ):
            pass
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"models": ["gpt-realtime"]}, actor="test")
    with pytest.raises(InvalidStatus):
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime-2", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ):
            pass
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await gateway.settle()
    after = await scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("voxgate_admission_refusals_total", code="invalid_api_key", status="401") == 1
    assert delta("voxgate_admission_refusals_total", code="model_not_allowed", status="403") == 1
    assert delta("voxgate_sessions_ended_total", end_reason="client_closed") == 1
    assert delta("voxgate_sessions_started_total", transport="websocket") == 1
    assert sample(after, "voxgate_ledger_records_total", outcome="written") > 0
    assert "voxgate_live_sessions" in after
    for secret in (tenant.secret, UPSTREAM_KEY):
        assert secret not in after
    # The tenant id is a label of the money and token counters only.
    tenant_series = {line.split("{", 1)[0] for line in after.splitlines() if tenant.tenant_id in line}
    assert tenant_series <= {
        f"voxgate_{name}_{suffix}"
        for name in ("cost_micro_usd", "input_tokens", "output_tokens")
        for suffix in ("total", "created")
    }


async def test_the_cost_series_equals_the_ledger(pg_dsn, emulator, tenant, pg_pool) -> None:
    # A gateway of its own, so its counters hold exactly this test's responses.
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        seen: list[dict[str, object]] = []
        with_audio: set[int] = set()
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            for turn in range(3):
                await ws.send(
                    json.dumps(
                        {
                            "type": "conversation.item.create",
                            "item": {
                                "type": "message",
                                "role": "user",
                                "content": [{"type": "input_text", "text": f"turn {turn} " * (turn + 1)}],
                            },
                        }
                    )
                )
                await ws.send(json.dumps({"type": "response.create"}))
                async with asyncio.timeout(10):
                    while (event := json.loads(await ws.recv()))["type"] != "response.done":
                        assert event["type"] != "error", event
                        if event["type"] == "response.output_audio.delta":
                            with_audio.add(turn)
                seen.append(event["response"])
        await gateway.settle()
        text = await scrape(gateway)
    finally:
        await gateway.stop()
    rows = await pg_pool.fetch(
        "SELECT cost_micro_usd, input_tokens, output_tokens FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
    )
    ledger = sum(r["cost_micro_usd"] for r in rows)
    assert len(rows) == 3
    assert ledger == sum(doc_prices.doc_cost(r["usage"]) for r in seen) > 0  # type: ignore[arg-type]
    series = {"tenant": tenant.tenant_id, "model": "gpt-realtime"}
    assert sample(text, "voxgate_cost_micro_usd_total", **series) == ledger
    assert sample(text, "voxgate_input_tokens_total", **series) == sum(r["input_tokens"] for r in rows) > 0
    assert sample(text, "voxgate_output_tokens_total", **series) == sum(r["output_tokens"] for r in rows) > 0
    assert sample(text, "voxgate_responses_total", model="gpt-realtime", status="completed") == 3
    # One observation per response that had audio (a text-only one has no first audio).
    assert sample(text, "voxgate_time_to_first_audio_seconds_count", model="gpt-realtime") == len(with_audio)
    assert sample(text, "voxgate_upstream_connect_seconds_count", transport="websocket") == 1
    assert sample(text, "voxgate_admission_seconds_count", outcome="admitted") == 1
    assert sample(text, "voxgate_ledger_write_seconds_count") >= 1  # the three responses, in one batch or more


async def test_with_a_metrics_token_only_its_bearer_reads_metrics(pg_dsn, emulator) -> None:
    # The counters carry tenant ids and per-tenant spend (docs/observability.md): behind a public
    # route (the chart's Ingress or HTTPRoute sends every path to voxgate) anyone could read them.
    from dataclasses import replace

    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    token = "mt_" + "x" * 40
    settings = replace(settings, security=replace(settings.security, metrics_token=token))
    gateway = await start_gateway(settings)
    try:
        async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                refused = await http.get("/metrics", headers=headers)
                assert refused.status_code == 401, refused.text
                assert refused.json()["error"]["code"] == "invalid_api_key"
                assert token not in refused.text and "voxgate_" not in refused.text
            allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert allowed.status_code == 200 and "voxgate_live_sessions" in allowed.text
            assert token not in allowed.text
            assert (await http.get("/healthz")).status_code == 200  # probes need no token
    finally:
        await gateway.stop()
