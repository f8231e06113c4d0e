"""A transcription session counts under its transcription model's `max_concurrent_sessions_per_model`.

Its model arrives in the first `session.update` (`/v1/realtime?intent=transcription` has no model),
so the cap is checked there, before the update reaches upstream: past the cap the client gets a GA
`error` (`concurrency_limit_exceeded`, `param` naming the model's path) and close 4010, and upstream
never sees the update. Another model is unaffected, and closing a session frees its model's slot.
Real `openai` SDK through voxgate to the emulator, leases read back from Redis.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from emulator.audio import tone
from gateway.services import services_of
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until
from tests.test_model_concurrency import model_count_is, set_policy

pytestmark = pytest.mark.e2e

WHISPER, LIVE_TRANSCRIBE = "gpt-realtime-whisper", "gpt-live-transcribe"
PARAM = "session.audio.input.transcription.model"


def config(model: str) -> Any:
    return {"type": "transcription", "audio": {"input": {"transcription": {"model": model}, "turn_detection": None}}}


@asynccontextmanager
async def transcription(gateway: Gateway, tenant: TenantKey) -> AsyncIterator[Any]:
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    try:
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            yield conn
    finally:
        await client.close()


async def configure(conn: Any, model: str) -> Any:
    """Send the session.update naming `model` (with audio right behind it); the first answer."""
    await conn.session.update(session=config(model), event_id=f"ev_{model}")
    await conn.input_audio_buffer.append(audio=base64.b64encode(tone(200)).decode())
    async with asyncio.timeout(10):
        async for event in conn:
            if event.type in ("session.updated", "error"):
                return event
    raise AssertionError("closed before answering the update")


async def test_a_transcription_model_past_its_cap_is_refused_and_its_slot_is_freed_on_close(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions_per_model": {WHISPER: 1}})
    async with transcription(gateway, tenant) as first:
        updated = await configure(first, WHISPER)
        assert updated.type == "session.updated", updated
        assert updated.session.audio.input.transcription.model == WHISPER
        await until(lambda: model_count_is(gateway, tenant, WHISPER, 1))

        before = len(emulator.sessions)
        async with transcription(gateway, tenant) as second:
            refused = await configure(second, WHISPER)
            assert refused.type == "error"
            assert (refused.error.code, refused.error.type, refused.error.param, refused.error.event_id) == (
                "concurrency_limit_exceeded",
                "rate_limit_error",
                PARAM,
                f"ev_{WHISPER}",
            )
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    async for _ in second:
                        pass
            assert second._connection.close_code == 4010
        # upstream's socket was opened at the upgrade, but neither the update nor the audio behind it arrived
        [upstream] = emulator.sessions[before:]
        assert [e["type"] for e in upstream.client_events if e["type"] != "input_audio_buffer.clear"] == []

        async with transcription(gateway, tenant) as other:  # another model: unaffected
            updated = await configure(other, LIVE_TRANSCRIBE)
            assert updated.type == "session.updated", updated
            await until(lambda: model_count_is(gateway, tenant, LIVE_TRANSCRIBE, 1))
            assert await model_count_is(gateway, tenant, WHISPER, 1)  # the refused one never counted
    await until(lambda: model_count_is(gateway, tenant, WHISPER, 0))
    await until(lambda: model_count_is(gateway, tenant, LIVE_TRANSCRIBE, 0))

    async with transcription(gateway, tenant) as again:  # the slot was given back
        updated = await configure(again, WHISPER)
        assert updated.type == "session.updated", updated
        await until(lambda: model_count_is(gateway, tenant, WHISPER, 1))
    await until(lambda: model_count_is(gateway, tenant, WHISPER, 0))
    ended = await pg_pool.fetch(
        "SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1 AND intent = 'transcription'", tenant.tenant_id
    )
    assert sorted(r["end_reason"] for r in ended).count("start_refused") == 1


async def test_a_client_that_floods_while_its_model_is_counted_waits_in_its_socket(
    pg_dsn: str, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    """While its `session.update` waits for the model to be counted (one Redis round trip, slow here),
    a client that keeps sending is not read: what it sends waits in its socket (TCP back-pressure), not
    in voxgate's memory, and once the model is counted all of it goes upstream, in order, after the
    update. Nothing is lost."""
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions_per_model": {WHISPER: 5}})
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    gateway = await start_gateway(gateway_settings(pg_dsn, f"redis://127.0.0.1:{proxy.port}", emulator.base_url))
    chunk = base64.b64encode(tone(500)).decode()  # 500 ms of audio: 32 KiB in a 43 KiB frame
    flooding: asyncio.Task[None] | None = None
    try:
        before = len(emulator.sessions)
        async with transcription(gateway, tenant) as conn:
            proxy.delay_s = 0.6  # each way: Redis answers the model's count 1.2 s late (the timeout is 2 s)
            await conn.session.update(session=config(WHISPER), event_id="ev_update")
            sent, most_held, flooding_on, pending_seen = 0, 0, True, False

            async def flood() -> None:
                nonlocal sent
                while flooding_on:
                    await conn.input_audio_buffer.append(audio=chunk)
                    sent += 1

            flooding = asyncio.create_task(flood())
            started = time.monotonic()
            while time.monotonic() - started < 0.9:  # the update is still held
                for relay in services_of(gateway.app).live.sessions:
                    gate = relay.live.model_gate
                    if gate is not None:  # what voxgate holds of the client's: the gate's queue, the read under way
                        held = sum(len(m) for m, _ in gate.queued) + sum(len(b) for b in relay.client.backlog)
                        most_held = max(most_held, held)
                        pending_seen = pending_seen or gate.pending
                await asyncio.sleep(0.01)
            proxy.delay_s = 0.0
            assert pending_seen  # the update was held while the client flooded...
            assert sent > 10  # ...the client did flood (what fits in the sockets' buffers)...
            assert most_held <= 1024 * 1024  # ...and voxgate held no more than a read's worth of it
            async with asyncio.timeout(10):
                async for event in conn:
                    if event.type in ("session.updated", "error"):
                        break
            assert event.type == "session.updated", event
            flooding_on = False
            await asyncio.wait_for(flooding, 10)
            upstream = emulator.sessions[before]
            first = upstream.client_events[0]  # the client's update first, then the audio
            assert (first["type"], first.get("event_id")) == ("session.update", "ev_update")

            def appended() -> int:
                return sum(e["type"] == "input_audio_buffer.append" for e in upstream.client_events)

            async def all_arrived() -> bool:
                return appended() == sent

            try:
                await until(all_arrived)  # nothing lost
            except TimeoutError:
                raise AssertionError(f"{appended()} appends arrived upstream of {sent} sent") from None
    finally:
        if flooding is not None and not flooding.done():
            flooding.cancel()
        proxy.delay_s = 0.0
        await gateway.stop()
        await proxy.stop()


async def test_a_tenant_allowed_only_transcription_models_opens_a_transcription_session(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # `?intent=transcription` names no Realtime model: admission prices its budget check at the
    # default model, which for this allowlist is no Realtime model at all. The session must not be
    # refused for it (`model_not_priced`): an app that only transcribes has exactly this allowlist.
    await set_policy(pg_pool, tenant, {"models": [WHISPER, LIVE_TRANSCRIBE], "budget": {"daily_usd": "50"}})
    async with transcription(gateway, tenant) as conn:
        updated = await configure(conn, WHISPER)
        assert updated.type == "session.updated", updated
        assert updated.session.audio.input.transcription.model == WHISPER
    # An allowlist that allows nothing still refuses before the upgrade.
    await set_policy(pg_pool, tenant, {"models": []})
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    try:
        with pytest.raises(Exception) as refused:
            async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
                await conn.recv()
        assert "403" in str(refused.value), refused.value
    finally:
        await client.close()


async def test_a_transcription_session_under_an_output_ceiling_opens(
    gateway: Gateway, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # Found by a hostile review: with `max_output_tokens` in the policy (the default `standard` tier
    # has 1024), a transcription session never got `session.created`: its `session.created` needs no
    # clamp, the governor only forwarded it, and the relay's shortcut for forwarded messages skipped
    # the step that ends the opening, so the session (and its client, never read) hung until upstream
    # gave up on it.
    await set_policy(pg_pool, tenant, {"max_output_tokens": 300})
    async with transcription(gateway, tenant) as conn:
        async with asyncio.timeout(5):
            created = await conn.recv()
        assert created.type == "session.created", created
        updated = await configure(conn, WHISPER)
        assert updated.type == "session.updated", updated
        assert updated.session.audio.input.transcription.model == WHISPER
