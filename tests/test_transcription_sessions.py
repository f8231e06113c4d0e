"""Transcription sessions are billed from each completed transcription's usage, and the audio no
completed transcription billed (never committed, or committed and never transcribed) is billed at
the end by its duration, marked estimated, exactly once (docs/pricing.md, "Transcription sessions").

The governor alone, no event loop. Prices typed in from docs/pricing.md, in micro-USD:
gpt-live-transcribe and gpt-realtime-whisper $0.017 / min = 17_000 a minute; gpt-4o-transcribe
audio in $6.00 / 1M tokens (a token is 100 ms of audio). Costs are rounded half up once.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from policies.actions import Persist, RecordSpend, TranscriptionRecord
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.transcription_backstop import appended_audio
from tests.support.live_conformance import EXAMPLES

NOW = 1_800_000_000.0
SID = "vgs_transcribe0001"
COMPLETED = "conversation.item.input_audio_transcription.completed"
UPDATE = EXAMPLES["transcription"]["session.update.gpt-live-transcribe"]
BYTES_PER_SECOND = 48_000  # PCM16 mono 24 kHz


def governor(intent: str = "transcription", policy: TenantPolicy | None = None) -> SessionGovernor:
    return SessionGovernor(SessionIdentity(SID, "ten_a", "", intent=intent), DEFAULT_PRICE_TABLE, policy, NOW)


def configured(model: str = "gpt-live-transcribe", audio_format: dict[str, Any] | None = None) -> SessionGovernor:
    """A transcription session upstream confirmed with `model` (and `audio_format`)."""
    gov = governor()
    session = copy.deepcopy(UPDATE["session"])
    session["audio"]["input"]["transcription"] = {"model": model}
    if audio_format is not None:
        session["audio"]["input"]["format"] = audio_format
    gov.on_server_event({"type": "session.updated", "event_id": "ev_u", "session": session}, NOW)
    return gov


def append(gov: SessionGovernor, audio_bytes: int) -> None:
    """An `input_audio_buffer.append` as the SDK writes it, fed the way the shell feeds it: undecoded."""
    audio = base64.b64encode(b"\x01" * audio_bytes).decode()
    gov.note_client_audio(NOW, json.dumps({"type": "input_audio_buffer.append", "audio": audio}).encode())


def commit(gov: SessionGovernor, item_id: str) -> None:
    gov.on_client_event({"type": "input_audio_buffer.commit"}, NOW)
    gov.on_server_event({"type": "input_audio_buffer.committed", "event_id": "ev_c", "item_id": item_id}, NOW)


def completed(item_id: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": COMPLETED,
        "event_id": "ev_t",
        "item_id": item_id,
        "content_index": 0,
        "transcript": "hi",
        "usage": usage,
    }


def records(actions: Any) -> list[TranscriptionRecord]:
    return [a.record for a in actions if isinstance(a, Persist) and isinstance(a.record, TranscriptionRecord)]


def test_committed_audio_is_billed_by_the_reported_duration() -> None:
    gov = configured()
    append(gov, 120_000)  # 2.5 s
    commit(gov, "item_1")
    [record] = records(gov.on_server_event(completed("item_1", {"type": "duration", "seconds": 2.5}), NOW))
    # 2_500 ms x 17_000 / 60_000 = 708.33 -> 708
    assert (record.item_id, record.duration_ms, record.cost_micro_usd, record.estimated) == (
        "item_1",
        2_500,
        708,
        False,
    )
    assert record.price_version == "2026-12-06"
    assert records(gov.on_session_end(NOW + 5)) == []  # everything appended was billed: no backstop


def test_audio_never_committed_is_billed_at_the_end_by_its_duration_and_marked_estimated() -> None:
    gov = configured("gpt-realtime-whisper")
    append(gov, 48_000)
    append(gov, 24_000)  # 1.5 s in all
    [record] = records(gov.on_session_end(NOW + 5))
    # 1_500 ms x 17_000 / 60_000 = 425
    assert (record.item_id, record.model, record.usage_type) == ("backstop", "gpt-realtime-whisper", "duration")
    assert (record.duration_ms, record.cost_micro_usd, record.estimated) == (1_500, 425, True)
    assert gov.totals.transcription_cost_micro_usd == 425
    assert gov.on_session_end(NOW + 6) == ()  # the end is booked once


def test_only_the_audio_after_the_last_commit_is_left_for_the_backstop() -> None:
    gov = configured()
    append(gov, 48_000)  # 1 s, committed and transcribed
    commit(gov, "item_1")
    append(gov, 33_600)  # 0.7 s, never committed
    [billed] = records(gov.on_server_event(completed("item_1", {"type": "duration", "seconds": 1.0}), NOW))
    [backstop] = records(gov.on_session_end(NOW + 5))
    # 1_000 ms -> 283.33 -> 283; 700 ms -> 198.33 -> 198
    assert (billed.cost_micro_usd, backstop.duration_ms, backstop.cost_micro_usd) == (283, 700, 198)
    assert gov.totals.transcription_cost_micro_usd == 283 + 198


def test_committed_audio_never_transcribed_is_backstopped_and_a_late_transcription_is_not_billed_again() -> None:
    gov = configured()
    append(gov, 96_000)  # 2 s
    commit(gov, "item_2")
    [backstop] = records(gov.on_session_end(NOW + 5))
    # 2_000 ms x 17_000 / 60_000 = 566.67 -> 567
    assert (backstop.duration_ms, backstop.cost_micro_usd) == (2_000, 567)
    late = gov.on_server_event(completed("item_2", {"type": "duration", "seconds": 2.0}), NOW + 6)
    assert records(late) == []
    assert gov.totals.transcription_cost_micro_usd == 567


def test_audio_the_client_cleared_is_not_billed() -> None:
    gov = configured()
    append(gov, 48_000)
    gov.on_client_event({"type": "input_audio_buffer.clear"}, NOW)
    append(gov, 24_000)  # 0.5 s
    [backstop] = records(gov.on_session_end(NOW + 5))
    # 500 ms x 17_000 / 60_000 = 141.67 -> 142
    assert (backstop.duration_ms, backstop.cost_micro_usd) == (500, 142)


def test_a_commit_by_server_vad_takes_the_buffer_with_it() -> None:
    gov = configured("gpt-4o-transcribe")
    append(gov, 48_000)
    gov.on_server_event({"type": "input_audio_buffer.committed", "event_id": "ev_c", "item_id": "item_v"}, NOW)
    usage = EXAMPLES["transcription"][f"{COMPLETED}.token_usage"]["usage"]
    [billed] = records(gov.on_server_event(completed("item_v", usage), NOW))
    # tokens: 26 audio in x 6_000_000 + 3 out x 10_000_000 = 186_000_000 -> 186
    assert (billed.usage_type, billed.cost_micro_usd) == ("tokens", 186)
    assert records(gov.on_session_end(NOW + 5)) == []


def test_a_backstop_at_token_rates_counts_a_token_per_100_ms() -> None:
    gov = configured("gpt-4o-transcribe")
    append(gov, 72_000)  # 1.5 s = 15 audio tokens
    [backstop] = records(gov.on_session_end(NOW + 5))
    # 15 x 6_000_000 / 1_000_000 = 90
    assert (backstop.duration_ms, backstop.cost_micro_usd) == (1_500, 90)


def test_g711_audio_is_8000_bytes_a_second() -> None:
    gov = configured(audio_format={"type": "audio/pcmu"})
    append(gov, 12_000)  # 1.5 s of mu-law
    [backstop] = records(gov.on_session_end(NOW + 5))
    assert (backstop.duration_ms, backstop.cost_micro_usd) == (1_500, 425)


def test_an_empty_commit_does_not_take_the_next_turns_audio() -> None:
    gov = configured()
    gov.on_client_event({"type": "input_audio_buffer.commit"}, NOW)  # upstream refuses it: nothing to commit
    append(gov, 48_000)
    commit(gov, "item_1")
    gov.on_server_event(completed("item_1", {"type": "duration", "seconds": 1.0}), NOW)
    assert records(gov.on_session_end(NOW + 5)) == []


def test_the_backstop_is_added_to_the_tenants_spend_under_a_policy() -> None:
    gov = governor(policy=TenantPolicy())
    gov.on_server_event({"type": "session.updated", "event_id": "ev_u", "session": UPDATE["session"]}, NOW)
    append(gov, 48_000)
    actions = gov.on_session_end(NOW + 5)
    [spend] = [a for a in actions if isinstance(a, RecordSpend)]
    assert (spend.spend_id, spend.amount_micro_usd) == (f"tr:{SID}:backstop:0", 283)


def test_realtime_sessions_have_no_backstop() -> None:
    gov = governor(intent="realtime")
    gov.on_server_event({"type": "session.updated", "event_id": "ev_u", "session": UPDATE["session"]}, NOW)
    append(gov, 48_000)
    assert records(gov.on_session_end(NOW + 5)) == []


def test_the_append_reader_counts_base64_characters_and_decoded_bytes() -> None:
    for size in (0, 1, 2, 3, 4, 4_800):
        audio = base64.b64encode(bytes(size)).decode()
        sdk = json.dumps({"type": "input_audio_buffer.append", "audio": audio, "event_id": "e1"}).encode()
        agents = json.dumps({"audio": audio, "type": "input_audio_buffer.append"}, separators=(",", ":")).encode()
        assert appended_audio(sdk) == appended_audio(agents) == (len(audio), size)
    assert appended_audio(b'{"type":"input_audio_buffer.append"}') == (0, 0)


def test_the_audio_key_is_found_even_when_another_value_reads_audio() -> None:
    # 8 base64 characters without padding are 6 bytes; the event_id's value "audio" is not the key.
    shapes = [
        b'{"type":"input_audio_buffer.append","event_id":"audio","audio":"AAAAAAAA"}',
        b'{"audio":"AAAAAAAA","type":"input_audio_buffer.append"}',
        b'{"type":"input_audio_buffer.append","audio":"AAAAAAAA"}',
    ]
    assert [appended_audio(shape) for shape in shapes] == [(8, 6), (8, 6), (8, 6)]
