"""Live state shared across replicas in Redis: leases, monitor claims, start rates, budgets, broadcasts, headroom.

`LiveStateBackend` is the interface; `LiveState` keeps it in Redis (across replicas),
`MemoryLiveState` in one process's memory.
"""

from gateway.livestate.base import LiveStateBackend, TenantView
from gateway.livestate.broadcast import RESYNC, Broadcast
from gateway.livestate.budgets import ReserveResult, SpendState
from gateway.livestate.leases import LeaseResult
from gateway.livestate.memory import MemoryLiveState, MemoryStore
from gateway.livestate.ratelimits import Headroom, StartResult
from gateway.livestate.state import LiveState

__all__ = [
    "RESYNC",
    "Broadcast",
    "Headroom",
    "LeaseResult",
    "LiveState",
    "LiveStateBackend",
    "MemoryLiveState",
    "MemoryStore",
    "ReserveResult",
    "SpendState",
    "StartResult",
    "TenantView",
]
