"""sitectl's own security events: bounded, critical ones kept apart, listeners isolated."""

from __future__ import annotations

import logging

from sitectl.security_events import KEEP, SecurityEventLog


def test_a_flood_of_minor_events_never_pushes_out_a_critical_one():
    log = SecurityEventLog()
    log.record("TamperDetectionActivated", "case opened", critical=True)
    for n in range(KEEP + 50):
        log.record("FailedLoginAttempts", f"attempt {n}")
    events = log.events()
    assert len(events) == KEEP + 1
    assert events[0].type == "TamperDetectionActivated" and events[0].critical
    assert events[-1].tech_info == f"attempt {KEEP + 49}"
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_a_failing_listener_is_logged_and_the_others_still_hear(caplog):
    log = SecurityEventLog()
    heard = []

    def broken(event):
        raise RuntimeError("boom")

    log.listeners += [broken, heard.append]
    with caplog.at_level(logging.WARNING):
        log.record("FailedLoginAttempts", "HTTP: 5 wrong tokens")
    assert [e.type for e in heard] == ["FailedLoginAttempts"]
    assert "security event FailedLoginAttempts: HTTP: 5 wrong tokens" in caplog.text
    assert "listener" in caplog.text
