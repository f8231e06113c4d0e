"""Bursts and faults against a real `voxgate serve` process (tests/test_burst.py, tests/test_faults.py,
bench/burst.py): the clients, one burst end to end, and its figures (observations: tests/support/observed.py).

The gateway runs as its own process (tests/support/gateway_process.py). Clients and the emulator
run in the caller's loop. Everything here observes from outside: the emulator's record of what
upstream reported, the clients' record of what they saw, SQL over the ledger, raw Redis keys
(layout from docs/live-state.md), and prices hand-copied from docs/pricing.md. Nothing is priced
or counted with the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emulator.audio import silence, tone
from tests.support.gateway_process import MODEL, GatewayProcess
from tests.support.observed import (
    TRANSCRIBER,
    Counters,
    Ledger,
    Upstream,
    percentile,
    price_response,
    price_transcription,
    worst_case,
)

# -- clients -----------------------------------------------------------------------------------

VOICE_TONE_MS, VOICE_SILENCE_MS = 200, 300
# Short turns: the server VAD ends a turn after 200 ms of silence.
FAST_VAD = {"type": "server_vad", "silence_duration_ms": 200, "prefix_padding_ms": 0}


def _append(chunk: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


VOICE_TURN = (_append(tone(VOICE_TONE_MS)), _append(silence(VOICE_SILENCE_MS)))


@dataclass
class Plan:
    """What one client session does: `turns` in order ("text": item + response.create; "voice":
    audio the server VAD answers), optionally with input transcription, then closes."""

    tenant_id: str
    secret: str = field(repr=False)
    turns: tuple[str, ...]
    transcribe: bool = False
    start_at: float = 0.0  # seconds after the burst's start
    close_after: bool = True
    gate: asyncio.Event | None = None  # wait for it before the first turn
    pause_s: float = 0.0  # between turns
    text: str = "turn"  # what a text turn says (the reply repeats it: longer text, longer response)
    on_done: Callable[[str], None] | None = field(default=None, repr=False)  # called with each response.done id


class Opening:
    """Counts the burst's handshakes down; `all_done` is set once every one was answered."""

    def __init__(self, sessions: int) -> None:
        self.left = sessions
        self.all_done = asyncio.Event()
        if sessions <= 0:
            self.all_done.set()

    def answered(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.all_done.set()


@dataclass
class Outcome:
    plan: Plan
    admitted_at: float | None = None
    refused: int | None = None  # HTTP status of a refused handshake
    refusal: str | None = None
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # response id -> usage, as the client saw it
    created: set[str] = field(default_factory=set)
    turn_seconds: list[float] = field(default_factory=list)  # request -> response.done
    hold_seconds: list[float] = field(default_factory=list)  # previous event -> response.done
    errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None


class _Reader:
    """Reads one session's events, keeping what the figures need."""

    def __init__(self, ws: websockets.ClientConnection, outcome: Outcome) -> None:
        self.ws, self.outcome = ws, outcome
        self.last_at = time.monotonic()

    async def until(self, kinds: Iterable[str], seconds: float) -> dict[str, Any]:
        wanted = set(kinds)
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.ws.recv()
                at = time.monotonic()
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "response.created":
                    self.outcome.created.add(event["response"]["id"])
                elif kind == "response.done":
                    self.outcome.done[event["response"]["id"]] = event["response"].get("usage") or {}
                    self.outcome.hold_seconds.append(at - self.last_at)
                    if self.outcome.plan.on_done is not None:
                        self.outcome.plan.on_done(event["response"]["id"])
                elif kind == "error":
                    self.outcome.errors.append(str(event["error"].get("code")))
                self.last_at = at
                if kind in wanted or (kind == "error" and event["error"].get("code") == "budget_exhausted"):
                    return dict(event)


async def run_session(
    url: str, plan: Plan, t0: float, turn_timeout: float = 20.0, opening: Opening | None = None
) -> Outcome:
    """One raw WebSocket client following `plan`; never raises for what the gateway does."""
    outcome = Outcome(plan)
    await asyncio.sleep(max(0.0, t0 + plan.start_at - time.monotonic()))
    try:
        ws = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {plan.secret}"}, open_timeout=60, max_size=None
        )
    except (InvalidStatus, OSError, TimeoutError) as exc:
        if isinstance(exc, InvalidStatus):
            outcome.refused = exc.response.status_code
            with contextlib.suppress(Exception):
                outcome.refusal = json.loads(exc.response.body or b"{}")["error"]["code"]
        else:
            outcome.refusal = type(exc).__name__
        if opening is not None:
            opening.answered()
        return outcome
    reader = _Reader(ws, outcome)
    try:
        try:
            await reader.until(["session.created"], turn_timeout)
            outcome.admitted_at = time.monotonic() - t0
        finally:
            if opening is not None:
                opening.answered()
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"turn_detection": FAST_VAD}}}
        if plan.transcribe:
            session["audio"]["input"]["transcription"] = {"model": TRANSCRIBER}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await reader.until(["session.updated"], turn_timeout)
        if plan.gate is not None:
            await asyncio.wait_for(plan.gate.wait(), 60)
        for n, turn in enumerate(plan.turns):
            if n and plan.pause_s:
                await asyncio.sleep(plan.pause_s)
            started = time.monotonic()
            if turn == "text":
                text = f"{plan.text} {n}"
                item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                await ws.send(json.dumps({"type": "response.create"}))
            else:
                for frame in VOICE_TURN:
                    await ws.send(frame)
            event = await reader.until(["response.done"], turn_timeout)
            if event["type"] != "response.done":  # refused for the budget: the gateway closes the session
                break
            outcome.turn_seconds.append(time.monotonic() - started)
        if plan.close_after:
            await ws.close()
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await reader.until([], turn_timeout)  # whatever the gateway still sends, until it closes
    except ConnectionClosed:
        pass
    except TimeoutError:
        outcome.errors.append("client_timeout")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)
        outcome.close_code = ws.close_code
        outcome.close_reason = ws.close_reason
    return outcome


