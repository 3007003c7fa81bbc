"""Logging set-up: human-readable lines by default, JSON lines for journald or cloud ingestion.

Secrets never reach a log: every formatted line passes a redaction step that replaces the
configured secret values (passwords, tokens) with ``***``, whatever logged them. JSON lines are
redacted field by field before they are serialised (a secret with a quote, a backslash or a control
character is escaped by serialising, and would no longer be found after it), and the escaped
forms of each secret (as it looks inside a logged JSON frame or a repr) are redacted too.

A depot runs unattended for months, so the log must stay readable: third-party libraries log at
WARNING and above unless ``--log-level DEBUG`` (pymodbus would log every frame, aiohttp every
request), and a warning of sitectl's own that repeats (a dead meter, every poll) passes once,
then at most once a minute with a count (`RepeatFilter`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TextIO

__all__ = [
    "THIRD_PARTY_LOGGERS",
    "JsonFormatter",
    "LogFormat",
    "RedactingFormatter",
    "RepeatFilter",
    "set_secrets",
    "setup_logging",
]

LogFormat = Literal["human", "json"]

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

#: Libraries whose INFO lines would drown an installer's terminal (pymodbus: a hex dump per
#: frame; aiohttp.access and httpx (the OpenADR client): a line per request; websockets: every
#: handshake).
THIRD_PARTY_LOGGERS = (
    "pymodbus",
    "websockets",
    "paho",
    "aiohttp",
    "asyncio",
    "ocpp",
    "httpx",
    "httpcore",
)

#: Loggers of this repository, whose repeated warnings `RepeatFilter` counts.
OWN_LOGGERS = ("sitectl", "devices", "optimizer")

_secrets: tuple[str, ...] = ()


def set_secrets(values: Iterable[str]) -> None:
    """Register the secret values to redact from every log line (longest first).

    Every length is redacted, even a one-letter one (that garbles the log, which is better than
    leaking it); check-config warns about secrets under 16 characters.
    """
    global _secrets
    forms: set[str] = set()
    for value in values:
        if not value:
            continue
        # As written, and as it appears inside a JSON text or a repr() that logged it.
        forms |= {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        forms.add(repr(value)[1:-1])
    _secrets = tuple(sorted(forms, key=len, reverse=True))


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
        # Before serialising: json.dumps escapes a secret's quotes and backslashes.
        entry = {k: _redact(v) if isinstance(v, str) else v for k, v in entry.items()}
        return json.dumps(entry, ensure_ascii=False)


@dataclass(slots=True)
class _Repeats:
    last_emitted: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Let a repeated warning through once, then at most once per window, with a count.

    Records of `OWN_LOGGERS` at WARNING and above are keyed by logger, message template and
    first argument (the subject in sitectl's messages: "device %s: ...", "%s: fail-safe ..."),
    so two meters failing are two keys. The first record of a key passes; later ones within
    ``window_s`` of the last one passed are dropped and counted; the first after the window
    passes with ``(repeated N times in S s)``, N counting it and the dropped ones.
    A count whose warnings stop is not reported (a filter has no timer); the recovery line
    ("ok again after 37 bad polls") says it.

    Args:
        window_s: at most one line per key per this many seconds.
        clock: monotonic seconds (tests inject their own).
    """

    _MAX_KEYS = 1024

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, str, str], _Repeats] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _is_own(record.name):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        subject = str(args[0]) if args else ""
        key = (record.name, str(record.msg), subject)
        now = self._clock()
        state = self._seen.get(key)
        if state is None:
            self._forget_old(now)
            self._seen[key] = _Repeats(now)
            return True
        if now - state.last_emitted < self.window_s:
            state.suppressed += 1
            return False
        if state.suppressed:
            elapsed = now - state.last_emitted
            record.msg = (
                f"{record.getMessage()} (repeated {state.suppressed + 1} times in {elapsed:.0f} s)"
            )
            record.args = ()
        state.last_emitted = now
        state.suppressed = 0
        return True

    def _forget_old(self, now: float) -> None:
        # Bounded memory: keys of messages with ever-new subjects must not pile up for months.
        if len(self._seen) < self._MAX_KEYS:
            return
        for key, state in list(self._seen.items()):
            if now - state.last_emitted >= self.window_s and not state.suppressed:
                del self._seen[key]
        if len(self._seen) >= self._MAX_KEYS:
            self._seen.clear()


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def setup_logging(
    level: str = "INFO",
    fmt: LogFormat = "human",
    stream: TextIO | None = None,
    repeat_filter: RepeatFilter | None = None,
) -> None:
    """Configure the root logger once for the process.

    Args:
        level: a level name (DEBUG, INFO, WARNING, ERROR). Above DEBUG, third-party libraries
            log at WARNING and above only.
        fmt: ``human`` or ``json``.
        stream: where to write (default: standard error).
        repeat_filter: the rate limit of repeated warnings (default: one per 60 s per key).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter())
    handler.addFilter(repeat_filter or RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # DEBUG is for chasing a problem: then the libraries say everything too.
    quiet = root.level if root.level <= logging.DEBUG else max(logging.WARNING, root.level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
