"""Log noise: third-party libraries at WARNING unless DEBUG, repeated warnings counted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from sitectl.logs import THIRD_PARTY_LOGGERS, RepeatFilter, setup_logging


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging rewires the root logger; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def record(
    msg: str, *args: object, name: str = "devices.meter", level: int = logging.WARNING
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def passed(flt: RepeatFilter, rec: logging.LogRecord) -> str | None:
    return rec.getMessage() if flt.filter(rec) else None


def test_a_repeated_warning_passes_once_then_once_a_window_with_its_count() -> None:
    clock = Clock()
    flt = RepeatFilter(window_s=60.0, clock=clock)
    template = "device %s: %s: %s"
    assert passed(flt, record(template, "grid", "error", "timeout 0.98 s")) == (
        "device grid: error: timeout 0.98 s"
    )
    dropped = 0
    for _ in range(36):  # a poll every 1.5 s: 54 s of the same failure
        clock.now += 1.5
        dropped += passed(flt, record(template, "grid", "error", "timeout 0.97 s")) is None
    assert dropped == 36
    clock.now += 6.5  # 60.5 s after the line that passed
    assert passed(flt, record(template, "grid", "error", "timeout 0.99 s")) == (
        "device grid: error: timeout 0.99 s (repeated 37 times in 60 s)"
    )
    # The window restarts at the line that passed.
    clock.now += 30
    assert passed(flt, record(template, "grid", "error", "timeout")) is None
    clock.now += 31
    assert passed(flt, record(template, "grid", "error", "timeout")).endswith(
        "(repeated 2 times in 61 s)"
    )


def test_a_warning_after_a_quiet_window_has_no_count() -> None:
    clock = Clock()
    flt = RepeatFilter(window_s=60.0, clock=clock)
    assert passed(flt, record("device %s: lost", "grid")) == "device grid: lost"
    clock.now += 120
    assert passed(flt, record("device %s: lost", "grid")) == "device grid: lost"


def test_subjects_loggers_and_levels_are_counted_apart() -> None:
    clock = Clock()
    flt = RepeatFilter(window_s=60.0, clock=clock)
    assert passed(flt, record("device %s: lost", "grid"))
    # Another meter failing is news, not a repeat.
    assert passed(flt, record("device %s: lost", "sub-1"))
    assert passed(flt, record("device %s: lost", "grid", name="sitectl.control.meters"))
    assert passed(flt, record("device %s: lost", "grid")) is None
    # INFO and DEBUG are never held back, nor are other libraries' warnings.
    for _ in range(3):
        assert passed(flt, record("device %s: lost", "grid", level=logging.INFO))
        assert passed(flt, record("Failed to connect %s", "x", name="pymodbus.logging"))
    # Errors repeat like warnings do.
    assert passed(flt, record("cycle failed", name="sitectl.control.loop", level=logging.ERROR))
    assert passed(flt, record("cycle failed", name="sitectl.control.loop", level=40)) is None


def test_many_subjects_do_not_grow_without_bound() -> None:
    clock = Clock()
    flt = RepeatFilter(window_s=60.0, clock=clock)
    for index in range(5000):
        clock.now += 0.1
        assert passed(flt, record("charger %s: rejected", f"CP{index}"))
    assert len(flt._seen) <= RepeatFilter._MAX_KEYS


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_third_party_info_is_hidden_at_info_and_shown_at_debug() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    for name in ("pymodbus.logging", "websockets.server", "aiohttp.access", "paho", "ocpp"):
        logging.getLogger(name).info("recv: 0x1 0x3 0x0 0x0")
    logging.getLogger("pymodbus.logging").warning("Failed to connect")
    logging.getLogger("sitectl.app").info("started")
    assert [(r["logger"], r["msg"]) for r in lines(stream)] == [
        ("pymodbus.logging", "Failed to connect"),
        ("sitectl.app", "started"),
    ]

    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream)
    logging.getLogger("pymodbus.logging").debug("send: 0x1 0x3")
    logging.getLogger("aiohttp.access").info("GET /api/site 200")
    assert [r["msg"] for r in lines(stream)] == ["send: 0x1 0x3", "GET /api/site 200"]

    stream = io.StringIO()
    setup_logging("ERROR", "json", stream)
    logging.getLogger("websockets.client").warning("handshake failed")
    assert lines(stream) == []


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_rate_limits_repeated_warnings_in_json() -> None:
    clock = Clock()
    stream = io.StringIO()
    setup_logging("INFO", "json", stream, RepeatFilter(window_s=60.0, clock=clock))
    meter = logging.getLogger("devices.meter")
    for _ in range(10):
        meter.warning("device %s: %s", "grid", "timeout")
        clock.now += 7
    assert [r["msg"] for r in lines(stream)] == [
        "device grid: timeout",
        "device grid: timeout (repeated 9 times in 63 s)",
    ]


@pytest.mark.parametrize("secret", ['pa"ss\\word-0123456789', "tab\there-0123456789", "ab1"])
def test_json_lines_redact_secrets_with_quotes_backslashes_control_characters_or_short(
    restore_logging, secret: str
) -> None:
    from sitectl.logs import set_secrets

    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    set_secrets([secret])
    try:
        log = logging.getLogger("sitectl.test_redact")
        log.warning("header was %s", secret, extra={"detail": f"k={secret}"})
        log.warning("frame %s", json.dumps(["x", {"password": secret}]))
        log.warning("repr %r", secret)
    finally:
        set_secrets([])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    for line in lines:
        entry = json.loads(line)
        text = json.dumps(entry, ensure_ascii=False) + entry["msg"] + entry.get("detail", "")
        assert secret not in text and json.dumps(secret)[1:-1] not in line
        assert "***" in line
