"""Which messages may skip inspection: audio does, anything ambiguous does not."""

import base64
import json

import pytest

from policies.frames import PASSTHROUGH_CLIENT_TYPES, PASSTHROUGH_SERVER_TYPES, passthrough_type

AUDIO = base64.b64encode(bytes(range(256)) * 8).decode()


@pytest.mark.parametrize("as_bytes", [False, True])
def test_sdk_shaped_audio_append_skips_inspection(as_bytes: bool) -> None:
    for text in (
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO}),  # python SDK: ", " and ": "
        json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO, "event_id": "evt_1"}, separators=(",", ":")),
        '  {  "type" :  "input_audio_buffer.append", "audio": "' + AUDIO + '"}',
    ):
        data = text.encode() if as_bytes else text
        assert passthrough_type(data, PASSTHROUGH_CLIENT_TYPES) == "input_audio_buffer.append"


@pytest.mark.parametrize(
    "text",
    [
        # type not first: could hide a nested "type" before the real one
        '{"audio": "AAAA", "type": "input_audio_buffer.append"}',
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
    ],
)
def test_ambiguous_or_other_messages_are_inspected(text: str) -> None:
    assert passthrough_type(text, PASSTHROUGH_CLIENT_TYPES) is None
    assert passthrough_type(text.encode(), PASSTHROUGH_CLIENT_TYPES) is None


def test_server_deltas_skip_but_usage_carrying_events_do_not() -> None:
    delta = json.dumps({"type": "response.output_audio.delta", "event_id": "e", "response_id": "r", "delta": AUDIO})
    assert passthrough_type(delta, PASSTHROUGH_SERVER_TYPES) == "response.output_audio.delta"
    for kind in ("response.done", "rate_limits.updated", "session.updated", "error"):
        assert passthrough_type(json.dumps({"type": kind}), PASSTHROUGH_SERVER_TYPES) is None


def test_non_ascii_type_bytes_are_inspected() -> None:
    assert passthrough_type('{"type": "input_audio_bufférappend"}'.encode(), PASSTHROUGH_CLIENT_TYPES) is None
