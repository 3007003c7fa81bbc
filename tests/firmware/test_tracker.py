"""The per-charger record of security events: bounded, and critical ones never pushed out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sitectl.firmware.tracker import FirmwareTracker
from sitectl.ocpp.router import Origin, RequestSeen


def test_a_flood_of_minor_security_events_keeps_the_critical_ones() -> None:
    # Issue #22.10: 100 events kept per charger, whatever their kind: a charger (or an attacker
    # on its link) sending InvalidMessages pushed a TamperDetectionActivated out of the record.
    start = datetime.now(UTC)
    ticks = iter(range(10_000))
    tracker = FirmwareTracker(clock=lambda: start + timedelta(seconds=next(ticks)), keep=10)
    link = SimpleNamespace(identity="CP1")

    def event(kind: str) -> RequestSeen:
        payload = {"type": kind, "timestamp": "2000-01-01T00:00:00Z"}
        return RequestSeen(Origin.CHARGER, "1", "SecurityEventNotification", payload)

    tracker.link_events(link, [event("TamperDetectionActivated")])
    tracker.link_events(link, [event("InvalidMessages") for _ in range(500)])
    kept = tracker.security("CP1")
    assert [e.type for e in kept].count("TamperDetectionActivated") == 1
    assert kept[0].type == "TamperDetectionActivated"  # oldest first
    assert len(kept) == 11  # 10 minor ones plus the critical one, no more
