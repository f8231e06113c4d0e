"""The real `openai` SDK's GPT-Live clients work against the emulator with only `base_url` changed.

`client.live.connect()` (WebSocket), `client.live.create()` with an aiortc peer (WebRTC; the
SDK has no `sessions.create`), `client.live.sideband.connect()`, `client.live.forks.connect()`, the session
controls (fork over WebRTC, hangup, recording download, SIP accept/reject/refer), and the
usage figures: cumulative, replacing each other, final in `session.closed`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI, NotFoundError
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.audio import silence, tone
from tests.support.live_conformance import EXAMPLES, validate_live
from tests.support.webrtc_client import ClientPeer

KEY = "sk-emulator"
START = EXAMPLES["live_client_events"]["session.start"]["session"]
WEBRTC_SESSION = EXAMPLES["live_http"]["webrtc_create.request"]["session"]


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY, live_usage_interval_s=0.2)) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: RealtimeEmulator) -> AsyncIterator[AsyncOpenAI]:
    openai = AsyncOpenAI(base_url=emu.base_url, api_key=KEY)
    yield openai
    await openai.close()


async def next_of(connection: Any, kind: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        async for event in connection:
            if event.type == kind:
                return event
    raise AssertionError(f"the connection ended before {kind}")


async def test_a_websocket_session_through_client_live_connect(emu: RealtimeEmulator, client: AsyncOpenAI) -> None:
    before_start = time.monotonic()
    async with client.live.connect() as connection:
        await connection.session.start(session=START, event_id="evt_start")
        started = await next_of(connection, "session.started")
        inside_start = time.monotonic()
        assert started.client_event_id == "evt_start"
        assert started.session.id.startswith("live_") and started.session.model == "gpt-live-1"
        audio = base64.b64encode(tone(800) + silence(600)).decode()
        await connection.session.input_audio.append(audio=audio)
        completed = await next_of(connection, "response.event")
        while completed.event["type"] != "response.completed":
            completed = await next_of(connection, "response.event")
        usage = completed.event["response"]["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        update = await next_of(connection, "session.usage.updated")
        assert update.usage.active_seconds is None  # a WebSocket session reports only `seconds`
        await asyncio.sleep(1.1)
        inside_end = time.monotonic()
        await connection.session.close(event_id="evt_close")
        closed = await next_of(connection, "session.closed")
    after_close = time.monotonic()
    assert (closed.reason, closed.client_event_id) == ("close_requested", "evt_close")
    # Whole seconds since the start, rounded down: bounded by what this test measured.
    assert math.floor(inside_end - inside_start) <= closed.usage.seconds <= math.floor(after_close - before_start)
    assert validate_live(emu)


async def test_a_webrtc_session_with_sideband_fork_recording_and_hangup(
    emu: RealtimeEmulator, client: AsyncOpenAI
) -> None:
    peer, fork_peer = ClientPeer(speech_ms=600), ClientPeer()
    session = copy.deepcopy(WEBRTC_SESSION) | {"store": True}
    try:
        created = await client.live.create(session=session, transport={"type": "webrtc", "sdp": await peer.offer()})
        await peer.accept(created.transport.sdp)
        assert (await peer.wait_for("session.started"))["session"]["id"] == created.session.id
        async with client.live.sideband.connect(session_id=created.session.id, graceful_close=True) as sideband:
            usage = await next_of(sideband, "session.usage.updated")
            assert usage.usage.seconds == usage.usage.active_seconds == 15  # the WebRTC initialisation charge
            forked = await client.live.sessions.fork(
                created.session.id, transport={"type": "webrtc", "sdp": await fork_peer.offer()}, session={}
            )
            await fork_peer.accept(forked.transport.sdp)
            assert forked.session.id != created.session.id
            assert (await fork_peer.wait_for("session.started"))["session"]["model"] == "gpt-live-1"
            recording = await client.live.sessions.download_recording(created.session.id)
            assert recording.content.startswith(b"RIFF")
            await client.live.sessions.hangup(created.session.id)
            closed = await next_of(sideband, "session.closed")
            assert closed.reason == "close_requested" and closed.usage.seconds == 15
        assert emu.live.find(created.session.id).hung_up  # type: ignore[union-attr]
        assert emu.live.find(forked.session.id).forked_from == created.session.id  # type: ignore[union-attr]
        assert emu.live.find(created.session.id).sideband_queries == [{"graceful_close": "true"}]  # type: ignore[union-attr]
    finally:
        await peer.close()
        await fork_peer.close()
    assert validate_live(emu)


async def test_a_websocket_fork_inherits_the_model(emu: RealtimeEmulator, client: AsyncOpenAI) -> None:
    async with client.live.connect() as connection:
        await connection.session.start(session=START | {"store": True})
        parent = (await next_of(connection, "session.started")).session
        async with client.live.forks.connect(session_id=parent.id) as fork:
            await fork.session.start(session={})
            started = (await next_of(fork, "session.started")).session
            assert (started.model, started.delegation.responses.model) == ("gpt-live-1", "gpt-5.5")
            assert started.id != parent.id
            await fork.session.close()
            await next_of(fork, "session.closed")
        await connection.session.close()
        await next_of(connection, "session.closed")
    assert validate_live(emu)


async def test_sip_calls_are_accepted_rejected_and_referred(emu: RealtimeEmulator, client: AsyncOpenAI) -> None:
    accepted, rejected = emu.live.ring(), emu.live.ring()
    await client.live.sessions.accept(accepted, session=EXAMPLES["live_http"]["accept.request"]["session"])
    await client.live.sessions.reject(rejected, status_code=486)
    async with client.live.sideband.connect(session_id=accepted) as sideband:
        await client.live.sessions.refer(accepted, target_uri="tel:+14155550123")
        closed = await next_of(sideband, "session.closed")
        assert closed.usage.active_seconds is not None  # SIP reports the breakdown
    assert emu.live.find(accepted).referred_to == "tel:+14155550123"  # type: ignore[union-attr]
    assert emu.live.find(rejected).rejected_with == 486  # type: ignore[union-attr]
    assert validate_live(emu)


async def test_refusals_are_openai_shaped(emu: RealtimeEmulator, client: AsyncOpenAI) -> None:
    with pytest.raises(NotFoundError) as missing:
        await client.live.sessions.hangup("live_unknown")
    assert missing.value.body["code"] == "not_found"  # type: ignore[index]
    with pytest.raises(InvalidStatus) as refused:
        async with client.live.sideband.connect(session_id="live_unknown"):
            pass
    assert refused.value.response.status_code == 404
    wrong = AsyncOpenAI(base_url=emu.base_url, api_key="sk-wrong")
    with pytest.raises(InvalidStatus) as unauthorised:
        async with wrong.live.connect():
            pass
    assert unauthorised.value.response.status_code == 401
    await wrong.close()


async def test_a_dropped_primary_gets_no_session_closed_and_sidebands_hear_connection_lost(
    emu: RealtimeEmulator, client: AsyncOpenAI
) -> None:
    emu.faults.drop_after_server_events = 3  # session.started and two usage updates
    async with client.live.connect() as connection:
        await connection.session.start(session=START)
        session_id = (await next_of(connection, "session.started")).session.id
        async with client.live.sideband.connect(session_id=session_id) as sideband:
            closed = await next_of(sideband, "session.closed")
        with pytest.raises(ConnectionClosedError):
            await next_of(connection, "session.closed")
    assert closed.reason == "connection_lost"
    session = emu.live.find(session_id)
    assert session is not None and session.dropped
    assert [e["type"] for e in session.server_events][-1] == "session.usage.updated"


async def test_a_session_past_its_duration_closes_as_expired() -> None:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY, max_session_seconds=1.2)) as emulator:
        openai = AsyncOpenAI(base_url=emulator.base_url, api_key=KEY)
        try:
            async with openai.live.connect() as connection:
                await connection.session.start(session=START)
                started = await next_of(connection, "session.started")
                closed = await next_of(connection, "session.closed", timeout=5)
        finally:
            await openai.close()
    assert closed.reason == "expired" and closed.usage.seconds == 1.0
    assert started.session.expires_at - time.time() < 2
