"""Work a GPT-Live session delegates: Responses runs and Decisions, with deterministic usage.

Pure functions over the session's delegation settings, so a test can predict every token
count (docs/emulator.md, "GPT-Live usage"):
- a delegated response's input is its backend instructions, its tools (as JSON), the items
  appended with `response.item.create` (as JSON) and the task text, each `text_tokens`;
  its cached input is the previous response's input rounded down to 64 tokens (capped);
  its output is the reasoning tokens of its effort plus the reply's text tokens, cut at
  `max_output_tokens` (then `response.incomplete`, reason `max_output_tokens`);
- a decision's input is the questions (as JSON) plus the source text; one output token per answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from emulator.errors import new_id
from emulator.usage import CACHE_BLOCK_TOKENS, text_tokens

REASONING_TOKENS = {"none": 0, "minimal": 8, "low": 16, "medium": 32, "high": 64, "xhigh": 128}


def backend_reply(task: str) -> str:
    return f"Backend result for: {task}"


def token_usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass
class DelegatedResponse:
    """One delegated Responses run, planned in full when it starts."""

    id: str
    delegation_id: str
    model: str
    service_tier: str
    status: str  # "completed" | "incomplete" | "failed"
    text: str  # what the backend produced (cut when incomplete)
    usage: dict[str, Any]
    created_at: int

    def snapshot(self, status: str, *, usage: bool) -> dict[str, Any]:
        """A lifecycle snapshot as Live sends it: no input, instructions, tools or output."""
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "service_tier": self.service_tier,
            "output": [],
            "instructions": None,
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }
        if usage:
            response["usage"] = self.usage
        if status == "incomplete":
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if status == "failed":
            response["error"] = {"code": "server_error", "message": "The delegated response failed (emulated fault)."}
        return response

    def stream(self) -> list[dict[str, Any]]:
        """The nested Responses streaming events, in order, ending with the terminal one."""
        item_id = new_id("msg")
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self.snapshot("in_progress", usage=False)}
        ]
        if self.status != "failed":
            part = {"item_id": item_id, "output_index": 0, "content_index": 0, "logprobs": []}
            events.append({"type": "response.output_text.delta", **part, "delta": self.text})
            events.append({"type": "response.output_text.done", **part, "text": self.text})
        events.append({"type": f"response.{self.status}", "response": self.snapshot(self.status, usage=True)})
        for number, event in enumerate(events):
            event["sequence_number"] = number
        return events


def plan_response(
    responses: dict[str, Any],
    *,
    task: str,
    items: list[Any],
    previous_input: int,
    fails: bool,
    delegation_id: str,
    now: float,
) -> DelegatedResponse:
    """The delegated response for `task` under the session's `delegation.responses` settings."""
    input_tokens = text_tokens(responses.get("instructions") or "") + text_tokens(task)
    if responses.get("tools"):
        input_tokens += text_tokens(json.dumps(responses["tools"]))
    input_tokens += sum(text_tokens(json.dumps(item)) for item in items)
    cached = min(previous_input - previous_input % CACHE_BLOCK_TOKENS, input_tokens)
    reply = backend_reply(task)
    reasoning = REASONING_TOKENS.get((responses.get("reasoning") or {}).get("effort") or "none", 0)
    limit = responses.get("max_output_tokens")
    status, text = "completed", reply
    if fails:
        status, text, reasoning, output = "failed", "", 0, 0
    elif limit is not None and reasoning + text_tokens(reply) > limit:
        status = "incomplete"
        reasoning = min(reasoning, limit)
        text = reply[: 4 * (limit - reasoning)]
        output = limit
    else:
        output = reasoning + text_tokens(reply)
    tier = responses.get("service_tier") or "auto"
    return DelegatedResponse(
        id=new_id("resp"),
        delegation_id=delegation_id,
        model=str(responses["model"]),
        service_tier="default" if tier == "auto" else tier,
        status=status,
        text=text,
        usage=token_usage(input_tokens, cached if not fails else 0, output, reasoning),
        created_at=int(now),
    )


def answer(question: dict[str, Any]) -> dict[str, Any]:
    """A fixed, valid answer for one Decisions question."""
    name = {"name": question["name"]} if isinstance(question.get("name"), str) else {}
    kind = question.get("type")
    if kind == "predicate":
        return {"type": "predicate", **name, "probability": 0.5}
    if kind == "choice" and question.get("choices"):
        value = question["choices"][0].get("value", "")
        return {
            "type": "choice",
            **name,
            "choice": value,
            "confidence": 1.0,
            "probabilities": [{"value": value, "probability": 1.0}],
        }
    if kind == "score" and question.get("levels"):
        label = str(question["levels"][0].get("label", ""))
        probabilities = [{"label": label, "value": 0, "probability": 1.0}]
        return {"type": "score", **name, "score": 0.0, "confidence": 1.0, "probabilities": probabilities}
    return {"type": "refusal", **name}


def decision(model: str, questions: list[Any], source_text: str) -> dict[str, Any]:
    """The `decision` object of a `decision.completed` event."""
    answers = [answer(q) for q in questions if isinstance(q, dict)]
    input_tokens = text_tokens(json.dumps(questions)) + text_tokens(source_text)
    return {"model": model, "answers": answers, "usage": token_usage(input_tokens, 0, len(answers), 0)}
