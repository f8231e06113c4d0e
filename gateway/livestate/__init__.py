"""Live state shared across replicas in Redis: leases, start rates, budgets, broadcasts, headroom."""

from gateway.livestate.broadcast import RESYNC, Broadcast
from gateway.livestate.budgets import ReserveResult, SpendState
from gateway.livestate.leases import LeaseResult
from gateway.livestate.ratelimits import Headroom, StartResult
from gateway.livestate.state import LiveState

__all__ = [
    "RESYNC",
    "Broadcast",
    "Headroom",
    "LeaseResult",
    "LiveState",
    "ReserveResult",
    "SpendState",
    "StartResult",
]
