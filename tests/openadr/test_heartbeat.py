"""The heartbeat fail-safe: a silent VTN, or a heartbeat program's events running out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sitectl.openadr.ven import ALARM
from sitectl.state import Severity, SiteState
from tests.helpers import wait_for
from tests.openadr.conftest import KW, FakeClock, at, limit_interval, running


def kws(state: SiteState) -> list[float | None]:
    return sorted(w.limit_kw for w in state.limits.in_force(state.clock()))


async def test_the_vtn_stops_the_fail_safe_applies_and_it_returns(vtn, make_ven) -> None:
    flex = vtn.add_program("flex")
    vtn.add_event(flex["id"], [limit_interval(0, 300, at(-5), "PT2H")], payloadDescriptors=KW)
    ven, state = make_ven(poll_interval_s=1, unreachable_after_s=1, request_timeout_s=0.5)
    async with running(ven):
        await wait_for(lambda: kws(state) == [300], message="the event's limit")
        await vtn.stop()
        stopped = datetime.now(UTC)
        # Within the configured second (and a poll): the fail-safe windows and the alarm.
        # The event's own window still stands beside it (silence lifts no announced limit).
        await wait_for(lambda: sorted(kws(state)) == [150, 300], timeout=4, message="the fail-safe")
        assert datetime.now(UTC) - stopped < timedelta(seconds=3)
        (held,) = [w for w in state.limits.in_force(state.clock()) if w.limit_kw == 150]
        assert held.source == "openadr:flex" and held.end is None and held.hard
        await wait_for(lambda: (ALARM, "openadr:flex") in state.alarms, message="the alarm")
        alarm = state.alarms[(ALARM, "openadr:flex")]
        assert alarm.severity is Severity.WARNING and "cannot be read" in alarm.text
        assert "150 kW" in alarm.text
        await vtn.start()  # same port: the VTN is back
        await wait_for(lambda: kws(state) == [300], timeout=4, message="the event again")
        await wait_for(lambda: (ALARM, "openadr:flex") not in state.alarms, message="cleared")
    assert ven.failed_reads >= 1


async def test_the_fail_safe_holds_its_configured_duration(vtn, make_ven) -> None:
    vtn.add_program("flex")
    clock = FakeClock()
    ven, state = make_ven(clock, unreachable_after_s=60, failsafe_duration_s=600)
    assert await ven.read_once()
    await vtn.stop()
    assert not await ven.read_once()
    clock.advance(59)
    ven.check(clock())
    assert state.limits.in_force(clock()) == [] and not state.alarms
    clock.advance(2)
    ven.check(clock())
    assert [w.limit_kw for w in state.limits.in_force(clock())] == [150]
    assert (ALARM, "openadr:flex") in state.alarms
    clock.advance(600)  # the conditional connection's rule: the fail-safe for its duration
    assert state.limits.in_force(clock()) == []


async def test_a_heartbeat_programs_events_must_keep_covering_now(vtn, make_ven) -> None:
    flex = vtn.add_program("flex")
    event = vtn.add_event(
        flex["id"], [limit_interval(0, 300, at(-5), "PT15M")], payloadDescriptors=KW
    )
    clock = FakeClock()
    ven, state = make_ven(
        clock, programs=[{"name": "flex", "heartbeat": True}], unreachable_after_s=3600
    )
    assert await ven.read_once()
    assert [w.limit_kw for w in state.limits.in_force(clock())] == [300]
    # The VTN still answers, but the DSO's schedule ran out 10 minutes from now.
    clock.advance(11 * 60)
    assert await ven.read_once()
    assert [w.limit_kw for w in state.limits.in_force(clock())] == [150]
    alarm = state.alarms[(ALARM, "openadr:flex")]
    assert "event heartbeat" in alarm.text
    # The schedule is extended: the limits are confirmed again.
    vtn.update_event(event["id"], intervals=[limit_interval(0, 280, at(5), "PT1H")])
    assert await ven.read_once()
    assert [w.limit_kw for w in state.limits.in_force(clock())] == [280]
    assert (ALARM, "openadr:flex") not in state.alarms


async def test_a_program_the_vtn_does_not_show_gets_the_fail_safe(vtn, make_ven) -> None:
    vtn.add_program("other")
    clock = FakeClock()
    ven, state = make_ven(clock, unreachable_after_s=60)
    assert await ven.read_once()
    clock.advance(61)
    assert await ven.read_once()
    assert [w.limit_kw for w in state.limits.in_force(clock())] == [150]
    assert "'flex' is not on the VTN" in state.alarms[(ALARM, "openadr:flex")].text
