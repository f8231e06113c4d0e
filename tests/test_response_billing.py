"""Every billable response reaches the ledger, and the client learns of it only after that.

A real gateway, the real emulator (slowed with `event_latency_ms` so a response is still
streaming when the test acts), real Postgres. Expected costs come from docs/pricing.md's
table typed in by hand (`tests/support/doc_prices.py`), applied to the usage the emulator
itself sent, which is what OpenAI would bill.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from emulator import Faults
from emulator.audio import silence, tone
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.doc_prices import doc_cost
from tests.support.harness import TenantKey, gateway_settings, start_emulator, start_gateway
from tests.support.observed import TRANSCRIBER, price_transcription
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

# A reply long enough to stream for a while: "You said: " + this, 50 ms of audio a character.
LONG_TEXT = "please repeat this sentence slowly so that it takes a good while to say out loud " * 2


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}"}


async def ask(ws: websockets.ClientConnection, text: str) -> None:
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
            }
        )
    )
    await ws.send(json.dumps({"type": "response.create"}))


async def until(ws: websockets.ClientConnection, kind: str, seconds: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event  # type: ignore[no-any-return]


async def streaming_response(ws_url: str, emulator: Any, tenant: TenantKey) -> tuple[websockets.ClientConnection, str]:
    """A session whose (slowed) response is streaming audio deltas: the socket and the response id."""
    emulator.faults = Faults(event_latency_ms=15)
    ws = await websockets.connect(f"{ws_url}?model=gpt-realtime", additional_headers=auth(tenant))
    await until(ws, "session.created")
    await ask(ws, LONG_TEXT)
    response_id = (await until(ws, "response.created"))["response"]["id"]
    await until(ws, "response.output_audio.delta")
    return ws, response_id


def reset(ws: websockets.ClientConnection) -> None:
    """Vanish: a TCP RST, no close frame."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


def upstream_done(emulator: Any, response_id: str) -> dict[str, Any]:
    """The `response.done` the emulator sent for `response_id`: what upstream bills."""
    for session in emulator.sessions:
        for event in session.server_events:
            if event["type"] == "response.done" and event["response"]["id"] == response_id:
                return event  # type: ignore[no-any-return]
    raise AssertionError(f"upstream sent no response.done for {response_id}")


async def ledger_rows(pool: asyncpg.Pool, response_id: str, seconds: float = 5.0) -> list[asyncpg.Record]:
    deadline = time.monotonic() + seconds
    while True:
        rows = await pool.fetch("SELECT * FROM usage_ledger WHERE response_id = $1", response_id)
        if rows or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.02)


def assert_row_matches(row: asyncpg.Record, done: dict[str, Any]) -> None:
    usage = done["response"]["usage"]
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
        usage["total_tokens"],
    )
    assert row["output_audio_tokens"] == usage["output_token_details"]["audio_tokens"]
    assert row["status"] == done["response"]["status"]
    assert row["cost_micro_usd"] == doc_cost(usage)


async def test_a_client_that_vanishes_mid_response_still_gets_the_response_billed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ws, response_id = await streaming_response(gateway.ws_url, emulator, tenant)  # deltas are streaming
    reset(ws)
    [row] = await ledger_rows(pg_pool, response_id)
    done = upstream_done(emulator, response_id)
    # voxgate cancelled the response it could no longer deliver, and booked what upstream billed.
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["usage"]["output_tokens"] > 0
    assert_row_matches(row, done)
    await gateway.settle()
    session = await pg_pool.fetchrow(
        "SELECT end_reason, responses, cost_micro_usd FROM realtime_sessions WHERE id = $1", row["session_id"]
    )
    # The session's totals are written after the abandoned response was metered, so they include it.
    assert (session["end_reason"], session["responses"], session["cost_micro_usd"]) == (
        "client_closed",
        1,
        row["cost_micro_usd"],
    )


async def test_a_client_that_closes_mid_response_still_gets_the_response_billed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    emulator.faults = Faults(event_latency_ms=15)
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
        await until(ws, "session.created")
        await ask(ws, LONG_TEXT)
        response_id = (await until(ws, "response.created"))["response"]["id"]
        await until(ws, "response.output_audio.delta")
    # the close handshake is answered at once; upstream is read on until the response is billed
    [row] = await ledger_rows(pg_pool, response_id)
    assert_row_matches(row, upstream_done(emulator, response_id))


