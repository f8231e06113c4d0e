"""What the Realtime emulator promises beyond event shapes: usage numbers, faults, auth, limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from emulator import EmulatorConfig, RateLimits, RealtimeEmulator
from emulator.audio import AudioFormat, silence, tone
from emulator.client import RealtimeClient
from emulator.usage import plan_output, produced, reply_for, text_tokens

KEY = "sk-emulator"
# Its reply streams in ~150 audio steps: ample time to interrupt it with 2 ms per event.
LONG_TEXT = "tell me more about the sea " * 10
NO_VAD = {"audio": {"input": {"turn_detection": None}}}


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    """A private emulator per test (the suite-wide `emulator` fixture is shared)."""
    emulator = RealtimeEmulator(EmulatorConfig(api_key=KEY))
    await emulator.start()
    yield emulator
    await emulator.stop()


async def connect(emu: RealtimeEmulator, query: str = "model=gpt-realtime", **session: Any) -> RealtimeClient:
    client = await RealtimeClient.connect(f"{emu.ws_url}?{query}", api_key=KEY)
    await client.wait_for("session.created")
    if session:
        await client.send("session.update", session={"type": "realtime", **session})
        await client.wait_for("session.updated")
    return client


async def text_turn(client: RealtimeClient, text: str, **response: Any) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send("conversation.item.create", item=item)
    await client.send("response.create", response=response)
    done = await client.wait_for("response.done")
    return dict(done["response"])


def refused(exc: pytest.ExceptionInfo[InvalidStatus]) -> tuple[int, dict[str, Any]]:
    response = exc.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def read_until_closed(client: RealtimeClient) -> None:
    while True:
        await client.next_event()


# --- usage ---------------------------------------------------------------------------------


async def test_user_audio_costs_one_token_per_started_100_ms(emu: RealtimeEmulator) -> None:
    async with await connect(emu, instructions="", **NO_VAD) as client:
        await client.append_audio(tone(1234))
        await client.send("input_audio_buffer.commit")
        await client.send("response.create")
        usage = (await client.wait_for("response.done"))["response"]["usage"]
    reply = "I heard 1234 milliseconds of audio."
    assert reply == reply_for({"audio_ms": 1234})
    assert usage["input_token_details"]["audio_tokens"] == 13
    assert usage["input_token_details"]["text_tokens"] == 0
    assert usage["output_token_details"] == {"text_tokens": 9, "audio_tokens": 35}  # 35 chars x 50 ms / 50 ms
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (13, 44, 57)


async def test_g711_audio_is_timed_at_8_khz(emu: RealtimeEmulator) -> None:
    pcmu = AudioFormat("audio/pcmu", 8000)
    session = {"instructions": "", "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}}}
    async with await connect(emu, **session) as client:
        await client.append_audio(tone(1000, pcmu))
        await client.send("input_audio_buffer.commit")
        await client.send("response.create")
        usage = (await client.wait_for("response.done"))["response"]["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 10


async def test_input_grows_turn_by_turn_and_the_repeated_prefix_is_cached(emu: RealtimeEmulator) -> None:
    instructions = "x" * 400  # 100 tokens
    async with await connect(emu, instructions=instructions) as client:
        first = (await text_turn(client, "hello"))["usage"]
        second = (await text_turn(client, "again"))["usage"]
    assert first["input_tokens"] == 100 + text_tokens("hello") == 102
    assert first["input_token_details"]["cached_tokens"] == 0
    # instructions + "hello" + the spoken reply "You said: hello" (750 ms heard back = 8 tokens) + "again"
    assert second["input_token_details"]["text_tokens"] == 104
    assert second["input_token_details"]["audio_tokens"] == 8
    assert second["input_tokens"] == 112
    # The first context (102 tokens) is repeated; rounded down to 64.
    assert second["input_token_details"]["cached_tokens"] == 64
    assert second["input_token_details"]["cached_tokens_details"] == {
        "text_tokens": 64,
        "audio_tokens": 0,
        "image_tokens": 0,
    }
    assert second["total_tokens"] == second["input_tokens"] + second["output_tokens"]


async def test_changing_instructions_breaks_the_cache(emu: RealtimeEmulator) -> None:
    async with await connect(emu, instructions="y" * 400) as client:
        await text_turn(client, "hello")
        usage = (await text_turn(client, "again", instructions="z" * 400))["usage"]
    assert usage["input_token_details"]["cached_tokens"] == 0


async def test_output_is_cut_at_max_output_tokens(emu: RealtimeEmulator) -> None:
    async with await connect(emu) as client:
        response = await text_turn(client, "hello world how are you", max_output_tokens=10)
    plan = plan_output("You said: hello world how are you", audio=True, max_output_tokens=10)
    assert (plan.text, plan.truncated, plan.tokens) == ("You said", True, 10)
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["transcript"] == "You said"
    assert response["output"][0]["status"] == "incomplete"
    assert response["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 8}


async def test_session_max_output_tokens_applies_to_every_response(emu: RealtimeEmulator) -> None:
    async with await connect(emu, max_output_tokens=5, output_modalities=["text"]) as client:
        first = await text_turn(client, "hello world how are you")
        second = await text_turn(client, "hello world how are you")
    for response in (first, second):
        assert response["status"] == "incomplete"
        assert response["output"][0]["content"][0]["text"] == "You said: hello worl"  # 20 bytes = 5 tokens
        assert response["usage"]["output_token_details"] == {"text_tokens": 5, "audio_tokens": 0}


async def test_a_cancelled_response_bills_what_was_spoken(emu: RealtimeEmulator) -> None:
    emu.faults.event_latency_ms = 2
    async with await connect(emu) as client:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": LONG_TEXT}]}
        await client.send("conversation.item.create", item=item)
        await client.send("response.create")
        await client.wait_for("response.output_audio.delta")
        await client.send("response.cancel")
        response = (await client.wait_for("response.done"))["response"]
    spoken = response["output"][0]["content"][0]["transcript"]
    assert f"You said: {LONG_TEXT}".startswith(spoken)
    assert spoken != f"You said: {LONG_TEXT}"
    expected = produced(spoken, audio=True)
    assert response["usage"]["output_token_details"] == {
        "text_tokens": expected.text_tokens,
        "audio_tokens": expected.audio_tokens,
    }


async def test_input_transcription_usage(emu: RealtimeEmulator) -> None:
    usages = []
    for model in ("whisper-1", "gpt-4o-mini-transcribe"):
        audio_input = {"turn_detection": None, "transcription": {"model": model}}
        async with await connect(emu, audio={"input": audio_input}) as client:
            await client.append_audio(tone(1000))
            await client.send("input_audio_buffer.commit")
            event = await client.wait_for("conversation.item.input_audio_transcription.completed")
            usages.append(event["usage"])
    assert usages[0] == {"type": "duration", "seconds": 1.0}
    # "Emulated speech of 1000 milliseconds." is 37 bytes = 10 tokens; 1000 ms heard = 10 tokens.
    assert usages[1] == {
        "type": "tokens",
        "input_tokens": 10,
        "output_tokens": 10,
        "total_tokens": 20,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
    }


# --- turn detection ---------------------------------------------------------------------------


async def test_server_vad_commits_from_prefix_padding_to_the_end_of_silence(emu: RealtimeEmulator) -> None:
    async with await connect(emu, instructions="") as client:
        await client.append_audio(silence(1000) + tone(800) + silence(700))
        started = await client.wait_for("input_audio_buffer.speech_started")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        usage = (await client.wait_for("response.done"))["response"]["usage"]
    assert started["audio_start_ms"] == 1000
    assert stopped["audio_end_ms"] == 1000 + 800 + 500
    assert started["item_id"] == stopped["item_id"]
    assert usage["input_token_details"]["audio_tokens"] == 16  # 700 ms .. 2300 ms


async def test_speech_during_a_response_cancels_it(emu: RealtimeEmulator) -> None:
    emu.faults.event_latency_ms = 2
    async with await connect(emu) as client:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": LONG_TEXT}]}
        await client.send("conversation.item.create", item=item)
        await client.send("response.create")
        await client.wait_for("response.output_audio.delta")
        await client.append_audio(tone(200))
        done = await client.wait_for("response.done")
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_type"), [(503, "server_error"), (500, "server_error"), (429, "requests")])
async def test_connect_status_refuses_before_the_upgrade(emu: RealtimeEmulator, status: int, error_type: str) -> None:
    emu.faults.connect_status = status
    emu.faults.retry_after_s = 7
    with pytest.raises(InvalidStatus) as exc:
        await RealtimeClient.connect(emu.ws_url, api_key=KEY)
    code, body = refused(exc)
    assert code == status
    assert body["error"]["type"] == error_type
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert exc.value.response.headers.get("retry-after") == ("7" if status == 429 else None)
    assert emu.sessions == []
    assert emu.refused[0]["status"] == status
    emu.faults.connect_status = None
    async with await connect(emu):
        pass


async def test_connect_delay(emu: RealtimeEmulator) -> None:
    emu.faults.connect_delay_s = 0.2
    began = time.monotonic()
    async with await connect(emu):
        assert time.monotonic() - began >= 0.2


async def test_drop_after_server_events_aborts_without_a_close_frame(emu: RealtimeEmulator) -> None:
    emu.faults.drop_after_server_events = 3
    async with await connect(emu) as client:  # session.created
        await client.send("session.update", session={"type": "realtime"})
        with pytest.raises(ConnectionClosedError) as exc:
            await read_until_closed(client)
    assert exc.value.rcvd is None
    assert [e["type"] for e in client.events] == ["session.created", "conversation.created", "session.updated"]
    assert await emu.sessions[0].wait_closed(2)
    assert emu.sessions[0].dropped


async def test_drop_all_aborts_every_live_connection(emu: RealtimeEmulator) -> None:
    clients = [await connect(emu) for _ in range(2)]
    await emu.drop_all()
    for client in clients:
        with pytest.raises(ConnectionClosedError) as exc:
            await read_until_closed(client)
        assert exc.value.rcvd is None
    assert all(s.closed and s.dropped for s in emu.sessions)


async def test_event_latency_delays_every_event(emu: RealtimeEmulator) -> None:
    emu.faults.event_latency_ms = 60
    began = time.monotonic()
    async with await connect(emu) as client:
        await client.wait_for("conversation.created")
    assert time.monotonic() - began >= 0.12


# --- handshake --------------------------------------------------------------------------------


async def test_a_missing_or_wrong_key_is_refused_with_401(emu: RealtimeEmulator) -> None:
    with pytest.raises(InvalidStatus) as missing:
        await RealtimeClient.connect(emu.ws_url)
    with pytest.raises(InvalidStatus) as wrong:
        await RealtimeClient.connect(emu.ws_url, api_key="sk-wrong-key")
    assert refused(missing)[0] == 401
    status, body = refused(wrong)
    assert (status, body["error"]["code"], body["error"]["type"]) == (401, "invalid_api_key", "invalid_request_error")


async def test_browser_subprotocol_auth_is_answered_with_realtime_only(emu: RealtimeEmulator) -> None:
    offered = ["realtime", f"openai-insecure-api-key.{KEY}"]
    async with await RealtimeClient.connect(f"{emu.ws_url}?model=gpt-realtime", subprotocols=offered) as client:
        assert client.connection.subprotocol == "realtime"
        await client.wait_for("session.created")


async def test_without_a_configured_key_any_key_is_accepted() -> None:
    async with (
        RealtimeEmulator(EmulatorConfig(api_key=None)) as emulator,
        await RealtimeClient.connect(emulator.ws_url, api_key="sk-anything") as client,
    ):
        await client.wait_for("session.created")


@pytest.mark.parametrize(
    ("query", "headers"),
    [("intent=translation", {}), ("model=gpt-realtime", {"OpenAI-Beta": "realtime=v1"})],
)
async def test_unsupported_handshakes_are_refused_with_400(
    emu: RealtimeEmulator, query: str, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as exc:
        await RealtimeClient.connect(f"{emu.ws_url}?{query}", api_key=KEY, headers=headers)
    assert refused(exc)[0] == 400


async def test_the_session_record_keeps_the_handshake_and_both_directions(emu: RealtimeEmulator) -> None:
    url = f"{emu.ws_url}?model=gpt-realtime-mini"
    async with await RealtimeClient.connect(url, api_key=KEY, headers={"X-Tenant": "acme"}) as client:
        created = await client.wait_for("session.created")
        await client.send("session.update", session={"type": "realtime", "instructions": "Hi"})
        await client.wait_for("session.updated")
    session = emu.sessions[0]
    assert await session.wait_closed(2)
    assert session.id == created["session"]["id"]
    assert session.id.startswith("sess_")
    assert created["session"]["model"] == "gpt-realtime-mini" == session.model
    assert session.headers["authorization"] == f"Bearer {KEY}"
    assert session.headers["x-tenant"] == "acme"
    assert session.query == {"model": "gpt-realtime-mini"}
    assert [e["type"] for e in session.client_events] == ["session.update"]
    assert [e["type"] for e in session.server_events] == ["session.created", "conversation.created", "session.updated"]


async def test_the_model_is_fixed_once_chosen(emu: RealtimeEmulator) -> None:
    async with await connect(emu) as client:
        await client.send("session.update", session={"type": "realtime", "model": "gpt-realtime-2"})
        assert (await client.wait_for("error"))["error"]["param"] == "session.model"
    async with await connect(emu, query="") as client:
        assert client.events[0]["session"]["model"] == "gpt-realtime"
        await client.send("session.update", session={"type": "realtime", "model": "gpt-realtime-2"})
        assert (await client.wait_for("session.updated"))["session"]["model"] == "gpt-realtime-2"


async def test_stop_closes_live_sessions_with_1001() -> None:
    emulator = RealtimeEmulator(EmulatorConfig(api_key=KEY))
    await emulator.start()
    client = await connect(emulator)
    await emulator.stop()
    await asyncio.wait_for(client.connection.wait_closed(), 2)
    assert client.connection.close_code == 1001


# --- rate limits ---------------------------------------------------------------------------


class SteppedClock:
    """The emulator's rate-limit clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rate_limits_report_the_tokens_left(emu: RealtimeEmulator) -> None:
    emu.rate_limits = RateLimits(clock=SteppedClock())  # frozen: nothing flows back during the test
    emu.rate_limits.tokens_remaining = 500
    async with await connect(emu) as client:
        first = await text_turn(client, "hello")
        second = await text_turn(client, "again")
    limits = [
        {e["name"]: (e["limit"], e["remaining"]) for e in event["rate_limits"]}
        for event in client.of_type("rate_limits.updated")
    ]
    assert limits[0] == {"requests": (1000, 999), "tokens": (50_000, 500)}
    assert limits[1] == {"requests": (1000, 998), "tokens": (50_000, 500 - first["usage"]["total_tokens"])}
    assert emu.rate_limits.tokens_remaining == (500 - first["usage"]["total_tokens"] - second["usage"]["total_tokens"])


