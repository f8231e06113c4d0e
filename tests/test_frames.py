"""Which messages may skip inspection: audio does, anything ambiguous does not."""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.actions import FORWARD
from policies.frames import (
    CLIENT_EXACT_PREFIXES,
    PASSTHROUGH_CLIENT_TYPES,
    PASSTHROUGH_SERVER_TYPES,
    SERVER_EXACT_PREFIXES,
    exact_passthrough,
    passthrough_type,
)
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.fixtures import realtime_server_events

T0 = 1_800_000_000.0
POLICY = TenantPolicy(
    voices=frozenset({"marin"}), max_output_tokens=1000, budget=BudgetPolicy(daily_micro_usd=10_000_000)
)
AUDIO = base64.b64encode(bytes(range(256)) * 8).decode()


def test_sdk_shaped_audio_append_skips_inspection() -> None:
    for text in (
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO}),  # python SDK: ", " and ": "
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO, "event_id": "evt_1"}, separators=(",", ":")),
        '  {  "type" :  "input_audio_buffer.append", "audio": "' + AUDIO + '"}',
        # the Agents SDK (pydantic field order) and the SDK's own models with indent=2
        '{"audio":"' + AUDIO + '","type":"input_audio_buffer.append"}',
        '{\n  "audio": "' + AUDIO + '",\n  "type": "input_audio_buffer.append"\n}',
        '{"event_id": "evt_1", "type": "input_audio_buffer.append", "audio": "' + AUDIO + '"}',
    ):
        assert passthrough_type(text.encode(), PASSTHROUGH_CLIENT_TYPES) == "input_audio_buffer.append"


AMBIGUOUS = [
    # type not first behind anything but one plain string: could hide a nested "type"
    '{"audio": {"type": "response.create"}, "type": "input_audio_buffer.append"}',
    '{"audio": ["x"], "type": "input_audio_buffer.append"}',
    '{"audio": 1, "type": "input_audio_buffer.append"}',
    '{"a": "x", "audio": "AAAA", "type": "input_audio_buffer.append"}',
    '{"audio": "AAAA" "type": "input_audio_buffer.append"}',
    '{"audio": "AAAA", "type": "input_audio_buffer.append", "type": "response.create"}',
    '{"audio": "AA\\"AA", "type": "input_audio_buffer.append"}',
    '{"type": "response.create", "audio": "AAAA", "type": "input_audio_buffer.append"}',
    '{"audio": "type", "type": "input_audio_buffer.append"}',
    # a nested object claiming to be audio in front of a real response.create
    '{"type": "input_audio_buffer.append", "type": "response.create", "response": {"max_output_tokens": 99999}}',
    # an escaped duplicate key decodes to "type"
    '{"type": "input_audio_buffer.append", "typ\\u0065": "response.create"}',
    # a quote inside a value needs an escape: never fast-pathed
    '{"type": "input_audio_buffer.append", "event_id": "a\\"b"}',
    '{"type": "response.create"}',
    '{"type": "input_audio_buffer.append',
    "[]",
    "",
    "not json",
    # a second "type" key after the audio, where the relay's fast test looks last
    '{"type": "input_audio_buffer.append", "audio": "' + AUDIO + '", "type": "response.create"}',
    '{"type": "input_audio_buffer.append", "type": "response.create", "audio": "' + AUDIO + '"}',
    '{"type": "input_audio_buffer.append", "audio": "' + AUDIO + '", "type":"response.create","x": "' + AUDIO + '"}',
]


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_ambiguous_or_other_messages_are_inspected(text: str) -> None:
    assert passthrough_type(text.encode(), PASSTHROUGH_CLIENT_TYPES) is None


def test_server_deltas_skip_but_usage_carrying_events_do_not() -> None:
    delta = json.dumps({"type": "response.output_audio.delta", "event_id": "e", "response_id": "r", "delta": AUDIO})
    assert passthrough_type(delta.encode(), PASSTHROUGH_SERVER_TYPES) == "response.output_audio.delta"
    for kind in ("response.done", "rate_limits.updated", "session.updated", "error"):
        assert passthrough_type(json.dumps({"type": kind}).encode(), PASSTHROUGH_SERVER_TYPES) is None


def test_the_governor_only_forwards_what_skips_inspection() -> None:
    """An event type may skip the governor only while the governor does nothing but forward it."""
    governor = SessionGovernor(
        SessionIdentity("vgs_test000000001", "ten_a", "gpt-realtime"), DEFAULT_PRICE_TABLE, POLICY, T0
    )
    samples = realtime_server_events()
    governor.on_server_event(samples["session.created"], T0)
    assert samples.keys() >= PASSTHROUGH_SERVER_TYPES
    for kind in sorted(PASSTHROUGH_SERVER_TYPES):
        assert tuple(governor.on_server_event(samples[kind], T0 + 1)) == (FORWARD,), kind
    for kind in ("response.created", "response.done", "rate_limits.updated", "input_audio_buffer.committed"):
        assert kind not in PASSTHROUGH_SERVER_TYPES


def test_non_ascii_type_bytes_are_inspected() -> None:
    assert passthrough_type('{"type": "input_audio_bufférappend"}'.encode(), PASSTHROUGH_CLIENT_TYPES) is None


