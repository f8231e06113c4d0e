"""A local, deterministic stand-in for the OpenAI Realtime API (GA protocol), GPT-Live and translation.

It is the upstream in voxgate's tests and in `voxgate demo`; see docs/emulator.md.
"""

from emulator.config import EmulatorConfig, Faults, RateLimits
from emulator.connection import EmulatedSession
from emulator.emulator import RealtimeEmulator

__all__ = ["EmulatedSession", "EmulatorConfig", "Faults", "RateLimits", "RealtimeEmulator"]
