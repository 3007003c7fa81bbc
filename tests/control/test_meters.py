"""Meter supervision with a fake clock: grace, hold, recovery, flapping."""

from __future__ import annotations

from types import SimpleNamespace

from sitectl.control.meters import MeterState, MeterSupervisor

OK = SimpleNamespace(ok=True, error=None)
BAD = SimpleNamespace(ok=False, error="timeout after 1 s")


def supervisor() -> MeterSupervisor:
    s = MeterSupervisor(grace_s=5, hold_s=60, good_to_recover=3)
    s.watch("grid")
    return s


def test_starts_failed_and_trusts_after_a_run_of_good_readings_without_hold() -> None:
    s = supervisor()
    assert s.measured("grid") is None
    assert s.reading("grid", OK, 0) is None
    assert s.reading("grid", OK, 1) is None
    assert s.reading("grid", OK, 2) is MeterState.MEASURED
    assert s.measured("grid") is OK


def test_silence_beyond_grace_fails_then_hold_and_good_run_recover() -> None:
    s = supervisor()
    for t in range(3):
        s.reading("grid", OK, t)
    assert s.update("grid", 7) is None  # 5 s after the last good reading: still in grace
    assert s.update("grid", 7.1) is MeterState.FAILED
    assert s.measured("grid") is None
    # Good again at once, but the hold keeps it failed for 60 s.
    for t in range(8, 60):
        assert s.reading("grid", OK, t) is None
    assert s.reading("grid", OK, 67.2) is MeterState.MEASURED


def test_bad_readings_reset_the_run_and_keep_the_reason() -> None:
    s = supervisor()
    for t in range(3):
        s.reading("grid", OK, t)
    for t in range(3, 10):
        s.reading("grid", BAD, t)
    assert s.state("grid") is MeterState.FAILED
    assert s.reason("grid") == "timeout after 1 s"
    # A flapping meter (good, bad, good, ...) never recovers.
    for t in range(70, 100):
        s.reading("grid", OK if t % 2 else BAD, t)
    assert s.state("grid") is MeterState.FAILED


def test_a_meter_never_trusted_after_start_is_announced_once() -> None:
    s = supervisor()
    assert s.update("grid", 100.0) is None  # the first look starts the grace
    assert s.reading("grid", BAD, 102.0) is None
    assert s.update("grid", 105.0) is None  # still within the 5 s grace
    assert s.update("grid", 105.1) is MeterState.FAILED
    assert s.reason("grid") == "never read since start: timeout after 1 s"
    assert s.update("grid", 200.0) is None  # once, not every cycle
    # Good readings still recover it (no hold: it never worked), and a later loss is reported.
    for t in (201.0, 202.0):
        s.reading("grid", OK, t)
    assert s.reading("grid", OK, 203.0) is MeterState.MEASURED
    assert s.update("grid", 208.1) is MeterState.FAILED


def test_a_meter_trusted_within_its_grace_is_never_announced() -> None:
    s = supervisor()
    for t in range(3):
        s.reading("grid", OK, t)
    assert s.state("grid") is MeterState.MEASURED
    assert s.update("grid", 4.0) is None
