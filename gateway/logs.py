"""Process logging: one root handler, a level, text or JSON lines, and redaction at every level.

`voxgate serve` and `voxgate demo` call `configure_logging` once; the app itself never touches
logging (the process owns it). Every record that reaches the handler goes through
`RedactingFilter` first, so a library that logs at DEBUG (the `websockets` client prints its
request headers, the server its frames) cannot put a credential or conversation text in the log.
`SessionFilter` then adds the session a line is about (`session_id`, `tenant_id`, and with
tracing on `trace_id`, `span_id`: gateway.telemetry.context); a line may also carry `fields`
(the session summary's figures). docs/observability.md lists every field.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO

import orjson

from gateway.settings import LogSettings
from gateway.telemetry.context import bound_session

REDACTED = "[redacted]"

# Credentials by shape. Keys and tokens are replaced whole, keeping a short marker so a reader
# can tell what kind of value was there.
_SECRETS: list[tuple[re.Pattern[str], str]] = [
    # A header value, as a line (`Authorization: Bearer x`), a mapping or a tuple of (bytes) strings.
    (
        re.compile(
            r"\b((?i:(?:proxy-)?authorization|(?:set-)?cookie|x-api-key|api-key|openai-api-key))"
            r"(['\"]\s*,\s*b?['\"]|['\"]?\s*[:=]\s*(?:b?['\"])?)([^'\"\r\n]+)"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"openai-insecure-api-key\.[^\s,'\"]+"), f"openai-insecure-api-key.{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), f"jwt:{REDACTED}"),  # a JWT (JSON header)
    (re.compile(r"\bsk-[A-Za-z0-9_-]{4,}"), f"sk-{REDACTED}"),
    (re.compile(r"\bvg_live_[A-Za-z0-9_-]+"), f"vg_live_{REDACTED}"),
    (re.compile(r"\bek_[A-Za-z0-9_-]{4,}"), f"ek_{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_+/=-]+"), f"whsec_{REDACTED}"),
    # A password in a URL (a database or Redis DSN).
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
    # Credentials in a query string or a form.
    (re.compile(r"(?i)\b(api[_-]?key|client_secret|access_token|token|password)=[^&\s'\"]+"), rf"\1={REDACTED}"),
]

# Realtime payload text: a WebSocket frame as the `websockets` library logs it keeps only its
# opcode and length; a JSON or Python-repr field that carries conversation content keeps its key.
_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY|CONT|PING|PONG)) .*(\[(?:\w+, )?\d+ bytes?(?:, continued)?\])$", re.DOTALL)
_CONTENT = re.compile(
    r"""(["'](?:text|delta|transcript|audio|instructions|arguments|input|output|prompt|content|sdp)["']\s*:\s*)"""
    r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')"""
)


def redact(text: str) -> str:
    """`text` with every credential and every piece of conversation content replaced."""
    frame = _FRAME.match(text)
    if frame is not None:
        return f"{frame.group(1)} {REDACTED} {frame.group(2)}"
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return _CONTENT.sub(rf"\1'{REDACTED}'", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, exception and stack text through `redact`; drops nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record, nor skip redaction
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# What a line about a session carries, in this order (from the context, or `extra=` where a
# transport callback logs outside the session's task).
SESSION_KEYS = ("session_id", "tenant_id", "trace_id", "span_id")


class SessionFilter(logging.Filter):
    """Puts the bound session's ids on the record (the `extra=` a caller gave wins); drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = bound_session()
        if bound is not None:
            for key, value in bound.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def _context(record: logging.LogRecord) -> dict[str, object]:
    """The record's session ids and its `fields`, strings redacted like the message."""
    found: dict[str, object] = {key: getattr(record, key) for key in SESSION_KEYS if hasattr(record, key)}
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        found.update(fields)
    return {key: redact(value) if isinstance(value, str) else value for key, value in found.items()}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `message`, the session's ids and fields,
    and `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, then the session's ids and fields as `key=value` pairs."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        context = _context(record)
        return text + "".join(f" {key}={value}" for key, value in context.items()) if context else text


# Chatty below WARNING and never about anything an operator needs from voxgate's own log.
_QUIET = {"pgserver": logging.WARNING, "hpack": logging.INFO}


def configure_logging(settings: LogSettings, stream: IO[str] | None = None) -> logging.Handler:
    """Install voxgate's root handler (replacing one installed before) at `settings.level`.

    Handlers someone else put on the root logger stay; voxgate's own is the one with the filter.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "voxgate", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.voxgate = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    handler.addFilter(SessionFilter())
    handler.setFormatter(JsonLineFormatter() if settings.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("voxgate.logs").debug("logging at %s as %s", settings.level, settings.format)
    return handler
