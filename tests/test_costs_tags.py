"""Cost per task (issue M, item 6): `X-Voxgate-Tags` on a session, bounded, and a `group_by` key."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.finance.costs import query_costs
from gateway.ledger.records import decode_record, encode_record
from policies.finance import CostQuery
from policies.tags import MAX_TAGS, TagsError, parse_tags
from tests.support import ledger_fill
from tests.support.harness import TenantKey, make_tenant

DAY = 86400
JAN_10 = 1_768_003_200  # 2026-01-10T00:00:00Z


def test_tags_parse_sorted_and_bounded() -> None:
    assert parse_tags(["task=triage, team=voice", "env=prod"]) == (
        ("env", "prod"),
        ("task", "triage"),
        ("team", "voice"),
    )
    assert parse_tags([]) == ()
    too_many = ",".join(f"k{i}=v" for i in range(MAX_TAGS + 1))
    for values, rule in [
        ([too_many], "At most"),
        (["Team=voice"], "key may contain only"),
        (["team=a b"], "value may contain only"),
        (["team=a,team=b"], "appears twice"),
        (["team"], "key=value"),
        (["k" * 41 + "=v"], "1 to 40"),
        (["team=" + "v" * 65], "1 to 64"),
    ]:
        with pytest.raises(TagsError, match=rule):
            parse_tags(values)


async def _latest_session(pool: asyncpg.Pool, tenant: TenantKey) -> dict[str, str]:
    row = await pool.fetchrow(
        "SELECT tags FROM realtime_sessions WHERE tenant_id = $1 ORDER BY started_at DESC LIMIT 1", tenant.tenant_id
    )
    assert row is not None
    tags: dict[str, str] = json.loads(row["tags"])
    return tags


async def test_a_websocket_session_keeps_its_tags(gateway: Any, tenant: TenantKey, pg_pool: asyncpg.Pool) -> None:
    headers = {"Authorization": f"Bearer {tenant.secret}", "X-Voxgate-Tags": "team=voice, task=triage"}
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await gateway.settle()
    assert await _latest_session(pg_pool, tenant) == {"team": "voice", "task": "triage"}


async def test_bad_tags_refuse_the_upgrade_with_a_400(gateway: Any, tenant: TenantKey) -> None:
    headers = {"Authorization": f"Bearer {tenant.secret}", "X-Voxgate-Tags": "Team=voice"}
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=headers):
            pass
    response = info.value.response
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert (error["code"], error["param"]) == ("invalid_tags", "X-Voxgate-Tags")


async def test_client_secrets_and_calls_take_tags(gateway: Any, tenant: TenantKey, pg_pool: asyncpg.Pool) -> None:
    auth = {"Authorization": f"Bearer {tenant.secret}"}
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            f"{gateway.base_url}/realtime/client_secrets", json={}, headers={**auth, "X-Voxgate-Tags": "task=demo"}
        )
        refused = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content="v=0\r\n",
            headers={**auth, "Content-Type": "application/sdp", "X-Voxgate-Tags": "task=a,task=b"},
        )
    assert minted.status_code == 200, minted.text
    await gateway.settle()
    assert await _latest_session(pg_pool, tenant) == {"task": "demo"}
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_tags"


async def test_group_by_tag_counts_each_row_once_per_key(pg_pool: asyncpg.Pool) -> None:
    """A row tagged team=voice and task=triage is in team=voice when grouping by `team`, in
    task=triage when grouping by `task`; untagged rows are the `tag: None` group: totals stay exact."""
    tenant = await make_tenant(pg_pool, "tags")
    t = tenant.tenant_id
    tokens = (10, 0, 0, 10)
    await ledger_fill.write(
        pg_pool,
        [
            ledger_fill.session("vgs_tag1", t, tenant.key_id, None, (("task", "triage"), ("team", "voice")), JAN_10),
            ledger_fill.session("vgs_tag2", t, tenant.key_id, None, (("team", "ops"),), JAN_10),
            ledger_fill.session("vgs_tag3", t, tenant.key_id, None, (), JAN_10),
            ledger_fill.response("resp_tag1", "vgs_tag1", t, "gpt-realtime", JAN_10 + 60, tokens, 700, "test"),
            ledger_fill.response("resp_tag2", "vgs_tag2", t, "gpt-realtime", JAN_10 + 60, tokens, 50, "test"),
            ledger_fill.response("resp_tag3", "vgs_tag3", t, "gpt-realtime", JAN_10 + 60, tokens, 3, "test"),
        ],
    )

    async def by(key: str) -> dict[str | None, int]:
        query = CostQuery(start_time=JAN_10, end_time=JAN_10 + DAY, group_by=("tag",), tag_key=key, project_ids=(t,))
        [bucket] = (await query_costs(pg_pool, query)).buckets
        return {r.tag: r.amount_micro_usd for r in bucket.results}

    assert await by("team") == {"team=ops": 50, "team=voice": 700, None: 3}
    assert await by("task") == {"task=triage": 700, None: 53}


def test_a_spooled_session_keeps_its_tags() -> None:
    started = ledger_fill.session("vgs_spool", "ten_x", None, None, (("task", "triage"), ("team", "voice")), 1.0)
    assert decode_record(encode_record(started)) == started
