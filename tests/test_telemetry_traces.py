"""`voxgate serve` with an OTLP endpoint exports one span per voice session, following the GenAI
conventions, with its admission, upstream connect, responses and ledger writes as children, and
nothing secret or said in any byte it sends; its JSON log lines carry the same ids.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from tests.conftest import REDIS_URL
from tests.support.gateway_process import delete_keys, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, make_tenant
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

pytestmark = pytest.mark.e2e

SPAN_KIND_CLIENT = 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


async def spans_until(
    receiver: OtlpReceiver, done: Callable[[list[ReceivedSpan]], bool], seconds: float = 15.0
) -> list[ReceivedSpan]:
    async with asyncio.timeout(seconds):
        while True:
            spans, _ = receiver.snapshot()
            if done(spans):
                return spans
            await asyncio.sleep(0.05)


async def talk(base_url: str, secret: str, end_user: str, said: str, instructions: str) -> list[str]:
    """Two audio responses through the official SDK; returns every transcript the client got."""
    heard: list[str] = []
    async with (
        AsyncOpenAI(base_url=base_url, api_key=secret, max_retries=0) as client,
        client.realtime.connect(model="gpt-realtime", extra_headers={"X-Voxgate-End-User": end_user}) as conn,
    ):
        await conn.session.update(session={"type": "realtime", "instructions": instructions})
        for turn in range(2):
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": said}]}
            await conn.conversation.item.create(item=item)
            # Audio appends between the turns: reads for the sampled relay latency.
            for _ in range(12):
                audio = base64.b64encode(secrets.token_bytes(960)).decode()
                await conn.input_audio_buffer.append(audio=audio)
                await asyncio.sleep(0.1)
            await conn.input_audio_buffer.clear()
            await conn.response.create()
            transcript = ""
            async with asyncio.timeout(15):
                async for event in conn:
                    assert event.type != "error", event
                    if event.type in ("response.output_audio_transcript.delta", "response.output_text.delta"):
                        transcript += event.delta
                    if event.type == "response.done":
                        break
            heard.append(transcript)
            assert turn >= 0
    return heard


async def test_a_session_is_one_genai_span_with_its_steps_as_children_and_no_secret(
    pg_dsn: str, emulator, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    tenant = await make_tenant(pg_pool)
    safety_secret = "safety-" + secrets.token_hex(16)
    end_user = "alice-" + secrets.token_hex(6) + "@example.com"
    said = f"my locker code is tangerine-{secrets.token_hex(6)}"
    instructions = f"you are a concierge called juniper-{secrets.token_hex(6)}"
    bad_key = "vg_live_" + "Z" * 43
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    with otlp_receiver() as (receiver, endpoint):
        env = gateway_env(
            pg_dsn,
            REDIS_URL,
            emulator.base_url,
            prefix,
            UPSTREAM_KEY,
            VOXGATE_SAFETY_ID_SECRET=safety_secret,
            VOXGATE_LOG_LEVEL="INFO",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="voxgate-under-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        env.pop("VOXGATE_LOG_FORMAT", None)  # serve's default: JSON lines
        try:
            async with gateway_process(env, tmp_path, "otel-a") as gw:
                async with AsyncOpenAI(base_url=gw.base_url, api_key=bad_key, max_retries=0) as client:
                    with pytest.raises(InvalidStatus, match="401"):
                        async with client.realtime.connect(model="gpt-realtime") as conn:
                            await conn.recv()
                heard = await talk(gw.base_url, tenant.secret, end_user, said, instructions)
                await gw.idle()
                spans = await spans_until(
                    receiver,
                    lambda spans: (
                        any(s.attributes.get("voxgate.end_reason") for s in spans)
                        and sum(s.name == "voxgate.ledger.write" for s in spans) >= 2
                    ),
                )
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"http://127.0.0.1:{gw.port}/metrics")).text
                await gw.stop_cleanly()
            log_text = gw.log_path.read_text()
        finally:
            await delete_keys(REDIS_URL, prefix)
        spans, exported = receiver.snapshot()

    session_id = await pg_pool.fetchval("SELECT id FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
    rows = await pg_pool.fetch(
        "SELECT response_id, input_tokens, output_tokens, cost_micro_usd FROM usage_ledger WHERE session_id = $1",
        session_id,
    )
    assert len(rows) == 2

    # The session span: GenAI attributes, the tenant, totals equal to the ledger's.
    [session] = [s for s in spans if s.attributes.get("gen_ai.conversation.id") == session_id and not s.parent_span_id]
    assert session.name == "realtime gpt-realtime"
    assert session.kind == SPAN_KIND_CLIENT
    assert session.resource["service.name"] == "voxgate-under-test"
    a = session.attributes
    assert a["gen_ai.operation.name"] == "realtime"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-realtime"
    assert a["voxgate.session_id"] == session_id
    assert a["voxgate.tenant_id"] == tenant.tenant_id
    assert a["voxgate.transport"] == "websocket"
    assert a["voxgate.end_reason"] == "client_closed"
    assert a["voxgate.responses"] == 2
    assert a["gen_ai.usage.input_tokens"] == sum(r["input_tokens"] for r in rows) > 0
    assert a["gen_ai.usage.output_tokens"] == sum(r["output_tokens"] for r in rows) > 0
    assert a["voxgate.cost_micro_usd"] == sum(r["cost_micro_usd"] for r in rows) > 0

    # Its children, in its trace, inside its time.
    children = [s for s in spans if s.parent_span_id == session.span_id]
    assert all(s.trace_id == session.trace_id for s in children)
    assert all(session.start_ns <= s.start_ns <= s.end_ns for s in children)
    names = sorted(s.name for s in children)
    assert names == ["response gpt-realtime", "response gpt-realtime", "voxgate.admission", "voxgate.upstream.connect"]
    responses = {s.attributes["gen_ai.response.id"]: s for s in children if s.name.startswith("response ")}
    assert set(responses) == {r["response_id"] for r in rows}
    for row in rows:
        response = responses[row["response_id"]]
        assert response.attributes["gen_ai.usage.input_tokens"] == row["input_tokens"]
        assert response.attributes["gen_ai.usage.output_tokens"] == row["output_tokens"]
        assert response.attributes["voxgate.cost_micro_usd"] == row["cost_micro_usd"]
        assert response.attributes["gen_ai.response.finish_reasons"] == ("completed",)
        [write] = [s for s in spans if s.parent_span_id == response.span_id]
        assert write.name == "voxgate.ledger.write"
        assert write.trace_id == session.trace_id
        assert write.end_ns <= response.end_ns

    # The refused attempt: a span of its own, an error with the refusal's code, no tenant.
    [refused] = [s for s in spans if s.attributes.get("voxgate.refusal.code") == "invalid_api_key"]
    assert refused.status_code == STATUS_ERROR
    assert refused.attributes["http.response.status_code"] == 401
    assert "voxgate.tenant_id" not in refused.attributes
    [admission] = [s for s in spans if s.parent_span_id == refused.span_id]
    assert admission.name == "voxgate.admission"
    assert admission.attributes["error.type"] == "invalid_api_key"

    # Nothing secret or said, anywhere in what was exported.
    forbidden = {
        "tenant key": tenant.secret,
        "refused key": bad_key,
        "upstream key": UPSTREAM_KEY,
        "safety identifier secret": safety_secret,
        "end user": end_user,
        "what the user said": said,
        "instructions": instructions,
        **{f"transcript {i}": text for i, text in enumerate(heard) if len(text) >= 12},
    }
    assert len(forbidden) >= 8  # the emulator spoke: its transcripts are among what must not leak
    for what, value in forbidden.items():
        assert value.encode() not in exported, f"the {what} was exported"
        assert value[-16:].encode() not in exported, f"part of the {what} was exported"

    # The log: JSON lines; every line about the session carries its ids; the summary adds up.
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    about = [line for line in lines if session_id in line["message"] or line.get("session_id") == session_id]
    assert about
    for line in about:
        assert line["session_id"] == session_id and line["tenant_id"] == tenant.tenant_id, line
        assert line["trace_id"] == session.trace_id and line["span_id"] == session.span_id, line
    [summary] = [line for line in about if line.get("event") == "session.summary"]
    assert summary["end_reason"] == "client_closed"
    assert summary["responses"] == 2
    assert summary["cost_micro_usd"] == a["voxgate.cost_micro_usd"]
    assert summary["input_tokens"] == a["gen_ai.usage.input_tokens"]
    assert summary["duration_s"] >= 2.0  # two turns of 1.2 s of audio
    for value in forbidden.values():
        assert value not in log_text

    # The latency histograms saw this session.
    def count(name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        line = next((x for x in metrics.splitlines() if x.startswith(f"{name}{{{want}}} ")), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert count("voxgate_time_to_first_audio_seconds_count", model="gpt-realtime") == 2
    assert count("voxgate_admission_seconds_count", outcome="admitted") == 1
    assert count("voxgate_admission_seconds_count", outcome="refused") == 1
    assert count("voxgate_upstream_connect_seconds_count", transport="websocket") == 1
    assert count("voxgate_relay_added_latency_seconds_count", direction="client_to_upstream") >= 1
    assert "voxgate_ledger_write_seconds_count" in metrics
