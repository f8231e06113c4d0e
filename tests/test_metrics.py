"""Every admission refusal, session end and policy decision leaves a metric; no secret ever does."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.storage.policy_store import PolicyStore
from tests.support.harness import UPSTREAM_KEY

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
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_refusals_session_ends_and_policy_decisions_are_counted(gateway, tenant, pg_pool) -> None:
    before = await scrape(gateway)
    with pytest.raises(InvalidStatus):
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime",
                                      additional_headers={"Authorization": "Bearer vg_live_" + "B" * 43}):
            pass
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"models": ["gpt-realtime"]}, actor="test")
    with pytest.raises(InvalidStatus):
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime-2",
                                      additional_headers={"Authorization": f"Bearer {tenant.secret}"}):
            pass
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime",
                                  additional_headers={"Authorization": f"Bearer {tenant.secret}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await gateway.settle()
    after = await scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("voxgate_admission_refusals_total", code="invalid_api_key", status="401") == 1
    assert delta("voxgate_admission_refusals_total", code="model_not_allowed", status="403") == 1
    assert delta("voxgate_sessions_ended_total", end_reason="client_closed") == 1
    assert delta("voxgate_sessions_started_total", transport="websocket", relay=gateway.settings.server.relay) == 1
    assert sample(after, "voxgate_ledger_records_total", outcome="written") > 0
    assert "voxgate_live_sessions" in after
    for secret in (tenant.secret, UPSTREAM_KEY, tenant.tenant_id):
        assert secret not in after
