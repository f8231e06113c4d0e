"""Waiting in end-to-end tests for something another process (the gateway, the ledger) does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def until(predicate: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
    """Poll `predicate` every 50 ms until it returns something truthy, and return that; else TimeoutError."""
    async with asyncio.timeout(seconds):
        while not (found := await predicate()):
            await asyncio.sleep(0.05)
    return found
