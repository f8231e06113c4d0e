"""Issue 15 §6: Realtime translation over WebRTC, brokered by voxgate and metered by wall-clock time.

A real aiortc peer posts its offer to voxgate (`POST /v1/realtime/translations/calls`), which
mints an ephemeral key and places the call at the emulator. No translation event carries
usage, so the expected cost is bounded here from this test's own clock readings around the
offer and the hangup, at the published price, never from anything voxgate reports.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthStore
from gateway.ledger.records import DurationRecord, SessionEnded
from gateway.livestate import LiveState
from gateway.storage.policy_store import PolicyStore
from gateway.translation.call_store import TranslationCallStore
from tests.conftest import REDIS_URL
from tests.support.harness import TenantKey, make_tenant
from tests.support.live_conformance import validate_translation
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer
from tests.test_concurrency_replicas import LEASE_TTL_S, gateway_process

pytestmark = [pytest.mark.e2e]

PRICE_MICRO_USD_PER_MIN = 34_000  # gpt-realtime-translate, $0.034 / min (the model page)
HS_SECRET = secrets.token_urlsafe(40)


def cost_of_ms(ms: int) -> int:
    """µUSD of `ms` milliseconds at the published rate, rounded half up."""
    return (2 * ms * PRICE_MICRO_USD_PER_MIN + 60_000) // 120_000


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer(speech_ms=600)
    yield client
    await client.close()


@pytest.fixture
async def http(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def place(http: httpx.AsyncClient, token: str, offer: str) -> httpx.Response:
    headers = {**bearer(token), "Content-Type": "application/sdp"}
    return await http.post("/realtime/translations/calls", content=offer.encode(), headers=headers)


def upstream_call(emulator: Any, call_id: str) -> Any:
    return emulator.translations.find_call(call_id)


async def hung_up_upstream(pg_pool: asyncpg.Pool, call_id: str) -> None:
    """A capped call is booked first, then hung up: wait for upstream's confirmation too."""

    async def confirmed() -> bool:
        return bool(
            await pg_pool.fetchval("SELECT upstream_hung_up FROM translation_calls WHERE call_id = $1", call_id)
        )

    await until(confirmed)


async def booked(pg_pool: asyncpg.Pool, call_id: str) -> Any:
    async def row() -> Any:
        return await pg_pool.fetchrow(
            "SELECT d.active_ms, d.cost_micro_usd, d.estimated, d.price_version, s.end_reason, "
            "s.cost_micro_usd AS session_cost, s.transport, s.intent, c.end_reason AS call_end "
            "FROM translation_calls c JOIN duration_usage d ON d.session_id = c.session_id AND d.usage_id = c.call_id "
            "JOIN realtime_sessions s ON s.id = c.session_id "
            "WHERE c.call_id = $1 AND c.state = 'ended' AND s.ended_at IS NOT NULL",
            call_id,
        )

    return await until(row, 15.0)