def exact(data: bytes, prefixes: tuple[bytes, ...]) -> bool:
    return exact_passthrough(data, 0, len(data), prefixes)


def test_the_relay_fast_test_takes_what_the_sdks_and_openai_send() -> None:
    sdk = [
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO}),
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO, "event_id": "evt_1"}),
        json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_1", "audio": AUDIO}, separators=(",", ":")),
        # openai-agents: `model_dump_json(exclude_unset=True)` puts the audio first
        json.dumps({"audio": AUDIO, "type": "input_audio_buffer.append"}, separators=(",", ":")),
        json.dumps({"audio": AUDIO, "type": "input_audio_buffer.append", "event_id": "e1"}, separators=(",", ":")),
        json.dumps({"audio": AUDIO, "type": "input_audio_buffer.append"}),
    ]
    for text in sdk:
        assert exact(text.encode(), CLIENT_EXACT_PREFIXES)
    delta = {
        "type": "response.output_audio.delta",
        "event_id": "event_CX1",
        "response_id": "resp_CX2",
        "item_id": "item_CX3",
        "output_index": 0,
        "content_index": 0,
        "delta": AUDIO,
    }
    assert exact(json.dumps(delta, separators=(",", ":")).encode(), SERVER_EXACT_PREFIXES)
    assert exact(json.dumps(delta).encode(), SERVER_EXACT_PREFIXES)
    # In the middle of a larger buffer (the relay tests frames where they lie).
    framed = b"\x81~xx" + json.dumps(delta).encode() + b"\x81\x02{}"
    assert exact_passthrough(framed, 4, len(framed) - 4, SERVER_EXACT_PREFIXES)
    assert not exact_passthrough(framed, 3, len(framed) - 4, SERVER_EXACT_PREFIXES)
    assert not exact_passthrough(framed, 4, 30, SERVER_EXACT_PREFIXES)  # the prefix must lie inside the message


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_the_relay_fast_test_refuses_everything_ambiguous(text: str) -> None:
    assert not exact(text.encode(), CLIENT_EXACT_PREFIXES)


def test_the_relay_fast_test_is_narrower_than_the_parser_check() -> None:
    # Whitespace the SDKs never write, and the type key not first: left to `passthrough_type`.
    loose = '  {  "type" :  "input_audio_buffer.append", "audio": "' + AUDIO + '"}'
    assert passthrough_type(loose.encode(), PASSTHROUGH_CLIENT_TYPES) is not None
    assert not exact(loose.encode(), CLIENT_EXACT_PREFIXES)
    for kind in ("response.done", "rate_limits.updated", "response.created"):
        assert not exact(json.dumps({"type": kind, "x": AUDIO}).encode(), SERVER_EXACT_PREFIXES)


_PIECES = st.sampled_from(
    [
        '"type"',
        '"type":',
        '"',
        "\\",
        "\\u0065",
        ":",
        ",",
        " ",
        "{",
        "}",
        '"audio"',
        '"response.create"',
        "A" * 40,
        '"input_audio_buffer.append"',
        "typ",
        "e",
        '"}',
        "x",
    ]
)


def test_what_the_installed_agents_sdk_sends_skips_inspection() -> None:
    agents = pytest.importorskip("openai.types.realtime.input_audio_buffer_append_event")
    event = agents.InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=AUDIO)
    data = event.model_dump_json(exclude_unset=True).encode()
    assert exact(data, CLIENT_EXACT_PREFIXES)
    assert passthrough_type(data, PASSTHROUGH_CLIENT_TYPES) == "input_audio_buffer.append"


_AUDIO_FIRST = [p.replace(b'{"type"', b'{"audio":"AAAA","type"', 1) for p in CLIENT_EXACT_PREFIXES] + [
    b'{"audio": "' + AUDIO.encode() + b'", "type": "input_audio_buffer.append"',
    b'{"audio":"',
    b'{"audio": "AA',
]


@given(
    prefix=st.sampled_from((*CLIENT_EXACT_PREFIXES, *_AUDIO_FIRST, b'{ "type": "input_audio_buffer.append"')),
    body=st.lists(_PIECES, max_size=30),
    pad=st.integers(0, 1400),
)
def test_whatever_the_fast_test_takes_the_parser_check_takes_too(prefix: bytes, body: list[str], pad: int) -> None:
    """No message gets past the fast test that the full check (and so the governor) would stop."""
    data = prefix + "".join(body).encode() + b', "audio": "' + b"A" * pad + b'"}'
    for variant in (data, data[:-1], data + b" "):
        if exact(variant, CLIENT_EXACT_PREFIXES):
            assert passthrough_type(variant, PASSTHROUGH_CLIENT_TYPES) == "input_audio_buffer.append"
            assert variant.count(b'"type"') == 1
        if passthrough_type(variant, PASSTHROUGH_CLIENT_TYPES) is not None:
            assert variant.count(b'"type"') == 1 and b"\\" not in variant
            try:
                decoded = json.loads(variant)
            except ValueError:
                continue  # invalid JSON: upstream refuses it whole, whatever its type
            assert decoded["type"] == "input_audio_buffer.append"