async def run_sdk_session(base_url: str, secret: str, turns: int) -> Outcome:
    """One session through the real `openai` SDK: `turns` text turns."""
    from openai import AsyncOpenAI

    outcome = Outcome(Plan("", secret, ("text",) * turns))
    client = AsyncOpenAI(base_url=base_url, api_key=secret, max_retries=0)
    try:
        await _sdk_turns(client, outcome, turns)
    except InvalidStatus as exc:
        outcome.refused = exc.response.status_code
    except (ConnectionClosed, TimeoutError) as exc:
        outcome.errors.append(type(exc).__name__)
    finally:
        await client.close()
    return outcome


async def _sdk_turns(client: Any, outcome: Outcome, turns: int) -> None:
    """The SDK session's turns: admitted_at, created, done and latencies go into `outcome`."""
    async with client.realtime.connect(model=MODEL) as conn:
        outcome.admitted_at = 0.0
        for n in range(turns):
            started = time.monotonic()
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"sdk {n}"}]}
            )
            await conn.response.create()
            async with asyncio.timeout(30):
                async for event in conn:
                    if event.type == "error":
                        outcome.errors.append(str(event.error.code))
                    if event.type == "response.created":
                        outcome.created.add(event.response.id or "")
                    if event.type == "response.done":
                        usage = event.response.usage
                        outcome.done[event.response.id or ""] = usage.model_dump() if usage else {}
                        outcome.turn_seconds.append(time.monotonic() - started)
                        break


# -- one burst, end to end ------------------------------------------------------------------------