async def test_a_translation_call_is_booked_from_offer_to_hangup(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    offer = await peer.offer()
    before_offer = time.time()
    placed = await place(http, tenant.secret, offer)
    answered = time.time()
    assert placed.status_code == 201, placed.text
    assert placed.headers["content-type"].startswith("application/sdp")
    call_id = placed.headers["location"].rpartition("/")[2]
    await peer.accept(placed.text)
    await peer.wait_for("session.created")
    call = upstream_call(emulator, call_id)
    assert call is not None and call.headers["authorization"].startswith("Bearer ek_")  # the minted key, not ours
    minted = emulator.translations.client_secrets[-1]
    assert minted.request["session"]["model"] == "gpt-realtime-translate"
    assert tenant.secret not in str(call.headers) and tenant.secret not in str(minted.headers)
    await asyncio.sleep(1.2)

    hangup_sent = time.time()
    hung = await http.post(f"/realtime/translations/calls/{call_id}/hangup", headers=bearer(tenant.secret))
    hung_up = time.time()
    assert hung.status_code == 200, hung.text
    assert call.hung_up
    assert call.server_events[-1]["type"] == "session.closed"  # upstream flushed, then closed
    assert "session.closed" in validate_translation(emulator)  # every event is one of openai's types

    row = await booked(pg_pool, call_id)
    # The meter runs from the offer leaving voxgate to upstream confirming the hangup, so it lies
    # within what this test saw: at least answer -> hangup request, at most offer request -> hangup answer.
    lower_ms = int((hangup_sent - answered) * 1000)
    upper_ms = int((hung_up - before_offer) * 1000) + 1
    assert lower_ms <= row["active_ms"] <= upper_ms
    assert cost_of_ms(lower_ms) <= row["cost_micro_usd"] <= cost_of_ms(upper_ms)
    assert row["cost_micro_usd"] == cost_of_ms(row["active_ms"])
    assert not row["estimated"]
    assert (row["end_reason"], row["call_end"], row["transport"], row["intent"]) == (
        "client_hangup",
        "hangup",
        "webrtc",
        "translation",
    )
    assert row["session_cost"] == row["cost_micro_usd"]
    again = await http.post(f"/realtime/translations/calls/{call_id}/hangup", headers=bearer(tenant.secret))
    assert again.status_code == 200  # hanging up twice is harmless and books nothing more
    assert await pg_pool.fetchval("SELECT count(*) FROM duration_usage WHERE usage_id = $1", call_id) == 1


def browser_token(tenant: TenantKey, user: str) -> str:
    now = int(time.time())
    claims = {"tenant_id": tenant.tenant_id, "sub": user, "aud": "voxgate", "iat": now, "exp": now + 300}
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


async def test_only_the_owner_may_hang_up_and_others_reach_nothing_upstream(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    placed = await place(http, browser_token(tenant, "user-1"), await peer.offer())  # a browser places it
    assert placed.status_code == 201, placed.text
    call_id = placed.headers["location"].rpartition("/")[2]
    await peer.accept(placed.text)
    foreign = await make_tenant(pg_pool)
    path = f"/realtime/translations/calls/{call_id}/hangup"
    for token in (foreign.secret, browser_token(tenant, "user-2")):  # another tenant; the same tenant's other user
        refused = await http.post(path, headers=bearer(token))
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "call_not_found"
    assert not upstream_call(emulator, call_id).hung_up  # no hangup reached upstream
    state = await pg_pool.fetchval("SELECT state FROM translation_calls WHERE call_id = $1", call_id)
    assert state == "active"
    owner = await http.post(path, headers=bearer(browser_token(tenant, "user-1")))
    assert owner.status_code == 200, owner.text
    assert upstream_call(emulator, call_id).hung_up
    assert (await booked(pg_pool, call_id))["end_reason"] == "client_hangup"


async def test_a_call_at_its_cap_is_hung_up_upstream_and_booked_as_estimated(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": 2}, actor="test")
    placed = await place(http, tenant.secret, await peer.offer())
    assert placed.status_code == 201, placed.text
    call_id = placed.headers["location"].rpartition("/")[2]
    await peer.accept(placed.text)
    row = await booked(pg_pool, call_id)  # no hangup from the tenant: the sweep ends it
    await hung_up_upstream(pg_pool, call_id)
    assert upstream_call(emulator, call_id).hung_up
    assert (row["active_ms"], row["estimated"]) == (2000, True)
    assert row["cost_micro_usd"] == cost_of_ms(2000)
    assert (row["end_reason"], row["call_end"]) == ("duration_cap", "cap")


async def test_a_call_outlives_the_replica_that_placed_it_and_another_books_it_at_its_cap(
    pg_dsn, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, redis_prefix: str, peer: ClientPeer
) -> None:
    cap_s = 6  # well past twice the replicas' lease TTL (1.5 s)
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": cap_s}, actor="test")
    prefix = f"{redis_prefix}translation-failover:"  # both replicas share it, as a deployment's replicas do
    probe = aioredis.from_url(REDIS_URL)
    shared = LiveState(probe, prefix, "probe")
    try:
        async with (
            gateway_process(pg_dsn, emulator.base_url, prefix, "pod-a") as (proc_a, url_a),
            gateway_process(pg_dsn, emulator.base_url, prefix, "pod-b"),
        ):
            base_a = url_a.replace("ws://", "http://").split("/v1/")[0] + "/v1"
            async with httpx.AsyncClient(base_url=base_a, timeout=15) as http_a:
                placed = await place(http_a, tenant.secret, await peer.offer())
            answered = time.monotonic()
            assert placed.status_code == 201, placed.text
            call_id = placed.headers["location"].rpartition("/")[2]
            proc_a.kill()  # SIGKILL right after the answer: no drain, nothing handed over
            await proc_a.wait()
            await peer.accept(placed.text)
            # pod-a's heartbeat died with it; pod-b's sweep renews the call's lease past two TTLs.
            await asyncio.sleep(max(0.0, answered + 2 * LEASE_TTL_S + 0.3 - time.monotonic()))
            assert time.monotonic() - answered < cap_s - 1  # still before the cap: the call is live
            assert await shared.active_sessions(tenant.tenant_id, time.time()) == 1
            row = await booked(pg_pool, call_id)  # another replica's sweep ends it at the cap
            await hung_up_upstream(pg_pool, call_id)
            assert upstream_call(emulator, call_id).hung_up
            assert (row["active_ms"], row["estimated"], row["call_end"]) == (cap_s * 1000, True, "cap")
            assert row["cost_micro_usd"] == cost_of_ms(cap_s * 1000)

            async def freed() -> bool:
                return await shared.active_sessions(tenant.tenant_id, time.time()) == 0

            await until(freed)  # pod-b booked it and gave the lease back
    finally:
        await probe.aclose()


async def test_the_cap_cost_is_reserved_so_a_budget_that_cannot_cover_it_refuses_the_call(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    # 600 s at $0.034 / min is $0.34; a $0.30 day cannot cover the cap, a $0.40 day can.
    policies = PolicyStore(pg_pool, {}, None)
    await policies.set(tenant.tenant_id, {"max_session_seconds": 600, "budget": {"daily_usd": "0.30"}}, actor="test")
    offers_before = len(emulator.translations.sessions)
    refused = await place(http, tenant.secret, await peer.offer())
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert len(emulator.translations.sessions) == offers_before  # nothing placed upstream
    await policies.set(tenant.tenant_id, {"budget": {"daily_usd": "0.40"}}, actor="test")
    placed = await place(http, tenant.secret, await peer.offer())
    assert placed.status_code == 201, placed.text
    call_id = placed.headers["location"].rpartition("/")[2]
    spend = await gateway.services.enforcement.state.spend(tenant.tenant_id, time.time())
    assert spend.reserved_day == cost_of_ms(600_000)  # the cap's cost is held while the call runs
    hung = await http.post(f"/realtime/translations/calls/{call_id}/hangup", headers=bearer(tenant.secret))
    assert hung.status_code == 200
    row = await booked(pg_pool, call_id)

    async def settled() -> Any:
        state = await gateway.services.enforcement.state.spend(tenant.tenant_id, time.time())
        return state if state.reserved_day == 0 else None

    after = await until(settled)
    assert after.spent_day == row["cost_micro_usd"]  # the hold became the booked cost


def upstream_attempts(emulator: Any) -> tuple[int, int]:
    """What reached upstream of translation calls: offers posted, keys minted."""
    return len(emulator.translations.sessions), len(emulator.translations.client_secrets)


async def leases(gateway: Any, tenant: TenantKey, model: str | None = None) -> int:
    """The tenant's live concurrency leases in the shared state (expired ones reaped first)."""
    state = gateway.services.enforcement.state
    if model is None:
        return int(await state.active_sessions(tenant.tenant_id, time.time()))
    return int(await state.active_model_sessions(tenant.tenant_id, model, time.time()))


async def hang_up(http: httpx.AsyncClient, tenant: TenantKey, call_id: str) -> None:
    hung = await http.post(f"/realtime/translations/calls/{call_id}/hangup", headers=bearer(tenant.secret))
    assert hung.status_code == 200, hung.text


async def place_ok(http: httpx.AsyncClient, tenant: TenantKey) -> str:
    """Place a call (its own aiortc peer's offer); its call id."""
    client = ClientPeer(speech_ms=600)
    try:
        placed = await place(http, tenant.secret, await client.offer())
    finally:
        await client.close()
    assert placed.status_code == 201, placed.text
    return str(placed.headers["location"].rpartition("/")[2])


async def refused_before_upstream(http: httpx.AsyncClient, tenant: TenantKey, emulator: Any) -> dict[str, Any]:
    """Place a call that must be refused 429 with nothing reaching upstream; its error."""
    before = upstream_attempts(emulator)
    client = ClientPeer(speech_ms=600)
    try:
        refused = await place(http, tenant.secret, await client.offer())
    finally:
        await client.close()
    assert refused.status_code == 429, refused.text
    assert upstream_attempts(emulator) == before  # no key minted, no offer posted
    error: dict[str, Any] = refused.json()["error"]
    assert error["code"] == "concurrency_limit_exceeded"
    return error


async def test_live_calls_count_against_the_tenant_cap_until_hung_up(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_concurrent_sessions": 2}, actor="test")
    first, second = await place_ok(http, tenant), await place_ok(http, tenant)
    assert await leases(gateway, tenant) == 2
    await refused_before_upstream(http, tenant, emulator)
    await hang_up(http, tenant, first)
    assert await leases(gateway, tenant) == 1  # given back when booked, before the hangup's answer
    third = await place_ok(http, tenant)
    await refused_before_upstream(http, tenant, emulator)
    for call_id in (second, third):
        await hang_up(http, tenant, call_id)
    assert await leases(gateway, tenant) == 0


async def test_live_calls_count_against_the_per_model_cap(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    caps = {"max_concurrent_sessions": 5, "max_concurrent_sessions_per_model": {"gpt-realtime-translate": 1}}
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, caps, actor="test")
    first = await place_ok(http, tenant)
    assert await leases(gateway, tenant, "gpt-realtime-translate") == 1
    error = await refused_before_upstream(http, tenant, emulator)
    assert error["param"] == "model" and "gpt-realtime-translate" in error["message"]
    await hang_up(http, tenant, first)
    assert await leases(gateway, tenant, "gpt-realtime-translate") == 0
    second = await place_ok(http, tenant)
    await hang_up(http, tenant, second)


async def test_a_call_longer_than_the_lease_ttl_keeps_its_lease_and_a_capped_call_frees_it(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ttl = gateway.services.enforcement.lease_ttl
    assert ttl <= 5.0  # the test gateway's short TTL: the call below outlives it
    policy = {"max_concurrent_sessions": 1, "max_session_seconds": int(2 * ttl + 2)}
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    call_id = await place_ok(http, tenant)
    await asyncio.sleep(ttl * 1.5)  # unrenewed, the lease would have expired and been reaped by now
    assert await leases(gateway, tenant) == 1
    await refused_before_upstream(http, tenant, emulator)
    row = await booked(pg_pool, call_id)  # the sweep books it at its cap, and gives the lease back
    assert (row["call_end"], row["estimated"]) == ("cap", True)

    async def freed() -> bool:
        return await leases(gateway, tenant) == 0

    await until(freed)
    await hang_up(http, tenant, await place_ok(http, tenant))


async def test_a_booking_whose_replica_died_before_the_settle_is_settled_by_a_sweep(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": 600}, actor="test")
    call_id = await place_ok(http, tenant)
    state = gateway.services.enforcement.state
    assert (await state.spend(tenant.tenant_id, time.time())).reserved_day == cost_of_ms(600_000)
    # What a replica that dies right after booking leaves: the call booked under its claim (by the
    # real store, as `TranslationCalls` books it), upstream not hung up, the lease and hold kept.
    store = TranslationCallStore(pg_pool)
    call = await store.claim(call_id, time.time())
    assert call is not None
    ended_at, ms = time.time(), 1_500
    record = DurationRecord(
        session_id=call.session_id,
        kind="translation",
        usage_id=call_id,
        tenant_id=tenant.tenant_id,
        model=call.model,
        occurred_at=ended_at,
        active_ms=ms,
        standby_ms=0,
        estimated=False,
        cost_micro_usd=cost_of_ms(ms),
        price_version="test",
    )
    ended = SessionEnded(call.session_id, ended_at, "client_hangup", "booked by a replica that died")
    assert await store.end(call, "hangup", record, ended, hung_up=False)
    assert await leases(gateway, tenant) == 1
    # The dead replica's claim runs out (here at once, instead of after CLAIM_S): a sweep takes over.
    await pg_pool.execute("UPDATE translation_calls SET claimed_until = now() WHERE call_id = $1", call_id)

    async def settled() -> Any:
        spend = await state.spend(tenant.tenant_id, time.time())
        pending = await pg_pool.fetchval("SELECT settle_pending FROM translation_calls WHERE call_id = $1", call_id)
        return spend if spend.reserved_day == 0 and pending is False else None

    spend = await until(settled)
    assert spend.spent_day == cost_of_ms(ms)  # the hold became the booked cost
    assert await leases(gateway, tenant) == 0
    await hung_up_upstream(pg_pool, call_id)  # and the call it never hung up is hung up upstream
    assert upstream_call(emulator, call_id).hung_up

    # A sweep that settles once more (its replica died after the settle, before marking it) adds nothing.
    await pg_pool.execute(
        "UPDATE translation_calls SET settle_pending = true, claimed_until = now() WHERE call_id = $1", call_id
    )
    await until(settled)
    assert (await state.spend(tenant.tenant_id, time.time())).spent_day == cost_of_ms(ms)
    assert await pg_pool.fetchval("SELECT count(*) FROM duration_usage WHERE usage_id = $1", call_id) == 1


async def test_offers_are_policed_before_anything_upstream(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    before = (len(emulator.translations.sessions), len(emulator.translations.client_secrets))
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"models": ["gpt-realtime"]}, actor="test")
    valid_sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    not_allowed = await place(http, tenant.secret, valid_sdp)
    assert not_allowed.status_code == 403 and not_allowed.json()["error"]["code"] == "model_not_allowed"
    bad_sdp = await place(http, tenant.secret, "hello")
    assert bad_sdp.status_code == 400 and bad_sdp.json()["error"]["code"] == "invalid_sdp"
    as_json = await http.post("/realtime/translations/calls", json={"sdp": valid_sdp}, headers=bearer(tenant.secret))
    assert as_json.status_code == 415
    no_key = await http.post(
        "/realtime/translations/calls", content=valid_sdp, headers={"Content-Type": "application/sdp"}
    )
    assert no_key.status_code == 401
    assert (len(emulator.translations.sessions), len(emulator.translations.client_secrets)) == before


async def test_a_cap_is_booked_even_while_upstream_refuses_the_hangup_which_is_retried(
    gateway, emulator, http: httpx.AsyncClient, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": 2}, actor="test")
    placed = await place(http, tenant.secret, await peer.offer())
    assert placed.status_code == 201, placed.text
    call_id = placed.headers["location"].rpartition("/")[2]
    await peer.accept(placed.text)
    emulator.faults.connect_status = 503  # upstream refuses every request from now on, the hangup too
    row = await booked(pg_pool, call_id)
    assert (row["active_ms"], row["estimated"], row["call_end"]) == (2000, True, "cap")
    assert not upstream_call(emulator, call_id).hung_up
    assert not await pg_pool.fetchval("SELECT upstream_hung_up FROM translation_calls WHERE call_id = $1", call_id)
    emulator.faults.connect_status = None
    # The failed attempt's claim runs out (here at once, instead of after CLAIM_S): the next sweep retries.
    await pg_pool.execute("UPDATE translation_calls SET claimed_until = now() WHERE call_id = $1", call_id)

    await hung_up_upstream(pg_pool, call_id)
    assert upstream_call(emulator, call_id).hung_up
    assert await pg_pool.fetchval("SELECT count(*) FROM duration_usage WHERE usage_id = $1", call_id) == 1


async def test_the_emulator_answers_with_a_location_and_hangs_up_only_for_the_standard_key(peer: ClientPeer) -> None:
    from emulator import EmulatorConfig, RealtimeEmulator

    key = "sk-emulator"
    async with (
        RealtimeEmulator(EmulatorConfig(api_key=key)) as emu,
        httpx.AsyncClient(base_url=emu.base_url, timeout=15) as http,
    ):
        minted = await http.post(
            "/realtime/translations/client_secrets",
            json={"session": {"model": "gpt-realtime-translate"}},
            headers=bearer(key),
        )
        ephemeral = minted.json()["value"]
        answer = await http.post(
            "/realtime/translations/calls",
            content=await peer.offer(),
            headers={**bearer(ephemeral), "Content-Type": "application/sdp"},
        )
        assert answer.status_code == 201, answer.text
        location = answer.headers["location"]
        assert location.startswith("/v1/realtime/translations/calls/")
        call_id = location.rpartition("/")[2]
        await peer.accept(answer.text)
        await peer.wait_for("session.created")
        path = f"/realtime/translations/calls/{call_id}/hangup"
        assert (await http.post(path, headers=bearer(ephemeral))).status_code == 401  # the browser's key cannot
        assert (await http.post(path, headers=bearer(key))).status_code == 200
        closed = await peer.wait_for("session.closed")  # flushed, then closed, on the data channel
        assert closed["type"] == "session.closed"
        assert (await http.post(path, headers=bearer(key))).status_code == 404  # gone
        assert "session.closed" in validate_translation(emu)
