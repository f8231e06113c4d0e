"""Every event the Realtime emulator sends validates against the openai and openai-agents SDKs.

Each flow drives one feature with a raw WebSocket client; every server event the emulator
wrote is then validated against `openai.types.realtime.RealtimeServerEvent` and the
openai-agents server-event adapter. One more test checks that the flows together cover
every event type the emulator can emit, and two turns run through the real SDKs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.audio import silence, tone
from emulator.client import RealtimeClient
from emulator.event_types import SERVER_EVENTS

KEY = "sk-emulator"
OPENAI_ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}

Factory = Callable[..., Awaitable[RealtimeEmulator]]


def agents_adapter() -> TypeAdapter[Any]:
    from agents.realtime.openai_realtime import get_server_event_type_adapter

    return get_server_event_type_adapter()


def validate_all(emulator: RealtimeEmulator) -> set[str]:
    """Validate every event every session was sent against both SDKs; return the types seen."""
    seen: set[str] = set()
    agents = agents_adapter()
    for session in emulator.sessions:
        for event in session.server_events:
            OPENAI_ADAPTER.validate_python(event)
            agents.validate_python(event)
            seen.add(event["type"])
    return seen


@pytest.fixture
async def make_emulator() -> AsyncIterator[Factory]:
    started: list[RealtimeEmulator] = []

    async def make(**config: Any) -> RealtimeEmulator:
        emulator = RealtimeEmulator(EmulatorConfig(api_key=KEY, **config))
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    await asyncio.gather(*(emulator.stop() for emulator in started))


async def connect(emulator: RealtimeEmulator, query: str = "model=gpt-realtime") -> RealtimeClient:
    client = await RealtimeClient.connect(f"{emulator.ws_url}?{query}", api_key=KEY)
    await client.wait_for("session.created")
    return client


async def user_text(client: RealtimeClient, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send("conversation.item.create", item=item)
    await client.wait_for("conversation.item.done")


# --- flows --------------------------------------------------------------------------------


async def flow_audio_turn_with_vad(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await client.append_audio(tone(800) + silence(600))
        await client.wait_for("input_audio_buffer.speech_stopped")
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert client.of_type("input_audio_buffer.committed")
        assert client.of_type("response.output_audio.delta")
    return emulator


async def flow_manual_commit(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await client.send("session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await client.wait_for("session.updated")
        await client.append_audio(tone(500))
        await client.send("input_audio_buffer.commit")
        await client.wait_for("input_audio_buffer.committed")
        await client.send("response.create")
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
        await client.append_audio(tone(300))
        await client.send("input_audio_buffer.clear")
        await client.wait_for("input_audio_buffer.cleared")
    return emulator


async def flow_manual_commit_starts_response_with_vad(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await client.append_audio(tone(400))  # still "speaking": the VAD has not stopped yet
        await client.send("input_audio_buffer.commit")
        await client.wait_for("input_audio_buffer.committed")
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    return emulator


async def flow_text_turn_and_item_operations(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await user_text(client, "What's the weather in Paris?")
        await client.send("response.create", response={"metadata": {"turn": "1"}})
        done = await client.wait_for("response.done")
        assistant = done["response"]["output"][0]
        await client.send("conversation.item.retrieve", item_id=assistant["id"])
        await client.wait_for("conversation.item.retrieved")
        await client.send("conversation.item.truncate", item_id=assistant["id"], content_index=0, audio_end_ms=200)
        await client.wait_for("conversation.item.truncated")
        await client.send("conversation.item.delete", item_id=assistant["id"])
        await client.wait_for("conversation.item.deleted")
    return emulator


async def flow_text_only_and_out_of_band(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await client.send("session.update", session={"type": "realtime", "output_modalities": ["text"]})
        await client.wait_for("session.updated")
        await user_text(client, "Say hi")
        await client.send("response.create")
        done = await client.wait_for("response.done")
        assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": "You said: Say hi"}
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Classify"}]}
        await client.send(
            "response.create",
            response={"conversation": "none", "input": [item], "metadata": {"topic": "classification"}},
        )
        done = await client.wait_for("response.done")
        assert done["response"]["conversation_id"] is None
    return emulator


async def flow_cancel(make: Factory) -> RealtimeEmulator:
    emulator = await make(event_latency_ms=2)
    async with await connect(emulator) as client:
        await user_text(client, "Tell me a long story about the sea and the wind and the sky. " * 5)
        await client.send("response.create")
        await client.wait_for("response.output_audio.delta")
        await client.send("response.cancel")
        done = await client.wait_for("response.done")
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        await client.send("response.cancel", event_id="evt_cancel_again")
        error = await client.wait_for("error")
        assert error["error"]["code"] == "response_cancel_not_active"
    return emulator


async def flow_max_output_tokens(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await user_text(client, "Explain everything")
        await client.send("response.create", response={"max_output_tokens": 6})
        done = await client.wait_for("response.done")
        assert done["response"]["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    return emulator


async def flow_function_call(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        await client.send("session.update", session={"type": "realtime", "tools": [WEATHER_TOOL]})
        await client.wait_for("session.updated")
        await user_text(client, "Please call get_weather for Paris")
        await client.send("response.create")
        call = (await client.wait_for("response.done"))["response"]["output"][0]
        assert (call["type"], call["name"], call["arguments"]) == ("function_call", "get_weather", "{}")
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 18}'}
        await client.send("conversation.item.create", item=output)
        await client.send("response.create")
        reply = (await client.wait_for("response.done"))["response"]["output"][0]
        assert reply["content"][0]["transcript"] == 'The tool returned: {"temp_c": 18}'
    return emulator


async def flow_transcription_session(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator, "intent=transcription") as client:
        transcription = {"model": "gpt-4o-transcribe", "language": "en"}
        await client.send(
            "session.update", session={"type": "transcription", "audio": {"input": {"transcription": transcription}}}
        )
        await client.wait_for("session.updated")
        await client.append_audio(tone(700) + silence(600))
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["usage"]["type"] == "tokens"
        await client.send("response.create")
        await client.wait_for("error")
        assert not client.of_type("response.created")
    return emulator


async def flow_input_transcription(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    for model, usage_type in (("whisper-1", "duration"), ("gpt-4o-mini-transcribe", "tokens")):
        async with await connect(emulator) as client:
            audio_input = {"turn_detection": None, "transcription": {"model": model}}
            await client.send("session.update", session={"type": "realtime", "audio": {"input": audio_input}})
            await client.wait_for("session.updated")
            await client.append_audio(tone(1000))
            await client.send("input_audio_buffer.commit")
            completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
            assert completed["usage"]["type"] == usage_type
            done = await client.wait_for("conversation.item.done")
            assert done["item"]["content"][0]["transcript"] == completed["transcript"]
    return emulator


async def flow_errors(make: Factory) -> RealtimeEmulator:
    emulator = await make(event_latency_ms=1)
    async with await connect(emulator) as client:
        await client.send_raw("{not json")
        await client.send("no.such.event")
        await client.send("session.update", session={"model": "gpt-realtime"})
        await client.send("conversation.item.create")
        await client.send("input_audio_buffer.append", audio="***not base64***")
        await client.send("input_audio_buffer.commit")
        await client.connection.send(b"\x00\x01")
        codes = [(await client.wait_for("error"))["error"]["code"] for _ in range(7)]
        assert codes == [
            "invalid_json",
            "invalid_value",
            "missing_required_parameter",
            "missing_required_parameter",
            "invalid_value",
            "input_audio_buffer_commit_empty",
            "invalid_value",
        ]
        await user_text(client, "One long answer please, with many many words in it. " * 5)
        await client.send("response.create")
        await client.send("response.create")
        error = await client.wait_for("error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        await client.send("response.cancel")
        await client.wait_for("response.done")
        await client.send("session.update", session={"type": "realtime", "instructions": "Still open."})
        await client.wait_for("session.updated")
    return emulator


async def flow_session_expired(make: Factory) -> RealtimeEmulator:
    emulator = await make(max_session_seconds=0.3)
    async with await connect(emulator) as client:
        error = await client.wait_for("error", timeout=3)
        assert error["error"]["code"] == "session_expired"
        assert error["error"]["message"] == "Your session hit the maximum duration of 0.3 seconds."
        await client.connection.wait_closed()
        assert client.connection.close_code == 1000
    return emulator


async def flow_voice_change_refused(make: Factory) -> RealtimeEmulator:
    emulator = await make()
    async with await connect(emulator) as client:
        voice = {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}
        await client.send("session.update", session=voice)  # no audio yet: allowed
        assert (await client.wait_for("session.updated"))["session"]["audio"]["output"]["voice"] == "cedar"
        await user_text(client, "Hi")
        await client.send("response.create")
        await client.wait_for("response.done")
        voice["audio"]["output"]["voice"] = "marin"
        await client.send("session.update", session=voice, event_id="evt_voice")
        error = (await client.wait_for("error"))["error"]
        assert (error["type"], error["code"], error["event_id"]) == (
            "invalid_request_error",
            "invalid_value",
            "evt_voice",
        )
    return emulator


FLOWS = [
    flow_audio_turn_with_vad,
    flow_manual_commit,
    flow_manual_commit_starts_response_with_vad,
    flow_text_turn_and_item_operations,
    flow_text_only_and_out_of_band,
    flow_cancel,
    flow_max_output_tokens,
    flow_function_call,
    flow_transcription_session,
    flow_input_transcription,
    flow_errors,
    flow_session_expired,
    flow_voice_change_refused,
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__.removeprefix("flow_"))
async def test_every_event_of_the_flow_validates_against_both_sdks(make_emulator: Factory, flow: Any) -> None:
    emulator = await flow(make_emulator)
    assert validate_all(emulator)


async def test_flows_together_emit_every_event_type_the_emulator_can_send(make_emulator: Factory) -> None:
    seen: set[str] = set()
    for flow in FLOWS:
        seen |= validate_all(await flow(make_emulator))
    assert seen == SERVER_EVENTS


async def test_a_turn_through_the_openai_sdk(make_emulator: Factory) -> None:
    emulator = await make_emulator()
    client = AsyncOpenAI(base_url=emulator.base_url, api_key=KEY)
    try:
        async with client.realtime.connect(model="gpt-realtime") as connection:
            await connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
            await connection.conversation.item.create(item=item)  # type: ignore[arg-type]
            await connection.response.create()
            types = []
            async for event in connection:
                types.append(event.type)
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    assert event.response.usage is not None
                    assert event.response.usage.total_tokens
                    break
    finally:
        await client.close()
    assert "error" not in types
    assert "response.output_audio.delta" in types
    validate_all(emulator)


async def test_a_turn_through_openai_agents(make_emulator: Factory) -> None:
    from agents import set_tracing_disabled
    from agents.realtime import RealtimeAgent, RealtimeRunner

    set_tracing_disabled(True)
    emulator = await make_emulator()
    runner = RealtimeRunner(RealtimeAgent(name="assistant", instructions="Be brief."))
    session = await runner.run(
        model_config={
            "url": f"{emulator.ws_url}?model=gpt-realtime",
            "api_key": KEY,
            "initial_model_settings": {"model_name": "gpt-realtime"},
        }
    )
    errors: list[Any] = []
    transcripts: list[str] = []
    async with session:
        await session.send_message("Hello agent")
        async with asyncio.timeout(10):
            async for event in session:
                if event.type == "error" or (event.type == "raw_model_event" and event.data.type == "error"):
                    errors.append(event)
                if event.type == "agent_end":
                    break
                raw = (
                    event.data.data if event.type == "raw_model_event" and event.data.type == "raw_server_event" else {}
                )
                if raw.get("type") == "response.output_audio_transcript.done":
                    transcripts.append(raw["transcript"])
    assert errors == []
    assert transcripts == ["You said: Hello agent"]
    sent = [json.dumps(e) for e in emulator.sessions[0].client_events]
    assert any('"session.update"' in s for s in sent)
    validate_all(emulator)