@dataclass
class BurstShape:
    """The burst: `budget_sessions` of a tenant with a daily budget (each keeps taking turns until the
    budget cuts it), `free_sessions` of an unlimited tenant (a few turns each, every third transcribed),
    and `sdk_sessions` through the `openai` SDK, all opened within `open_within_s`."""

    budget_sessions: int = 160
    budget_turns: int = 8
    daily_usd: str = "1.20"
    max_output_tokens: int = 100
    free_sessions: int = 160
    free_turns: int = 2
    free_pause_s: float = 0.0  # between a free session's turns (the bench's --seconds)
    sdk_sessions: int = 1
    open_within_s: float = 0.9

    @property
    def sessions(self) -> int:
        return self.budget_sessions + self.free_sessions + self.sdk_sessions

    @property
    def daily_micro_usd(self) -> int:
        whole, _, frac = self.daily_usd.partition(".")
        return int(whole) * 1_000_000 + int((frac + "000000")[:6])


@dataclass
class Figures:
    """What a burst measured: everything the tests assert and the bench prints."""

    shape: BurstShape
    outcomes: list[Outcome]
    upstream: Upstream
    ledger: Ledger
    counters: dict[str, Counters]  # tenant id -> raw Redis counters
    budget_tenant: str
    free_tenant: str
    bound_micro_usd: int  # sum over the budget tenant's sessions of its dearest response
    max_response_micro_usd: int  # the budget tenant's dearest response
    worst_case_micro_usd: int  # W: the largest worst case of one of its responses (a lower bound of its reservation)
    mispriced: list[str]
    seconds: float
    opened_s: float  # burst start -> last session.created

    @property
    def admitted(self) -> int:
        return sum(o.admitted_at is not None for o in self.outcomes)

    @property
    def budget_sessions_admitted(self) -> int:
        return sum(o.admitted_at is not None and o.plan.tenant_id == self.budget_tenant for o in self.outcomes)

    @property
    def refused(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.admitted_at is None:
                key = f"{o.refused} {o.refusal}"
                out[key] = out.get(key, 0) + 1
        return out

    @property
    def client_done(self) -> set[str]:
        return {rid for o in self.outcomes for rid in o.done}

    @property
    def lost(self) -> set[str]:
        """Responses upstream started (so may bill) or transcriptions it completed, with no ledger row."""
        return (self.upstream.started - self.ledger.responses.keys()) | (
            self.upstream.transcriptions.keys() - self.ledger.transcriptions.keys()
        )

    def lost_by_tenant(self) -> dict[str, int]:
        """Lost responses by the tenant whose client saw them start ("unseen": no client saw them)."""
        out: dict[str, int] = {}
        seen: set[str] = set()
        for o in self.outcomes:
            lost = o.created & self.lost
            seen |= lost
            if lost:
                key = "budget" if o.plan.tenant_id == self.budget_tenant else "free"
                out[key] = out.get(key, 0) + len(lost)
        if unseen := len(self.lost - seen):
            out["unseen"] = unseen
        return out

    def describe_lost(self, sessions: Iterable[Any], limit: int = 3) -> list[str]:
        """For a few lost responses: the upstream events from the session's start of that response on."""
        out: list[str] = []
        for session in sessions:
            kinds = [(e["type"], e.get("response", {}).get("id")) for e in session.server_events]
            for n, (kind, rid) in enumerate(kinds):
                if kind == "response.created" and rid in self.lost and len(out) < limit:
                    tail = [k for k, _ in kinds[n:]][:12]
                    client = [e["type"] for e in session.client_events][-4:]
                    out.append(
                        f"{rid}: upstream sent {tail}; last client events {client}; "
                        f"closed={session.closed} close_code={session.close_code}"
                    )
        return out

    @property
    def extra(self) -> set[str]:
        """Ledger rows upstream never reported usage for."""
        return (self.ledger.responses.keys() - self.upstream.done.keys()) | (
            self.ledger.transcriptions.keys() - self.upstream.transcriptions.keys()
        )

    @property
    def overshoot(self) -> int:
        return self.ledger.cost(self.budget_tenant) - self.shape.daily_micro_usd

    @property
    def leaked_leases(self) -> int:
        return sum(c.leases for c in self.counters.values())

    @property
    def budget_cut(self) -> int:
        """Budget-tenant sessions the budget refused or closed."""
        return sum(
            o.plan.tenant_id == self.budget_tenant and ("budget_exhausted" in o.errors or o.close_code == 4003)
            for o in self.outcomes
        )

    def latencies(self) -> tuple[list[float], list[float]]:
        return ([s for o in self.outcomes for s in o.turn_seconds], [s for o in self.outcomes for s in o.hold_seconds])

    def summary(self) -> dict[str, Any]:
        turns, holds = self.latencies()
        limit = self.shape.daily_micro_usd
        return {
            "sessions": len(self.outcomes),
            "admitted": self.admitted,
            "refused": self.refused,
            "opened_s": round(self.opened_s, 2),
            "seconds": round(self.seconds, 1),
            "responses_started": len(self.upstream.started),
            "responses_done": len(self.upstream.done),
            "client_saw_done": len(self.client_done),
            "transcriptions": len(self.upstream.transcriptions),
            "ledger_rows": self.ledger.response_rows + self.ledger.transcription_rows,
            "lost": len(self.lost),
            "lost_by_tenant": self.lost_by_tenant(),
            "extra": len(self.extra),
            "mispriced": len(self.mispriced),
            "ledger_micro_usd": self.ledger.cost(),
            "upstream_micro_usd": self.upstream.cost,
            "budget_micro_usd": limit,
            "budget_spent_micro_usd": self.ledger.cost(self.budget_tenant),
            "overshoot_micro_usd": self.overshoot,
            "overshoot_pct": round(100 * self.overshoot / limit, 2),
            "overshoot_bound_micro_usd": self.bound_micro_usd,
            "S_x_W_micro_usd": self.budget_sessions_admitted * self.worst_case_micro_usd,
            "budget_sessions_cut": self.budget_cut,
            "leaked_leases": self.leaked_leases,
            "counters": {("budget" if t == self.budget_tenant else "free"): vars(c) for t, c in self.counters.items()},
            "turn_p50_ms": round(1000 * percentile(turns, 0.5), 1),
            "turn_p99_ms": round(1000 * percentile(turns, 0.99), 1),
            "done_hold_p50_ms": round(1000 * percentile(holds, 0.5), 2),
            "done_hold_p99_ms": round(1000 * percentile(holds, 0.99), 2),
        }


RELEASE_WITHIN_S = 5.0  # the lease TTL is 30 s by default: a lease still held after this leaked
BASE_POLICY: dict[str, Any] = {"models": [MODEL], "voices": ["marin", "cedar", "alloy"]}


async def set_policy(pool: asyncpg.Pool, tenant_id: str, document: dict[str, Any]) -> None:
    from gateway.storage.policy_store import PolicyStore  # the admin API's own path to store a policy

    await PolicyStore(pool, {}, None).set(tenant_id, document, actor="burst")


async def run_burst(
    shape: BurstShape,
    gateway: GatewayProcess,
    emulator: Any,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    prefix: str,
    tenants: tuple[Any, Any],
    disturb: Callable[[asyncio.Event], Awaitable[None]] | None = None,
) -> Figures:
    """Open the burst against `gateway`, wait for every session to end and the ledger to settle, read the figures.

    `tenants` = (budget tenant, free tenant), each with `tenant_id` and `secret`; `disturb` (faults)
    runs alongside the traffic and is given the event set once every handshake was answered."""
    budget, free = tenants
    await set_policy(
        pool,
        budget.tenant_id,
        {
            **BASE_POLICY,
            "max_output_tokens": shape.max_output_tokens,
            "budget": {"daily_usd": shape.daily_usd, "at_limit": "finish_response"},
        },
    )
    await set_policy(pool, free.tenant_id, dict(BASE_POLICY))
    budget_turns = tuple("voice" if n % 2 == 0 else "text" for n in range(shape.budget_turns))
    opening = Opening(shape.budget_sessions + shape.free_sessions)
    # The budget tenant starts its turns once the whole burst is open, so the budget is crossed
    # mid-burst and never before one of its sessions was admitted.
    keyed = [
        (n / shape.budget_sessions, Plan(budget.tenant_id, budget.secret, budget_turns, gate=opening.all_done))
        for n in range(shape.budget_sessions)
    ]
    for n in range(shape.free_sessions):
        transcribed = n % 3 == 0
        turns = ("text", "voice") if transcribed else ("text",)
        keyed.append(
            (
                n / shape.free_sessions,
                Plan(
                    free.tenant_id,
                    free.secret,
                    (turns * shape.free_turns)[: shape.free_turns],
                    transcribed,
                    pause_s=shape.free_pause_s,
                ),
            )
        )
    # Interleave the two tenants, and spread the handshakes evenly over the opening window.
    plans = [plan for _, plan in sorted(keyed, key=lambda k: k[0])]
    for n, plan in enumerate(plans):
        plan.start_at = shape.open_within_s * n / max(1, len(plans))
    t0 = time.monotonic()
    tasks = [run_session(gateway.ws_url, plan, t0, opening=opening) for plan in plans]
    tasks += [run_sdk_session(gateway.base_url, free.secret, 2) for _ in range(shape.sdk_sessions)]
    faults = asyncio.ensure_future(disturb(opening.all_done)) if disturb is not None else None
    outcomes: list[Outcome] = list(await asyncio.gather(*tasks))
    if faults is not None:
        await faults
    for o in outcomes[len(plans) :]:
        o.plan.tenant_id = free.tenant_id
    seconds = time.monotonic() - t0
    await gateway.idle()
    ids = (budget.tenant_id, free.tenant_id)
    ledger = await Ledger.read(pool, ids)
    upstream = Upstream.of(emulator.sessions)
    mispriced = [
        rid
        for rid, (_, cost) in ledger.responses.items()
        if rid in upstream.done and cost != price_response(upstream.done[rid])
    ]
    mispriced += [
        iid
        for iid, (_, cost) in ledger.transcriptions.items()
        if iid in upstream.transcriptions and cost != price_transcription(upstream.transcriptions[iid])
    ]
    # The overshoot bound (docs/budgets.md): at most one response per live session past the limit.
    rows = await pool.fetch("SELECT session_id, response_id FROM usage_ledger WHERE tenant_id = $1", budget.tenant_id)
    dearest: dict[str, int] = {}
    worst = 0
    for row in rows:
        usage = upstream.done.get(row["response_id"])
        if usage is not None:
            dearest[row["session_id"]] = max(dearest.get(row["session_id"], 0), price_response(usage))
            worst = max(worst, worst_case(shape.max_output_tokens, usage["input_tokens"]))
    # Leases and holds are given back when sessions end, and counters catch up with the ledger (a failed
    # release or settle is retried): allow a few seconds, far below the lease TTL, before calling it a leak.
    deadline = time.monotonic() + RELEASE_WITHIN_S
    while True:
        counters = {t: await Counters.read(redis, prefix, t) for t in ids}
        if all((c.leases, c.reserved, c.spent_day) == (0, 0, ledger.cost(t)) for t, c in counters.items()):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    admitted = [o.admitted_at for o in outcomes if o.admitted_at is not None]
    return Figures(
        shape,
        outcomes,
        upstream,
        ledger,
        counters,
        budget.tenant_id,
        free.tenant_id,
        sum(dearest.values()),
        max(dearest.values(), default=0),
        worst,
        mispriced,
        seconds,
        max(admitted, default=float("nan")),
    )
