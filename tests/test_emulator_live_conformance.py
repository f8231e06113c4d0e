"""Every GPT-Live event the emulator sends validates against the openai SDK's Live types.

Each flow drives one feature over raw sockets (the payloads are the reference examples in
tests/fixtures/live-examples.json where one exists); every event every socket was sent is
then validated against `ServerEvent` / `ForkServerEvent` (primary, fork) or
`ConnectServerEvent` (sidebands), with no undeclared keys, and a `response.event`'s nested
event against `ResponseStreamEvent`. One more test checks the flows cover every type.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.audio import AudioFormat, silence, tone
from emulator.client import RealtimeClient
from emulator.live.events import LIVE_SERVER_EVENTS
from tests.support.live_conformance import EXAMPLES, validate_live
from tests.support.webrtc_client import ClientPeer

KEY = "sk-emulator"
CLIENT = EXAMPLES["live_client_events"]
SIDEBAND = EXAMPLES["live_sideband_client_events"]
QUESTIONS = [
    {"type": "predicate", "name": "wants_human", "instructions": "Does the caller ask for a human?"},
    {
        "type": "choice",
        "name": "topic",
        "instructions": "Topic?",
        "choices": [{"value": "billing"}, {"value": "other"}],
    },
    {"type": "score", "name": "mood", "instructions": "Mood?", "levels": [{"label": "calm"}, {"label": "angry"}]},
]


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY, live_usage_interval_s=0.25)) as emulator:
        yield emulator


def ws_url(emulator: RealtimeEmulator, path: str = "") -> str:
    return emulator.base_url.replace("http://", "ws://", 1) + "/live/sessions" + path


def speech(ms: int = 800, fmt: AudioFormat | None = None) -> str:
    return base64.b64encode(tone(ms, fmt) + silence(600, fmt)).decode()


async def started(emulator: RealtimeEmulator, start: dict[str, Any], path: str = "") -> RealtimeClient:
    client = await RealtimeClient.connect(ws_url(emulator, path), api_key=KEY)
    await client.send_raw(json.dumps(start))
    await client.wait_for("session.started")
    return client


async def close(client: RealtimeClient) -> dict[str, Any]:
    await client.send("session.close", event_id="evt_close")
    closed = await client.wait_for("session.closed")
    await client.connection.wait_closed()
    return closed


# --- flows --------------------------------------------------------------------------------


async def flow_delegated_turns(emulator: RealtimeEmulator) -> None:
    client = await started(emulator, CLIENT["session.start"])
    await client.send("session.input_audio.append", audio=speech())
    done = await client.wait_for("response.event", where=lambda e: e["event"]["type"] == "response.completed")
    assert done["event"]["response"]["model"] == "gpt-5.5"
    assert done["event"]["response"]["service_tier"] == "priority"
    await client.wait_for("session.output_audio.delta")
    for name in (
        "session.update.delegation",
        "session.input_audio.mute",
        "session.instructions.append",
        "session.thinking.append",
        "session.commentary.append",
        "session.output_audio.fixture.play",
        "response.item.create.function_call_output",
        "response.create",
    ):
        await client.send_raw(json.dumps(CLIENT[name]))
    terminal = await client.wait_for(
        "response.event", where=lambda e: e["event"]["type"] in ("response.completed", "response.incomplete")
    )
    assert terminal["event"]["response"]["model"] == "gpt-5.6-terra"  # the update took effect
    await client.send("session.input_audio.unmute")
    await client.wait_for("session.input_audio.unmuted")
    assert not client.of_type("error")
    await close(client)


async def flow_pcm16k_and_incomplete(emulator: RealtimeEmulator) -> None:
    start = copy.deepcopy(CLIENT["session.start"])
    start["session"]["audio"]["format"] = {"type": "audio/pcm", "rate": 16000}
    start["session"]["delegation"]["responses"]["max_output_tokens"] = 8
    client = await started(emulator, start)
    await client.send("session.input_audio.append", audio=speech(fmt=AudioFormat("audio/pcm", 16000)))
    event = await client.wait_for("response.event", where=lambda e: e["event"]["type"] == "response.incomplete")
    assert event["event"]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert event["event"]["response"]["usage"]["output_tokens"] == 8
    await close(client)


async def flow_failed_response(emulator: RealtimeEmulator) -> None:
    emulator.faults.live_response_fails = True
    client = await started(emulator, CLIENT["session.start"])
    emulator.faults.live_response_fails = False  # read when the session is created
    await client.send("response.create")
    failed = await client.wait_for("response.event", where=lambda e: e["event"]["type"] == "response.failed")
    assert failed["event"]["response"]["usage"]["output_tokens"] == 0
    await close(client)


async def flow_decisions(emulator: RealtimeEmulator) -> None:
    triggers = [
        {"type": "decisions", "event_type": "session.input_transcript.delta", "decisions": {"questions": QUESTIONS}}
    ]
    delegation = {"type": "decisions", "decisions": {"model": "gpt-6-luna", "questions": QUESTIONS}}
    start = {
        "type": "session.start",
        "session": {"model": "gpt-live-1", "delegation": delegation, "triggers": triggers},
    }
    client = await started(emulator, start)
    await client.send("decision.create", event_id="evt_dc_1")
    event = await client.wait_for("decision.event")
    assert event["event"]["decision"]["model"] == "gpt-6-luna"
    item = {"type": "message", "role": "user", "content": "I want a human."}
    await client.send("decision.item.create", item=item)
    created = await client.wait_for("decision.item.created")
    await client.send("decision.item.delete", item_id=created["item"]["id"])
    await client.wait_for("decision.item.deleted")
    await client.send("session.input_audio.append", audio=speech())
    triggered = await client.wait_for("decision.event", where=lambda e: e.get("trigger_id") is not None)
    assert triggered["source_event_type"] == "session.input_transcript.delta"
    await close(client)


async def flow_errors(emulator: RealtimeEmulator) -> None:
    async with await RealtimeClient.connect(ws_url(emulator), api_key=KEY) as client:
        await client.send("session.update", session={}, event_id="evt_early")
        await client.send("session.start", session={"model": "gpt-live-1", "voice": "marin"})
        await client.send("session.start", session={"model": "gpt-realtime"})
        await client.send_raw("{not json")
        codes = [(await client.wait_for("error"))["error"]["code"] for _ in range(4)]
        assert codes == ["session_not_started", "unknown_parameter", "model_not_found", "invalid_json"]
        await client.send_raw(json.dumps(CLIENT["session.start.client_delegation_minimal"]))
        await client.wait_for("session.started")
        await client.send_raw(json.dumps(CLIENT["response.item.create.function_call_output"]))
        error = await client.wait_for("error")
        expected = copy.deepcopy(EXAMPLES["live_server_events"]["error"])
        error.pop("event_id"), expected.pop("event_id")
        assert error == expected  # exactly the reference's error event
        await client.send("session.start", session={"model": "gpt-live-1"})
        assert (await client.wait_for("error"))["error"]["code"] == "session_already_started"
        await close(client)


async def flow_usage_cadence(emulator: RealtimeEmulator) -> None:
    client = await started(emulator, CLIENT["session.start.client_delegation_minimal"])
    updates = [await client.wait_for("session.usage.updated", timeout=3) for _ in range(3)]
    closed = await close(client)
    seconds = [u["usage"]["seconds"] for u in updates] + [closed["usage"]["seconds"]]
    assert seconds == sorted(seconds)  # cumulative: never decreasing


async def flow_sideband_fork_and_sip(emulator: RealtimeEmulator) -> None:
    start = copy.deepcopy(CLIENT["session.start"])
    start["session"]["store"] = True
    primary = await started(emulator, start)
    session_id = emulator.live.sessions[-1].id
    sideband = await RealtimeClient.connect(ws_url(emulator, f"/{session_id}/attach?graceful_close=true"), api_key=KEY)
    await sideband.send_raw(json.dumps(SIDEBAND["session.update"]))
    await sideband.wait_for("session.updated")
    await primary.send("session.input_audio.append", audio=speech())
    await sideband.wait_for("session.input_audio.append")
    reflected = await sideband.wait_for("session.output_audio.delta")
    assert reflected["end_ms"] > reflected["start_ms"]
    fork = await started(
        emulator, EXAMPLES["live_fork_client_events"]["session.start.overrides"], f"/{session_id}/fork"
    )
    assert fork.of_type("session.started")[0]["session"]["model"] == "gpt-live-1"
    await close(fork)
    await close(primary)
    await sideband.wait_for("session.closed")
    # SIP: an inbound call accepted, a DTMF key, then hangup; an outbound call rings.
    call_id = emulator.live.ring()
    async with httpx.AsyncClient(base_url=emulator.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        accepted = await http.post(f"/live/sessions/{call_id}/accept", json=EXAMPLES["live_http"]["accept.request"])
        assert accepted.status_code == 200, accepted.text
        sip = await RealtimeClient.connect(ws_url(emulator, f"/{call_id}/attach"), api_key=KEY)
        await sip.send_raw(json.dumps(SIDEBAND["transport.dtmf.send"]))
        await sip.wait_for("transport.dtmf.sent")
        assert (await http.post(f"/live/sessions/{call_id}/hangup")).status_code == 200
        assert (await sip.wait_for("session.closed"))["reason"] == "close_requested"
        outbound = await http.post("/live/sessions", json=EXAMPLES["live_http"]["outbound_sip_create.request"])
        assert outbound.status_code == 201, outbound.text
        outbound_id = outbound.json()["session"]["id"]
        ringing = await RealtimeClient.connect(ws_url(emulator, f"/{outbound_id}/attach"), api_key=KEY)
        await ringing.wait_for("transport.answered")
        await ringing.send("session.close")
        await ringing.wait_for("session.closed")
    for client in (sideband, sip, ringing):
        await client.close()


async def flow_webrtc_pause_and_permissions(emulator: RealtimeEmulator) -> None:
    peer = ClientPeer(speech_ms=600)
    session = copy.deepcopy(EXAMPLES["live_http"]["webrtc_create.request"]["session"])
    session |= {"idle_timeout_s": 1, "wake_policy": {"type": "speech"}}
    session["client"] = {"data_channel": {"allowed_client_events": ["session.close", "session.input_audio.mute"]}}
    try:
        async with httpx.AsyncClient(base_url=emulator.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
            body = {"session": session, "transport": {"type": "webrtc", "sdp": await peer.offer()}}
            created = await http.post("/live/sessions", json=body)
            assert created.status_code == 201, created.text
        await peer.accept(created.json()["transport"]["sdp"])
        sideband = await RealtimeClient.connect(
            ws_url(emulator, f"/{created.json()['session']['id']}/attach"), api_key=KEY
        )
        await peer.wait_for("session.started")
        await peer.wait_for("info")
        peer.send("response.create", event_id="evt_blocked")
        assert (await peer.wait_for("error"))["error"]["code"] == "event_not_allowed"
        await sideband.wait_for("session.paused", timeout=10)
        update = await sideband.wait_for("session.usage.updated", where=lambda e: e["usage"]["paused_seconds"] >= 1)
        # Within the WebRTC prepaid 15 s, the unused part counts as active.
        assert update["usage"]["active_seconds"] + update["usage"]["paused_seconds"] == update["usage"]["seconds"] == 15
        peer.track.play(600)  # speech wakes it
        await sideband.wait_for("session.resumed", timeout=10)
        peer.send("session.close")
        closed = await sideband.wait_for("session.closed")
        usage = closed["usage"]
        assert usage["seconds"] == usage["active_seconds"] + usage["paused_seconds"] == 15
        assert usage["paused_seconds"] >= 1
        await sideband.close()
    finally:
        await peer.close()


FLOWS = [
    flow_delegated_turns,
    flow_pcm16k_and_incomplete,
    flow_failed_response,
    flow_decisions,
    flow_errors,
    flow_usage_cadence,
    flow_sideband_fork_and_sip,
    flow_webrtc_pause_and_permissions,
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__.removeprefix("flow_"))
async def test_every_live_event_of_the_flow_validates_against_the_sdk(emu: RealtimeEmulator, flow: Any) -> None:
    await flow(emu)
    assert validate_live(emu)


async def test_the_flows_cover_every_live_event_type_the_emulator_sends(emu: RealtimeEmulator) -> None:
    for flow in FLOWS:
        await flow(emu)
    assert validate_live(emu) == LIVE_SERVER_EVENTS
