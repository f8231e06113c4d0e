"""The emulator's GPT-Live usage rules, checked with figures worked out by hand (no event loop).

Voice time: whole seconds rounded down, paused time apart, the WebRTC prepaid 15 s counted
as active until used; delegated responses: text tokens of what the backend reads and writes
plus the reasoning tokens of the effort. A cost is computed from these figures the way a
meter would: micro-USD = round((active · 50,000 + paused · 20,000) / 60).
"""

from __future__ import annotations

from emulator.live.backend import decision, plan_response
from emulator.live.meter import VoiceMeter


def voice_micro_usd(active: int, paused: int) -> int:
    return round((active * 50_000 + paused * 20_000) / 60)


def test_a_websocket_session_reports_whole_seconds_since_its_start() -> None:
    meter = VoiceMeter(100.0)
    assert meter.report(100.4) == {"seconds": 0.0}
    assert meter.report(131.7) == {"seconds": 31.0}
    meter.end(140.2)
    assert meter.report(500.0) == {"seconds": 40.0}  # final: later reports repeat it


def test_webrtc_prepays_15_seconds_credited_against_the_session() -> None:
    meter = VoiceMeter(0.0, prepaid_s=15, breakdown=True)
    assert meter.report(4.2) == {"seconds": 15.0, "active_seconds": 15, "paused_seconds": 0}
    assert meter.report(90.9) == {"seconds": 90.0, "active_seconds": 90, "paused_seconds": 0}  # not 105


def test_paused_time_is_billed_apart_at_the_standby_rate() -> None:
    meter = VoiceMeter(0.0, prepaid_s=15, breakdown=True)
    meter.pause(100.0)
    meter.resume(125.5)
    meter.end(132.9)
    usage = meter.report(132.9)
    assert usage == {"seconds": 132.0, "active_seconds": 107, "paused_seconds": 25}
    assert voice_micro_usd(usage["active_seconds"], usage["paused_seconds"]) == 97_500  # $0.0975


def test_a_delegated_response_counts_what_the_backend_reads_and_writes() -> None:
    settings = {
        "model": "gpt-5.5",
        "instructions": "Use tools.",  # 10 bytes: 3 tokens
        "service_tier": "priority",
        "reasoning": {"effort": "medium"},  # 32 reasoning tokens
    }
    run = plan_response(settings, task="hello", items=[], previous_input=0, fails=False, delegation_id="d", now=0)
    # input: 3 + ceil(5 / 4) = 5; output: 32 + ceil(len("Backend result for: hello") / 4) = 32 + 7
    assert run.usage == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 39,
        "output_tokens_details": {"reasoning_tokens": 32},
        "total_tokens": 44,
    }
    assert (run.model, run.service_tier, run.status) == ("gpt-5.5", "priority", "completed")
    again = plan_response(settings, task="x" * 600, items=[], previous_input=130, fails=False, delegation_id="d", now=0)
    assert again.usage["input_tokens_details"]["cached_tokens"] == 128  # the previous input, whole 64-token blocks


def test_max_output_tokens_cuts_a_response_short() -> None:
    settings = {"model": "gpt-5.5", "max_output_tokens": 8, "reasoning": {"effort": "low"}, "service_tier": "auto"}
    run = plan_response(settings, task="hello", items=[], previous_input=0, fails=False, delegation_id="d", now=0)
    assert (run.status, run.usage["output_tokens"], run.service_tier) == ("incomplete", 8, "default")
    failed = plan_response(settings, task="hello", items=[], previous_input=0, fails=True, delegation_id="d", now=0)
    assert (failed.status, failed.usage["output_tokens"]) == ("failed", 0)


def test_a_decision_reads_its_questions_and_answers_each() -> None:
    questions = [{"type": "predicate", "name": "human", "instructions": "Human?"}]
    result = decision("gpt-6-luna", questions, "hi")
    assert result["answers"] == [{"type": "predicate", "name": "human", "probability": 0.5}]
    assert result["usage"]["output_tokens"] == 1
