"""Logging set-up: human-readable lines by default, JSON lines for journald or cloud ingestion.

Secrets never reach a log: every formatted line passes a redaction step that replaces the
configured secret values (passwords, tokens) with ``***``, whatever logged them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

__all__ = ["JsonFormatter", "LogFormat", "RedactingFormatter", "set_secrets", "setup_logging"]

LogFormat = Literal["human", "json"]

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

_secrets: tuple[str, ...] = ()


def set_secrets(values: Iterable[str]) -> None:
    """Register the secret values to redact from every log line (longest first)."""
    global _secrets
    # Very short values would redact ordinary words; config validation keeps secrets long.
    _secrets = tuple(sorted({v for v in values if len(v) >= 4}, key=len, reverse=True))


def _redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFormatter(logging.Formatter):
    """Human-readable lines: ``2026-11-27T06:50:42.123Z INFO sitectl.ocpp: message k=v``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: "
        line += record.getMessage()
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _redact(json.dumps(entry, ensure_ascii=False))


def setup_logging(
    level: str = "INFO", fmt: LogFormat = "human", stream: TextIO | None = None
) -> None:
    """Configure the root logger once for the process.

    Args:
        level: a level name (DEBUG, INFO, WARNING, ERROR).
        fmt: ``human`` or ``json``.
        stream: where to write (default: standard error).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter that would drown an installer's terminal.
    for noisy in ("websockets", "pymodbus", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