def test_taken_requests_and_tokens_flow_back_over_the_minute() -> None:
    clock = SteppedClock()
    limits = RateLimits(requests_limit=600, tokens_limit=60_000, clock=clock)  # 10 requests, 1000 tokens a second
    assert limits.start_response() == [
        {"name": "requests", "limit": 600, "remaining": 599, "reset_seconds": 0.1},
        {"name": "tokens", "limit": 60_000, "remaining": 60_000, "reset_seconds": 0.0},
    ]
    limits.finish_response(30_000)
    clock.now += 10.0  # 10_000 tokens back, and the request
    assert limits.start_response() == [
        {"name": "requests", "limit": 600, "remaining": 599, "reset_seconds": 0.1},
        {"name": "tokens", "limit": 60_000, "remaining": 40_000, "reset_seconds": 20.0},
    ]
    clock.now += 60.0
    assert limits.tokens_remaining == 60_000  # never more than the limit
    limits.finish_response(90_000)  # more than is left: none left, not a debt
    assert limits.tokens_remaining == 0
    clock.now += 0.5
    assert limits.tokens_remaining == 500
    limits.tokens_remaining = 7  # a test pins the level: it holds until the clock moves
    assert limits.tokens_remaining == 7


async def test_a_session_sees_its_tokens_come_back(emu: RealtimeEmulator) -> None:
    clock = SteppedClock()
    emu.rate_limits = RateLimits(tokens_limit=60_000, clock=clock)  # 1000 tokens a second flow back
    emu.rate_limits.tokens_remaining = 500
    async with await connect(emu) as client:
        first = await text_turn(client, "hello")
        clock.now += 3.0
        await text_turn(client, "again")
    tokens = [
        next((e["remaining"], e["reset_seconds"]) for e in event["rate_limits"] if e["name"] == "tokens")
        for event in client.of_type("rate_limits.updated")
    ]
    left = 500 - first["usage"]["total_tokens"] + 3_000
    assert tokens == [(500, 59.5), (left, (60_000 - left) / 1000)]


def test_text_costs_one_token_per_started_4_utf8_bytes() -> None:
    assert [text_tokens(s) for s in ("", "a", "abcd", "abcde", "é")] == [0, 1, 1, 2, 1]