async def test_the_client_receives_response_done_only_once_its_row_is_committed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
        await until(ws, "session.created")
        for n in range(5):
            await ask(ws, f"turn {n}")
            done = await until(ws, "response.done")
            # Queried the moment the client holds response.done: the row must already be there.
            rows = await pg_pool.fetch("SELECT * FROM usage_ledger WHERE response_id = $1", done["response"]["id"])
            assert len(rows) == 1, f"response {n}: response.done reached the client before its row was committed"
            assert_row_matches(rows[0], done)


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


async def test_with_postgres_cut_response_done_arrives_after_the_durable_timeout_and_the_row_lands_later(
    pg_dsn: str, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from dataclasses import replace

    parts = urlsplit(pg_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    settings = gateway_settings(_via(pg_dsn, proxy.port), REDIS_URL, emulator.base_url)
    durable_timeout = 0.5
    settings = replace(
        settings, ledger=replace(settings.ledger, spool_dir=tmp_path, durable_timeout_seconds=durable_timeout)
    )
    gw = await start_gateway(settings)
    try:
        async with websockets.connect(f"{gw.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
            await until(ws, "session.created")
            await asyncio.sleep(0.2)  # the session's start record is committed
            proxy.cut()  # Postgres becomes unreachable for voxgate
            await ask(ws, "hello")
            await until(ws, "conversation.item.done")  # the last event before response.done
            before = time.monotonic()
            done = await until(ws, "response.done")
            waited = time.monotonic() - before
        # It waited for the commit that could not come, then for the journal's fsync: no longer.
        assert durable_timeout * 0.8 <= waited <= durable_timeout + 1.0
        response_id = done["response"]["id"]
        assert response_id.encode() in (tmp_path / "ledger-spool.jsonl").read_bytes()
        assert gw.services.ledger.stats.journaled >= 1
        assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE response_id = $1", response_id) == 0
        proxy.restore()
        [row] = await ledger_rows(pg_pool, response_id, seconds=15)
        assert_row_matches(row, done)
    finally:
        proxy.restore()
        await gw.stop()
        await proxy.stop()


async def test_a_drain_mid_response_books_the_response(pg_dsn: str, tenant: TenantKey, pg_pool: asyncpg.Pool) -> None:
    """What SIGTERM starts (uvicorn's should_exit, then voxgate's drain), with no grace left."""
    emulator = await start_emulator()
    gw = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        ws, response_id = await streaming_response(gw.ws_url, emulator, tenant)
        stopping = asyncio.create_task(gw.stop())
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert ws.close_code == 1001
        async with asyncio.timeout(15):
            await stopping
        [row] = await ledger_rows(pg_pool, response_id, seconds=1)
        assert_row_matches(row, upstream_done(emulator, response_id))
        session = await pg_pool.fetchrow(
            "SELECT end_reason, responses FROM realtime_sessions WHERE id = $1", row["session_id"]
        )
        assert (session["end_reason"], session["responses"]) == ("gateway_shutdown", 1)
    finally:
        await emulator.stop()


# -- The fence: a response server VAD starts as the session ends ----------------------------------
#
# The client's audio is upstream, its turn is over, but upstream has not announced the response yet
# when the session ends (the client closes, or voxgate closes it). Upstream starts the response
# anyway and bills it: voxgate must see it, cancel it and book it.


async def speak(ws: websockets.ClientConnection) -> None:
    """A turn the default server VAD ends by itself: speech, then more than 500 ms of silence."""
    for chunk in (tone(600), silence(800)):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))


async def vad_response(upstream: Any, seconds: float = 5.0) -> str:
    """The id of the response upstream's VAD started (whether or not upstream got to announce it)."""
    async with asyncio.timeout(seconds):
        while upstream.protocol.last_response_id is None:
            await asyncio.sleep(0.005)
    return str(upstream.protocol.last_response_id)


async def unbilled(pool: asyncpg.Pool, tenant: TenantKey) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = $2", tenant.tenant_id, "response_unbilled"
        )
    )


async def test_a_client_that_closes_right_after_speaking_gets_the_vad_response_billed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    emulator.faults = Faults(event_latency_ms=15)  # upstream announces the response after the client is gone
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
        await until(ws, "session.created")
        upstream = emulator.sessions[-1]
        await speak(ws)
    # The client closed right after its last audio; upstream's VAD ends the turn on that audio.
    response_id = await vad_response(upstream)
    [row] = await ledger_rows(pg_pool, response_id)
    done = upstream_done(emulator, response_id)
    assert done["response"]["status"] == "cancelled"
    assert [e["response_id"] for e in upstream.client_events if e["type"] == "response.cancel"] == [response_id]
    assert_row_matches(row, done)
    await gateway.settle()
    assert await unbilled(pg_pool, tenant) == 0
    session = await pg_pool.fetchrow(
        "SELECT end_reason, responses, cost_micro_usd FROM realtime_sessions WHERE id = $1", row["session_id"]
    )
    assert (session["end_reason"], session["responses"], session["cost_micro_usd"]) == (
        "client_closed",
        1,
        doc_cost(done["response"]["usage"]),
    )


