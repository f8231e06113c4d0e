"""What a transport does with one message, tick or late answer: the shell's side of the actions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from policies.actions import CloseSession


@dataclass(frozen=True, slots=True)
class Verdict:
    """The transport's share of the governor's actions for one message (or tick)."""

    forward: bool
    to_client: tuple[str, ...] = ()
    to_upstream: tuple[str, ...] = ()
    close: CloseSession | None = None
    # Resolves once the billed record this message produced is durable (LedgerWriter.submit_durable).
    durable: asyncio.Future[None] | None = None


PASS = Verdict(forward=True)
HOLD = Verdict(forward=False)

# How a transport takes a verdict produced off its frame path (a tick, a reservation's answer).
Deliver = Callable[[Verdict], Awaitable[None]]


def encode(event: object) -> str:
    return orjson.dumps(event).decode()
