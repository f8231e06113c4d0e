"""Per-model concurrency caps (`max_concurrent_sessions_per_model`), across replicas, on every transport
that knows its model: Realtime WebSocket and WebRTC calls, GPT-Live WebSocket (at `session.start`)
and WebRTC, translation. Real clients (the `openai` SDK, websockets, aiortc) through voxgate to the
emulator, on real Postgres and Redis; the leases are read back from the shared live state."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from gateway.livestate import LiveState
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.upstream_http import call_id_from_location
from tests.support.harness import Gateway, TenantKey
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer
from tests.test_calls_broker import Peer
from tests.test_concurrency_replicas import two_gateways

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("end_emulated_calls")]

REFUSED = "429:concurrency_limit_exceeded:model"  # the model's cap
TENANT_CAP = "429:concurrency_limit_exceeded:None"  # the tenant's


async def set_policy(pool: asyncpg.Pool, tenant: TenantKey, document: dict[str, Any]) -> None:
    await PolicyStore(pool, {}, None).set(tenant.tenant_id, document, actor="test")


def live_state(gateway: Gateway) -> LiveState:
    state = gateway.services.enforcement.state
    assert isinstance(state, LiveState)
    return state


async def model_count_is(gateway: Gateway, tenant: TenantKey, model: str, count: int) -> bool:
    """Whether the shared live state counts `count` live leases of `model` for the tenant."""
    return await live_state(gateway).active_model_sessions(tenant.tenant_id, model, time.time()) == count


async def no_model_leases(gateway: Gateway, tenant: TenantKey, model: str) -> bool:
    return await model_count_is(gateway, tenant, model, 0)


async def realtime(url: str, tenant: TenantKey, model: str) -> tuple[str, websockets.ClientConnection | None]:
    """Open a Realtime WebSocket for `model`: ("open", socket), or ("status:code:param", None) for a refusal."""
    try:
        ws = await websockets.connect(
            f"{url}?model={model}", additional_headers={"Authorization": f"Bearer {tenant.secret}"}, open_timeout=20
        )
    except InvalidStatus as exc:
        response = exc.response
    else:
        assert json.loads(await ws.recv())["type"] == "session.created"
        return "open", ws
    error = json.loads(response.body)["error"]
    assert float(response.headers["retry-after"]) > 0
    if error["param"] == "model":
        assert f"'{model}'" in error["message"]
    return f"{response.status_code}:{error['code']}:{error['param']}", None


async def test_a_realtime_burst_for_one_model_hits_exactly_its_cap_across_two_replicas(
    pg_dsn: str, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    cap, attempts = 3, 16
    await set_policy(
        pg_pool,
        tenant,
        {"max_concurrent_sessions": 10, "max_concurrent_sessions_per_model": {"gpt-realtime": cap}},
    )
    async with two_gateways(pg_dsn, emulator.base_url) as (a, b):
        burst = await asyncio.gather(
            *(realtime((a if i % 2 else b).ws_url, tenant, "gpt-realtime") for i in range(attempts))
        )
        outcomes = [o for o, _ in burst]
        assert outcomes.count("open") == cap
        assert outcomes.count(REFUSED) == attempts - cap
        assert await model_count_is(a, tenant, "gpt-realtime", cap)
        # another model is not affected by this model's cap (only by the tenant's)
        others = [await realtime(gw.ws_url, tenant, "gpt-realtime-mini") for gw in (a, b, a)]
        assert [o for o, _ in others] == ["open"] * 3
        # the tenant-wide cap still counts every model: 3 + 3 of 10 held, 4 more fit
        more = await asyncio.gather(*(realtime(b.ws_url, tenant, "gpt-realtime-mini") for _ in range(6)))
        assert sorted(o for o, _ in more) == [TENANT_CAP] * 2 + ["open"] * 4
        # closing the model's sessions gives their leases back: the model opens again on either replica
        for _, ws in [*burst, *others, *more]:
            if ws is not None:
                await ws.close()
        await until(lambda: no_model_leases(b, tenant, "gpt-realtime"))
        await until(lambda: no_model_leases(a, tenant, "gpt-realtime-mini"))
        again = await asyncio.gather(*(realtime(gw.ws_url, tenant, "gpt-realtime") for gw in (a, b, b, a)))
        assert sorted(o for o, _ in again) == [REFUSED] + ["open"] * cap
        for _, ws in again:
            if ws is not None:
                await ws.close()
        await until(lambda: no_model_leases(a, tenant, "gpt-realtime"))


async def test_a_live_websocket_start_past_its_models_cap_is_refused_and_other_models_start(
    gateway: Gateway, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    """The model of a GPT-Live WebSocket arrives in `session.start`: the cap is checked there, before it
    goes upstream, and a refusal is the OpenAI-shaped `error` event and close 4010."""
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions_per_model": {"gpt-live-1": 2}})
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    url = f"ws://{gateway.server.host}:{gateway.server.port}/v1/live/sessions"
    headers = {"Authorization": f"Bearer {tenant.secret}"}

    async def start(model: str) -> tuple[str, websockets.ClientConnection]:
        ws = await websockets.connect(url, additional_headers=headers, open_timeout=20)
        await ws.send(json.dumps({"type": "session.start", "event_id": "ev_1", "session": {"model": model}}))
        event = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if event["type"] == "error":
            error = event["error"]
            assert (error["type"], error["param"], error["client_event_id"]) == (
                "rate_limit_error",
                "session.model",
                "ev_1",
            )
            return error["code"], ws
        return event["type"], ws

    burst: list[tuple[str, websockets.ClientConnection]] = []
    try:
        burst = await asyncio.gather(*(start("gpt-live-1") for _ in range(6)))
        outcomes = sorted(o for o, _ in burst)
        assert outcomes == ["concurrency_limit_exceeded"] * 4 + ["session.started"] * 2
        for outcome, ws in burst:
            if outcome == "concurrency_limit_exceeded":
                await ws.wait_closed()
                assert ws.close_code == 4010
        # the SDK, another model: unaffected
        async with client.live.connect() as connection:
            await connection.session.start(session={"model": "gpt-live-1.1"})
            async with asyncio.timeout(20):
                async for event in connection:
                    if event.type == "session.started":
                        break
                    assert event.type != "error", event
        # the refused ones gave their leases back; closing an open one frees a slot of the model
        await next(ws for o, ws in burst if o == "session.started").close()
        await until(lambda: model_count_is(gateway, tenant, "gpt-live-1", 1))
        outcome, ws = await start("gpt-live-1")
        assert outcome == "session.started"
        await ws.close()
    finally:
        for _, ws in burst:
            await ws.close()
        await client.close()
    await until(lambda: model_count_is(gateway, tenant, "gpt-live-1", 0))
    await until(lambda: model_count_is(gateway, tenant, "gpt-live-1.1", 0))


async def test_live_webrtc_creates_past_the_models_cap_are_refused_before_upstream(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions_per_model": {"gpt-live-1": 1}})
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    peers = [ClientPeer(), ClientPeer(), ClientPeer()]
    try:
        session: Any = {"model": "gpt-live-1"}
        first = await client.live.create(session=session, transport={"type": "webrtc", "sdp": await peers[0].offer()})
        before = len(emulator.live.sessions)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.live.create(session=session, transport={"type": "webrtc", "sdp": await peers[1].offer()})
        assert refused.value.code == "concurrency_limit_exceeded"
        assert len(emulator.live.sessions) == before  # refused before any upstream call
        await client.live.sessions.hangup(first.session.id)
        await until(lambda: model_count_is(gateway, tenant, "gpt-live-1", 0))
        second = await client.live.create(session=session, transport={"type": "webrtc", "sdp": await peers[2].offer()})
        await client.live.sessions.hangup(second.session.id)
        await until(lambda: model_count_is(gateway, tenant, "gpt-live-1", 0))
    finally:
        for peer in peers:
            await peer.close()
        await client.close()


async def test_realtime_webrtc_calls_and_translations_respect_their_models_caps(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await set_policy(
        pg_pool,
        tenant,
        {
            "models": ["gpt-realtime-mini", "gpt-realtime-translate"],
            "max_concurrent_sessions_per_model": {"gpt-realtime-mini": 1, "gpt-realtime-translate": 1},
        },
    )
    headers = {"Authorization": f"Bearer {tenant.secret}", "Content-Type": "application/sdp"}
    peers = [Peer(), Peer(), Peer()]
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            calls = f"{gateway.base_url}/realtime/calls"
            first = await http.post(calls, content=await peers[0].offer(), headers=headers)
            assert first.status_code == 201, first.text
            call_id = call_id_from_location(first.headers["location"])
            second = await http.post(calls, content=await peers[1].offer(), headers=headers)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert second.json()["error"]["param"] == "model"
            # translation has its own model, and its own cap
            async with client.realtime.translations.connect(model="gpt-realtime-translate"):
                with pytest.raises(InvalidStatus) as translation:
                    async with client.realtime.translations.connect(model="gpt-realtime-translate"):
                        pass
                assert translation.value.response.status_code == 429
                assert json.loads(translation.value.response.body)["error"]["code"] == "concurrency_limit_exceeded"
            await until(lambda: model_count_is(gateway, tenant, "gpt-realtime-translate", 0))
            # the call's lease goes back when it ends
            hangup = await http.post(f"{calls}/{call_id}/hangup", headers={"Authorization": headers["Authorization"]})
            assert hangup.status_code < 300, hangup.text
            await until(lambda: model_count_is(gateway, tenant, "gpt-realtime-mini", 0))
            third = await http.post(calls, content=await peers[2].offer(), headers=headers)
            assert third.status_code == 201, third.text
            await http.post(
                f"{calls}/{call_id_from_location(third.headers['location'])}/hangup",
                headers={"Authorization": headers["Authorization"]},
            )
        await until(lambda: model_count_is(gateway, tenant, "gpt-realtime-mini", 0))
    finally:
        for peer in peers:
            await peer.close()
        await client.close()


async def test_webrtc_transcription_calls_count_under_their_transcription_model(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # Found by a fault review: a multipart transcription call names its model in the offer's session,
    # but admission counted no model, so two calls passed a cap of one (the WebSocket route held it).
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions_per_model": {"whisper-1": 1}})
    session = {"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    auth = {"Authorization": f"Bearer {tenant.secret}"}
    peers = [Peer(), Peer()]
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            calls = f"{gateway.base_url}/realtime/calls"

            async def offer(peer: Peer) -> httpx.Response:
                files = {
                    "sdp": (None, await peer.offer(), "application/sdp"),
                    "session": (None, json.dumps(session), "application/json"),
                }
                return await http.post(calls, files=files, headers=auth)

            first = await offer(peers[0])
            assert first.status_code == 201, first.text
            await until(lambda: model_count_is(gateway, tenant, "whisper-1", 1))
            second = await offer(peers[1])
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
            hangup = await http.post(f"{calls}/{call_id_from_location(first.headers['location'])}/hangup", headers=auth)
            assert hangup.status_code < 300, hangup.text
            await until(lambda: model_count_is(gateway, tenant, "whisper-1", 0))
    finally:
        for peer in peers:
            await peer.close()
