"""The Live transport's settings: how its governor reserves budget and waits at a close.

Read from the environment once (`LiveSettings.from_env`) and kept on the app's state, so a
test or an embedding app injects its own (`use_live_settings(app, settings)`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from litestar import Litestar

from policies.live.governor import LiveLimitsConfig

_STATE_KEY = "voxgate_live_settings"


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """`VOXGATE_LIVE_RESERVE_AHEAD_SECONDS` (30): session time reserved against the budget ahead of
    usage reports; `VOXGATE_LIVE_CLOSE_WAIT_SECONDS` (2): how long a close waits for `session.closed`."""

    limits: LiveLimitsConfig = field(default_factory=LiveLimitsConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LiveSettings:
        env = os.environ if env is None else env
        defaults = LiveLimitsConfig()
        return cls(
            LiveLimitsConfig(
                reserve_ahead_s=float(env.get("VOXGATE_LIVE_RESERVE_AHEAD_SECONDS", defaults.reserve_ahead_s)),
                close_wait_s=float(env.get("VOXGATE_LIVE_CLOSE_WAIT_SECONDS", defaults.close_wait_s)),
            )
        )


def use_live_settings(app: Litestar, settings: LiveSettings) -> None:
    """Give `app`'s Live sessions these settings (new sessions only)."""
    app.state[_STATE_KEY] = settings


def live_settings(app: Litestar) -> LiveSettings:
    """`app`'s Live settings: the injected ones, else the environment's (read once)."""
    settings = app.state.get(_STATE_KEY)
    if not isinstance(settings, LiveSettings):
        settings = LiveSettings.from_env()
        app.state[_STATE_KEY] = settings
    return settings
