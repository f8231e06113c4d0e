"""The Realtime API's wire shapes, as the bench's fake upstream and load generator write them.

Server events are compact JSON with `type` first, as OpenAI sends them. Client audio
appends come in the shapes the official SDKs put on the wire (`APPEND_SHAPES`), checked
against the installed `openai` and `openai-agents` packages (`python bench/realtime_events.py`
prints what they send).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable

AUDIO_B64 = ("AAAAAAEAAgADAP//" * 80).encode()  # 1280 base64 chars = 960 bytes = 20 ms of 24 kHz PCM16
_compact = json.JSONEncoder(separators=(",", ":")).encode


def _append_python_sdk(seq: int) -> bytes:
    # openai (Python) `conn.input_audio_buffer.append(audio=...)`: json.dumps of {type, audio}
    return b'{"type": "input_audio_buffer.append", "audio": "' + AUDIO_B64 + b'"}'


def _append_python_sdk_event_id(seq: int) -> bytes:
    # the same with `event_id=` given: it comes last, after the audio
    return b'{"type": "input_audio_buffer.append", "audio": "' + AUDIO_B64 + b'", "event_id": "evt_%d"}' % seq


def _append_agents_sdk(seq: int) -> bytes:
    # openai-agents (Python) `model_dump_json(exclude_unset=True)`: pydantic field order, audio first
    return b'{"audio":"' + AUDIO_B64 + b'","type":"input_audio_buffer.append"}'


def _append_js_sdk(seq: int) -> bytes:
    # openai-node and the JS Agents SDK: JSON.stringify({type, audio})
    return b'{"type":"input_audio_buffer.append","audio":"' + AUDIO_B64 + b'"}'


APPEND_SHAPES: dict[str, Callable[[int], bytes]] = {
    "python-sdk": _append_python_sdk,
    "python-sdk-event-id": _append_python_sdk_event_id,
    "agents-sdk": _append_agents_sdk,
    "js-sdk": _append_js_sdk,
}

SESSION_UPDATE = (
    b'{"type": "session.update", "session": {"type": "realtime", "instructions": "You are a bench.", '
    b'"audio": {"output": {"voice": "marin"}, "input": {"turn_detection": {"type": "server_vad"}}}}}'
)
RESPONSE_CREATE = b'{"type": "response.create", "response": {"output_modalities": ["audio"]}}'


def session_object(model: str) -> dict[str, object]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_" + secrets.token_hex(10),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


def session_created(model: str) -> bytes:
    """A `session.created` in the GA shape the official SDKs parse."""
    return _compact({"type": "session.created", "event_id": _event_id(), "session": session_object(model)}).encode()


def session_updated(model: str, update: bytes) -> bytes:
    """The answer to a `session.update`: the session with what was asked for merged in."""
    session = session_object(model)
    try:
        asked = json.loads(update).get("session") or {}
    except (ValueError, AttributeError):
        asked = {}
    if isinstance(asked, dict):
        session.update({k: v for k, v in asked.items() if k not in ("id", "object")})
    return _compact({"type": "session.updated", "event_id": _event_id(), "session": session}).encode()


_ids = itertools.count(1)


def _event_id() -> str:
    return f"event_{next(_ids):x}"


_DELTA_A = b'{"type":"response.output_audio.delta","event_id":"event_e'
_DELTA_B = b'","response_id":"resp_echo","item_id":"item_'
_DELTA_C = b'","output_index":0,"content_index":0,"delta":"' + AUDIO_B64 + b'"}'


def echo_delta(seq: bytes) -> bytes:
    """The audio delta that answers append number `seq` (the load generator times round trips on it)."""
    return b"".join((_DELTA_A, seq, _DELTA_B, seq, _DELTA_C))


def usage(audio_in: int, text_out: int, audio_out: int) -> dict[str, object]:
    return {
        "total_tokens": 119 + audio_in + text_out + audio_out,
        "input_tokens": 119 + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": 119,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": 64,
            "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def response_done(response_id: str, event_id: str) -> bytes:
    """A completed audio response with a usage block (what the ledger bills)."""
    return _compact(
        {
            "type": "response.done",
            "event_id": event_id,
            "response": {
                "object": "realtime.response",
                "id": response_id,
                "status": "completed",
                "status_details": None,
                "output": [],
                "conversation_id": "conv_bench",
                "output_modalities": ["audio"],
                "max_output_tokens": "inf",
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
                "usage": usage(13, 30, 91),
                "metadata": None,
            },
        }
    ).encode()


def rate_limits_updated() -> bytes:
    return _compact(
        {
            "type": "rate_limits.updated",
            "event_id": _event_id(),
            "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 800000, "remaining": 799700, "reset_seconds": 0.022},
            ],
        }
    ).encode()


def turn(prefix: str, n: int, appends: int, audio_deltas: int) -> list[bytes]:
    """What OpenAI sends for one server-VAD turn, in order, after the user stops speaking.

    Speech stops, the buffer is committed, the input transcription streams and completes
    (with its own usage), a response streams audio and transcript deltas, and ends with a
    `response.done` (usage) and a `rate_limits.updated`.
    """
    resp, user_item, item = f"resp_{prefix}{n}", f"item_u{prefix}{n}", f"item_a{prefix}{n}"

    def ev(kind: str, **fields: object) -> bytes:
        return _compact({"type": kind, "event_id": _event_id(), **fields}).encode()

    audio_ms = appends * 20  # where the connection's audio has got to
    events = [
        ev("input_audio_buffer.speech_stopped", audio_end_ms=audio_ms, item_id=user_item),
        ev("input_audio_buffer.committed", previous_item_id=None, item_id=user_item),
        ev(
            "conversation.item.added",
            previous_item_id=None,
            item={"id": user_item, "type": "message", "status": "completed", "role": "user", "content": []},
        ),
        ev(
            "response.created",
            response={"object": "realtime.response", "id": resp, "status": "in_progress", "output": []},
        ),
    ]
    for word in ("Hello", " there", "."):
        events.append(
            ev("conversation.item.input_audio_transcription.delta", item_id=user_item, content_index=0, delta=word)
        )
    events.append(
        ev(
            "conversation.item.input_audio_transcription.completed",
            item_id=user_item,
            content_index=0,
            transcript="Hello there.",
            usage={
                "type": "tokens",
                "total_tokens": 40,
                "input_tokens": 33,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 33},
                "output_tokens": 7,
            },
        )
    )
    events.append(
        ev(
            "response.output_item.added",
            response_id=resp,
            output_index=0,
            item={"id": item, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
        )
    )
    events.append(
        ev(
            "response.content_part.added",
            response_id=resp,
            item_id=item,
            output_index=0,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )
    )
    for i in range(audio_deltas):
        events.append(
            b'{"type":"response.output_audio.delta","event_id":"%s","response_id":"%s","item_id":"%s",'
            b'"output_index":0,"content_index":0,"delta":"%s"}'
            % (_event_id().encode(), resp.encode(), item.encode(), AUDIO_B64)
        )
        events.append(
            ev(
                "response.output_audio_transcript.delta",
                response_id=resp,
                item_id=item,
                output_index=0,
                content_index=0,
                delta=f" word{i}",
            )
        )
    common = {"response_id": resp, "item_id": item, "output_index": 0, "content_index": 0}
    events.append(ev("response.output_audio.done", **common))
    events.append(ev("response.output_audio_transcript.done", **common, transcript="word " * audio_deltas))
    events.append(ev("response.content_part.done", **common, part={"type": "audio", "transcript": "..."}))
    events.append(
        ev(
            "response.output_item.done",
            response_id=resp,
            output_index=0,
            item={"id": item, "type": "message", "status": "completed", "role": "assistant", "content": []},
        )
    )
    events.append(response_done(resp, _event_id()))
    events.append(rate_limits_updated())
    return events


def speech_started(item: str, at_ms: int) -> bytes:
    return _compact(
        {"type": "input_audio_buffer.speech_started", "event_id": _event_id(), "audio_start_ms": at_ms, "item_id": item}
    ).encode()


def buffer_cleared() -> bytes:
    return _compact({"type": "input_audio_buffer.cleared", "event_id": _event_id()}).encode()


def cancel_not_active() -> bytes:
    """OpenAI's answer to a `response.cancel` with no response in flight."""
    error = {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": None,
    }
    return _compact({"type": "error", "event_id": _event_id(), "error": error}).encode()


def minted_secret(body: bytes) -> bytes:
    """A `POST /v1/realtime/client_secrets` answer: the requested session with an id, and a secret."""
    try:
        session = json.loads(body).get("session") or {}
    except (ValueError, AttributeError):
        session = {}
    session = {
        "type": "realtime",
        "object": "realtime.session",
        "model": "gpt-realtime",
        **session,
        "id": "sess_" + secrets.token_hex(10),
    }
    return json.dumps(
        {"value": "ek_" + secrets.token_hex(16), "expires_at": int(time.time()) + 600, "session": session}
    ).encode()


def _show_sdk_shapes() -> None:
    """Print what the installed SDKs put on the wire for an audio append."""
    from openai.types.realtime.input_audio_buffer_append_event import InputAudioBufferAppendEvent

    event = InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio="QUJD")
    print("openai-agents:", event.model_dump_json(exclude_unset=True))
    print("openai (dict):", json.dumps({"type": "input_audio_buffer.append", "audio": "QUJD"}))
    for name, make in APPEND_SHAPES.items():
        print(f"bench {name}:", make(7).replace(AUDIO_B64, b"<audio>").decode())


if __name__ == "__main__":
    _show_sdk_shapes()
