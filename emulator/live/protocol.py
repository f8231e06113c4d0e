"""The GPT-Live session state machine: client events in, (audience, server event) pairs out.

`LiveProtocol` does no I/O and reads no clock: every call takes `now`. The shell
(`emulator.live.connection`) starts it (`start`), feeds it client text and media audio,
calls `tick(now)` every usage interval and `close(reason, now)` at the end, and routes each
output to the primary transport, the sidebands, or both (`Out`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from emulator.config import EmulatorConfig
from emulator.errors import ProtocolError, new_id
from emulator.live import settings
from emulator.live.backend import decision, plan_response
from emulator.live.events import PRIMARY_EVENTS, live_error
from emulator.live.meter import VoiceMeter
from emulator.live.voice import PCM24, Out, VoicePath, event, live_format
from emulator.usage import reply_for, text_tokens, transcript_for

MAX_APPEND_TOKENS = 500
CONTEXT_LIMIT_TOKENS = 32_000  # for `context_window.usage_ratio`


class LiveProtocol:
    """One Live session. `transport` is "websocket", "webrtc" or "sip"; `surface` for text events."""

    def __init__(self, config: EmulatorConfig, *, transport: str, session_id: str | None = None) -> None:
        self.config = config
        self.transport = transport
        self.id = session_id or new_id("live", 20)
        self.session: dict[str, Any] | None = None
        self.meter: VoiceMeter | None = None
        self.voice: VoicePath | None = None
        self.client_events: list[dict[str, Any]] = []
        self.closed_reason: str | None = None
        self.muted = False
        self.response_fails = False  # the shell copies `Faults.live_response_fails` in
        self.responses: list[dict[str, Any]] = []  # terminal response snapshots, for tests
        self._items: list[Any] = []  # appended with response.item.create, for the next response
        self._decision_items: dict[str, Any] = {}
        self._decision_event_ids: set[str] = set()
        self._previous_input = 0
        self._context_tokens = 0
        self.idle_timeout_s: int | None = None
        self.fork_parent: dict[str, Any] | None = None  # a fork: the stored parent's session resource
        self.outbound = False  # an outbound SIP call (rings when a sideband attaches)
        self._answered = False

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.session is not None

    def start(self, config: dict[str, Any], now: float, client_event_id: str | None = None) -> list[Out]:
        """Start with a validated startup config; the usage clock starts now."""
        websocket = self.transport == "websocket"
        expires_at = int(now + self.config.max_session_seconds)
        self.session = settings.resolve(config, session_id=self.id, expires_at=expires_at, websocket=websocket)
        self.idle_timeout_s = config.get("idle_timeout_s")  # WebRTC: not part of the session resource
        fmt = live_format(self.session["audio"]["format"]) if websocket else PCM24
        self.voice = VoicePath(fmt, websocket=websocket)
        prepaid = self.config.live_webrtc_prepaid_s if self.transport == "webrtc" else 0
        self.meter = VoiceMeter(now, prepaid_s=prepaid, breakdown=self.transport != "websocket")
        self._context_tokens = text_tokens(self.session.get("instructions") or "")
        return [("all", self._with_reply(event("session.started", session=self.session), client_event_id))]

    def start_event(self) -> dict[str, Any]:
        """`session.started` again, for a data channel that opens after an HTTP create."""
        return event("session.started", session=self.session)

    def permissions_info(self) -> dict[str, Any]:
        message = "Frontend data channel limited to the configured events."
        return event("info", code="data_channel_permissions", message=message)

    def on_attach(self) -> list[Out]:
        """A sideband attached: an outbound SIP call rings and answers for the first one."""
        if self.transport != "sip" or not self.outbound or self._answered:
            return []
        self._answered = True
        ringing = event("transport.ringing", session_id=self.id)
        return [("sideband", ringing), ("sideband", event("transport.answered", session_id=self.id))]

    def tick(self, now: float) -> list[Out]:
        """The periodic `session.usage.updated` (cumulative, never a delta)."""
        if self.meter is None or self.closed_reason is not None:
            return []
        ratio = min(1.0, round(self._context_tokens / CONTEXT_LIMIT_TOKENS, 4))
        usage = event("session.usage.updated", usage=self.meter.report(now), context_window={"usage_ratio": ratio})
        return [("all", usage)]

    def close(self, reason: str, now: float, client_event_id: str | None = None) -> list[Out]:
        """End the session: `session.closed` with the final usage (once)."""
        if self.closed_reason is not None or self.meter is None or self.session is None:
            self.closed_reason = self.closed_reason or reason
            return []
        self.closed_reason = reason
        self.meter.end(now)
        closed = event("session.closed", reason=reason, usage=self.meter.report(now), session=self.session)
        return [("all", self._with_reply(closed, client_event_id))]

    def pause(self, now: float) -> list[Out]:
        """The idle timeout paused inference: standby billing starts (sidebands are told)."""
        if self.meter is None or self.meter.paused or self.closed_reason is not None:
            return []
        self.meter.pause(now)
        return [("sideband", event("session.paused"))]

    def resume(self, now: float) -> list[Out]:
        if self.meter is None or not self.meter.paused:
            return []
        self.meter.resume(now)
        return [("sideband", event("session.resumed"))]

    # --- input -----------------------------------------------------------------------------

    def receive_text(self, text: str, now: float, *, allowed: frozenset[str] = PRIMARY_EVENTS) -> list[Out]:
        """One client text frame; bad input becomes an `error` event, never an exception."""
        client_event_id: str | None = None
        try:
            try:
                message = json.loads(text)
            except ValueError:
                raise ProtocolError("The event is not valid JSON.", code="invalid_json") from None
            if not isinstance(message, dict):
                raise ProtocolError("The event must be a JSON object.", code="invalid_json")
            self.client_events.append(message)
            raw_id = message.get("event_id")
            client_event_id = raw_id if isinstance(raw_id, str) else None
            kind = message.get("type")
            if not isinstance(kind, str):
                raise ProtocolError.missing("type")
            if kind not in allowed:
                raise ProtocolError.invalid(
                    "type", f"Invalid value: '{kind}'. Supported values are: {sorted(allowed)}."
                )
            if kind != "session.start" and not self.started:
                raise ProtocolError("The first event must be session.start.", code="session_not_started")
            if self.closed_reason is not None:
                raise ProtocolError("The session is closed.", code="session_closed")
            handler = getattr(self, "_on_" + kind.replace(".", "_"))
            outs: list[Out] = handler(message, now, client_event_id)
            return outs
        except ProtocolError as exc:
            return [("primary", live_error(exc, client_event_id))]

    def receive_audio(self, data: bytes, now: float) -> list[Out]:
        """Input audio in the session's format (WebRTC: PCM16 24 kHz from the track)."""
        if self.voice is None or self.closed_reason is not None:
            return []
        turns, outs = self.voice.feed(data, muted=self.muted)
        if self.voice.speech_started:
            outs += self.resume(now)
        for turn in turns:
            outs += self._user_turn(turn.start_ms, turn.end_ms, now)
        return outs

    # --- client events ---------------------------------------------------------------------

    def _on_session_start(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        if self.started:
            raise ProtocolError("The session has already started.", code="session_already_started")
        if "session" not in message:
            raise ProtocolError.missing("session")
        if self.fork_parent is not None:
            config = settings.fork_config(self.fork_parent, message["session"], websocket=True)
        else:
            config = settings.check_start(message["session"], settings.WEBSOCKET_START, self.config.live_models)
        return self.start(config, now, reply)

    def _on_session_update(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        assert self.session is not None
        update = settings.check_keys(message.get("session"), settings.UPDATE, "session")
        delegation = settings.check_delegation(update.get("delegation"), "session.delegation", start=False)
        if "triggers" in update:
            self.session["triggers"] = settings.check_triggers(update["triggers"], "session.triggers")
        self.session["delegation"] = settings.merge_delegation(
            self.session.get("delegation"), delegation, "session.delegation"
        )
        return [("all", self._with_reply(event("session.updated", session=self.session), reply))]

    def _on_session_input_audio_append(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        audio = message.get("audio")
        try:
            data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise ProtocolError.invalid("audio", "Invalid 'audio': expected base64-encoded audio.")
        assert self.voice is not None
        if len(data) % self.voice.format.bytes_per_sample:
            raise ProtocolError.invalid("audio", "Invalid 'audio': expected whole samples.")
        return self.receive_audio(data, now)

    def _on_session_input_audio_mute(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        self.muted = True
        return [("all", self._with_reply(event("session.input_audio.muted"), reply))]

    def _on_session_input_audio_unmute(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        self.muted = False
        return [("all", self._with_reply(event("session.input_audio.unmuted"), reply))]

    def _on_session_output_audio_fixture_play(
        self, message: dict[str, Any], now: float, reply: str | None
    ) -> list[Out]:
        if not isinstance(message.get("audio"), str):
            raise ProtocolError.missing("audio")
        playing = self._with_reply(event("session.output_audio.fixture.playing"), reply)
        return [("all", playing), ("all", self._with_reply(event("session.output_audio.fixture.played"), reply))]

    def _append(self, kind: str, message: dict[str, Any], reply: str | None) -> list[Out]:
        content = message.get("content")
        if not isinstance(content, str):
            raise ProtocolError.missing("content")
        if "delegation_id" not in message:
            raise ProtocolError.missing("delegation_id")
        if text_tokens(content) > MAX_APPEND_TOKENS:
            raise ProtocolError.invalid("content", f"content exceeds {MAX_APPEND_TOKENS} tokens.")
        self._context_tokens += text_tokens(content)
        assert self.voice is not None
        at = self.voice.timeline_ms
        return [("all", self._with_reply(event(f"session.{kind}.appended", start_ms=at, end_ms=at), reply))]

    def _on_session_instructions_append(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        return self._append("instructions", message, reply)

    def _on_session_thinking_append(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        return self._append("thinking", message, reply)

    def _on_session_commentary_append(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        return self._append("commentary", message, reply)

    def _responses_settings(self) -> dict[str, Any]:
        delegation = (self.session or {}).get("delegation") or {}
        if delegation.get("type") != "responses":
            raise ProtocolError("response.item.create requires Responses delegation.", code="invalid_request_error")
        responses: dict[str, Any] = delegation["responses"]
        return responses

    def _on_response_item_create(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        self._responses_settings()
        if not isinstance(message.get("item"), dict):
            raise ProtocolError.missing("item")
        self._items.append(message["item"])
        return []

    def _on_response_create(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        self._responses_settings()
        task = json.dumps(self._items[-1]) if self._items else "Continue."
        return self._delegate(task, now, reply)

    def _on_decision_create(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        if reply is None:
            raise ProtocolError.missing("event_id")
        if reply in self._decision_event_ids:
            raise ProtocolError.invalid("event_id", "decision.create event_id values cannot be reused.")
        delegation = (self.session or {}).get("delegation") or {}
        if delegation.get("type") != "decisions":
            raise ProtocolError("decision.create requires Decisions delegation.", code="invalid_request_error")
        self._decision_event_ids.add(reply)
        assert self.voice is not None
        dlg = {"id": new_id("dlg", 8), "type": "delegation", "target": "decisions"}
        created = event("session.delegation.created", delegation=dlg, offset_ms=self.voice.timeline_ms)
        result = decision(delegation["decisions"]["model"], delegation["decisions"].get("questions") or [], "")
        done = event(
            "decision.event", delegation_id=dlg["id"], event={"type": "decision.completed", "decision": result}
        )
        return [("all", self._with_reply(created, reply)), ("all", done)]

    def _on_decision_item_create(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        item = message.get("item")
        if not isinstance(item, dict) or item.get("role") not in ("user", "developer", "system", "assistant"):
            raise ProtocolError.invalid("item", "Invalid 'item': expected a message with a role.")
        stored = {**item, "id": item.get("id") or new_id("ditem")}
        stored.setdefault("type", "message")
        self._decision_items[stored["id"]] = stored
        return [("all", self._with_reply(event("decision.item.created", item=stored), reply))]

    def _on_decision_item_delete(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        item_id = message.get("item_id")
        if item_id not in self._decision_items:
            raise ProtocolError.invalid("item_id", f"Decision item '{item_id}' does not exist.")
        del self._decision_items[item_id]
        return [("all", self._with_reply(event("decision.item.deleted", item_id=item_id), reply))]

    def _on_transport_dtmf_send(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        if self.transport != "sip":
            raise ProtocolError("transport.dtmf.send is only supported for SIP sessions.", code="invalid_request_error")
        key = message.get("event")
        if not isinstance(key, str) or len(key) != 1 or key not in "0123456789ABCD*#":
            raise ProtocolError.invalid("event", "event must be one of 0-9, A-D, * or #.")
        return [("sideband", self._with_reply(event("transport.dtmf.sent", event=key), reply))]

    def _on_session_close(self, message: dict[str, Any], now: float, reply: str | None) -> list[Out]:
        return self.close("close_requested", now, reply)

    # --- turns -----------------------------------------------------------------------------

    def _user_turn(self, start_ms: int, end_ms: int, now: float) -> list[Out]:
        assert self.voice is not None
        assert self.session is not None
        transcript = transcript_for(end_ms - start_ms)
        self._context_tokens += text_tokens(transcript)
        heard = event("session.input_transcript.delta", delta=transcript, start_ms=start_ms, end_ms=end_ms)
        outs: list[Out] = [("all", heard), *self._triggered(heard, transcript)]
        if ((self.session.get("delegation") or {}).get("type")) == "responses":
            return outs + self._delegate(transcript, now, None)
        return outs + self._say(reply_for({"audio_ms": end_ms - start_ms}), end_ms, None)

    def _say(self, text: str, after_ms: int, reply: str | None) -> list[Out]:
        assert self.voice is not None
        self._context_tokens += text_tokens(text)
        _, _, outs = self.voice.speak(text, after_ms, reply)
        spoken = outs[0][1]
        return outs[:1] + self._triggered(spoken, text) + outs[1:]

    def _delegate(self, task: str, now: float, reply: str | None) -> list[Out]:
        """A delegated Responses run: delegation.created, the nested stream, then the spoken result."""
        assert self.voice is not None
        settings_ = self._responses_settings()
        dlg_id = new_id("dlg", 8)
        run = plan_response(
            settings_,
            task=task,
            items=self._items,
            previous_input=self._previous_input,
            fails=self.response_fails,
            delegation_id=dlg_id,
            now=now,
        )
        self._items = []
        self._previous_input = run.usage["input_tokens"]
        dlg = {"id": dlg_id, "type": "delegation", "target": "responses", "response_id": run.id}
        outs: list[Out] = [
            (
                "all",
                self._with_reply(
                    event("session.delegation.created", delegation=dlg, offset_ms=self.voice.timeline_ms), reply
                ),
            )
        ]
        for nested in run.stream():
            outs.append(("all", event("response.event", delegation_id=dlg_id, event=nested)))
        self.responses.append(outs[-1][1]["event"]["response"])
        spoken = run.text if run.status != "failed" else "Sorry, I could not get that done."
        return outs + self._say(spoken, self.voice.timeline_ms, None)

    def _triggered(self, source: dict[str, Any], text: str) -> list[Out]:
        """Decisions triggers on this transcript event type."""
        outs: list[Out] = []
        triggers = (self.session or {}).get("triggers") or []
        delegation = (self.session or {}).get("delegation") or {}
        model = (delegation.get("decisions") or {}).get("model") or "gpt-6-luna"
        for index, trigger in enumerate(triggers):
            if trigger["event_type"] != source["type"]:
                continue
            result = decision(model, trigger["decisions"].get("questions") or [], text)
            outs.append(
                (
                    "all",
                    event(
                        "decision.event",
                        trigger_id=f"trg_{index}",
                        source_event_id=source["event_id"],
                        source_event_type=source["type"],
                        event={"type": "decision.completed", "decision": result},
                    ),
                )
            )
        return outs

    @staticmethod
    def _with_reply(server_event: dict[str, Any], client_event_id: str | None) -> dict[str, Any]:
        if client_event_id is not None:
            server_event["client_event_id"] = client_event_id
        return server_event