async def test_a_policy_close_right_after_the_client_spoke_gets_the_vad_response_billed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # A duration cap of 1 s closes the session while upstream, slowed to 2.5 s an event, has the
    # client's turn but has not announced the response its VAD started.
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": 1}, actor="test")
    ws = await websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant))
    await until(ws, "session.created")
    upstream = emulator.sessions[-1]
    emulator.faults = Faults(event_latency_ms=2500)
    await speak(ws)
    response_id = await vad_response(upstream, seconds=1)
    seen: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(3):
            while True:
                seen.append(json.loads(await ws.recv()))
    # The client's close does not wait for upstream: the fence is not even answered yet.
    assert ws.close_code == 4001
    assert not [e for e in upstream.server_events if e["type"] == "input_audio_buffer.cleared"]
    emulator.faults = Faults()
    [row] = await ledger_rows(pg_pool, response_id, seconds=8)
    done = upstream_done(emulator, response_id)
    assert done["response"]["status"] == "cancelled"
    assert_row_matches(row, done)
    # The close's error came last; nothing upstream said about the turn reached the client.
    assert seen[-1]["error"]["code"] == "session_duration_exceeded"
    assert not [e for e in seen if e["type"].startswith(("input_audio_buffer.", "response."))]
    kinds = [e["type"] for e in upstream.client_events]
    assert kinds.index("input_audio_buffer.clear") > kinds.index("input_audio_buffer.append")
    assert "response.cancel" in kinds
    await gateway.settle()
    assert await unbilled(pg_pool, tenant) == 0
    session = await pg_pool.fetchrow(
        "SELECT end_reason, responses FROM realtime_sessions WHERE id = $1", row["session_id"]
    )
    assert (session["end_reason"], session["responses"]) == ("duration_cap", 1)


async def test_a_transcription_client_that_closes_right_after_speaking_gets_the_transcription_billed(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    emulator.faults = Faults(event_latency_ms=15)
    url = f"{gateway.ws_url}?intent=transcription"
    async with websockets.connect(url, additional_headers=auth(tenant)) as ws:
        await until(ws, "session.created")
        upstream = emulator.sessions[-1]
        session = {"type": "transcription", "audio": {"input": {"transcription": {"model": TRANSCRIBER}}}}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await until(ws, "session.updated")
        await speak(ws)
    # Upstream committed the turn and transcribed it (the emulator does both as the VAD ends the turn).
    async with asyncio.timeout(5):
        while not upstream.protocol.conversation.items:
            await asyncio.sleep(0.005)
    [item] = upstream.protocol.conversation.items
    deadline = time.monotonic() + 5
    while not (rows := await pg_pool.fetch("SELECT * FROM transcription_usage WHERE item_id = $1", item.id)):
        assert time.monotonic() < deadline, "the transcription upstream made has no ledger row"
        await asyncio.sleep(0.02)
    [row] = rows
    completed = "conversation.item.input_audio_transcription.completed"
    [event] = [e for e in upstream.server_events if e["type"] == completed]
    assert event["item_id"] == item.id
    assert (row["model"], row["cost_micro_usd"]) == (TRANSCRIBER, price_transcription(event["usage"]))
    await gateway.settle()
    assert await unbilled(pg_pool, tenant) == 0


async def test_an_upstream_lost_mid_response_is_recorded_as_unbilled_not_silently_dropped(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # Upstream vanishes while a response streams: its usage can never come, and OpenAI may still
    # bill what it generated. The ledger cannot have a row; the audit trail must say so.
    ws, response_id = await streaming_response(gateway.ws_url, emulator, tenant)
    await emulator.drop_all()
    with pytest.raises(ConnectionClosed):
        await until(ws, "response.done")
    assert ws.close_code == 1014
    await gateway.settle()
    detail = await pg_pool.fetchval(
        "SELECT detail FROM audit_log WHERE tenant_id = $1 AND action = 'response_unbilled'", tenant.tenant_id
    )
    assert detail is not None and response_id in json.loads(detail)["response_ids"]
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE response_id = $1", response_id) == 0
