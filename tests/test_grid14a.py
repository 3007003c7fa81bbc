"""§14a dimming source without sockets: the minimum, the decision, and what reaches the board,
the alarms and the log — all on injected clocks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from devices.inputs import IoReading
from devices.meter import Quality
from sitectl.config import load_config
from sitectl.grid14a import (
    ALARM_ACTIVE,
    ALARM_UNKNOWN,
    Dimming14a,
    DimmingLogic,
    Why,
    minimum_kw,
    simultaneity,
)
from sitectl.limits import tightest
from sitectl.state import Severity, SiteState
from tests.helpers import MINIMAL_CONFIG

NOW = datetime.now(UTC).replace(microsecond=0)

DIMMING = """\
devices:
  - name: box
    profile: moxa-iologik-e1210
    host: 127.0.0.1
    poll_period_s: 1
grid_signals:
  dimming_14a:
    device: box
    input: di3
    controllable_devices: 3
    unknown_after_s: 10
"""


class Clock:
    """Wall and monotonic time that move only when told."""

    def __init__(self) -> None:
        self.mono = 1000.0

    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.mono - 1000.0)

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(write_config, clock: Clock, option: str = ""):
    """A site with the DIMMING section (plus `option` lines under dimming_14a) and its source."""
    path = write_config(MINIMAL_CONFIG + DIMMING + option)
    config, _ = load_config(path, environ={})
    state = SiteState(config, clock=clock.now, monotonic=clock.monotonic)
    return state, Dimming14a(config, state)


def reading(clock: Clock, di3: bool | None, quality: Quality = Quality.OK, error=None):
    inputs = {f"di{i}": False for i in range(16)}
    inputs["di3"] = di3
    return IoReading("box", clock.now(), clock.mono, quality, inputs, error)


def windows(state: SiteState, clock: Clock):
    return state.limits.in_force(clock.now())


# The minimum.


@pytest.mark.parametrize(
    ("devices", "kw"),
    [(1, 4.2), (2, 6.72), (3, 9.45), (4, 11.76), (8, 16.8), (9, 17.01), (20, 37.8)],
)
def test_the_minimum_is_n_times_4_2_kw_scaled_by_simultaneity(devices, kw) -> None:
    assert minimum_kw(devices) == pytest.approx(kw)


def test_simultaneity_needs_a_device() -> None:
    assert simultaneity(1) == 1.0 and simultaneity(100) == 0.45
    with pytest.raises(ValueError, match="at least 1"):
        simultaneity(0)


# The decision.


def logic(**kw) -> DimmingLogic:
    options = {"active_when": "closed", "hold_s": 0.0, "unknown_after_s": 10.0, "fresh_s": 3.0}
    return DimmingLogic(**{**options, **kw}, start=0.0)


def test_a_closed_contact_dims_at_once_and_an_open_one_releases_after_the_hold() -> None:
    dim = logic(hold_s=30)
    dim.observe(False, None, 0.0)
    assert dim.evaluate(0.0).why is Why.OFF
    dim.observe(True, None, 1.0)
    assert dim.evaluate(1.0).why is Why.ACTIVE
    dim.observe(False, None, 2.0)
    held = dim.evaluate(2.0)
    assert held.why is Why.HELD and held.held_until == 32.0
    dim.observe(False, None, 31.0)
    assert dim.evaluate(31.0).why is Why.HELD
    dim.observe(False, None, 32.0)
    assert dim.evaluate(32.0).why is Why.OFF


def test_dimming_again_within_the_hold_restarts_it() -> None:
    dim = logic(hold_s=30)
    for mono, closed, why in [
        (0, True, Why.ACTIVE),
        (5, False, Why.HELD),
        (10, True, Why.ACTIVE),
        (20, False, Why.HELD),
        (45, False, Why.HELD),  # 25 s after the second release
        (50, False, Why.OFF),
    ]:
        dim.observe(closed, None, mono)
        assert dim.evaluate(mono).why is why, mono


def test_an_open_contact_can_mean_dim() -> None:
    dim = logic(active_when="open")
    dim.observe(True, None, 0.0)
    assert dim.evaluate(0.0).why is Why.OFF
    dim.observe(False, None, 1.0)
    assert dim.evaluate(1.0).why is Why.ACTIVE


def test_unknown_keeps_the_last_decision_then_takes_the_worst_case() -> None:
    dim = logic()
    dim.observe(False, None, 0.0)
    assert dim.evaluate(0.0).why is Why.OFF
    dim.observe(None, "timeout", 1.0)
    assert dim.evaluate(9.0).why is Why.OFF  # 9 s without a value: not yet
    decision = dim.evaluate(10.5)
    assert decision.why is Why.UNKNOWN and decision.unknown_for_s == 10.5
    assert dim.cause == "timeout"
    # Readable again and not dimming: released (no hold configured).
    dim.observe(False, None, 11.0)
    assert dim.evaluate(11.0).why is Why.OFF


def test_readings_that_stop_coming_are_as_unknown_as_failed_ones() -> None:
    dim = logic()
    dim.observe(True, None, 0.0)
    assert dim.evaluate(2.0).why is Why.ACTIVE
    assert dim.unknown_for(3.5) == 3.5 and dim.cause == "no reading for more than 3 s"
    dim.observe(False, None, 4.0)  # a late reading: known again
    assert dim.evaluate(4.0).why is Why.OFF
    assert dim.evaluate(14.5).why is Why.UNKNOWN  # nothing since 4.0


def test_an_input_never_read_is_unknown_from_the_start() -> None:
    dim = logic()
    assert dim.evaluate(9.9).why is Why.OFF
    assert dim.evaluate(10.1).why is Why.UNKNOWN
    assert dim.cause == "not read yet"


# The source: board, alarms, log.


def test_the_contact_publishes_a_hard_kw_window_and_an_info_alarm(
    write_config, clock, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sitectl.grid14a")
    state, source = make(write_config, clock)
    changes = []
    state.subscribe(lambda c: changes.append((c.kind, c.subject)))
    state.set_reading("box", reading(clock, False))
    assert windows(state, clock) == [] and state.limits.sources() == ["14a:box"]
    clock.advance(1)
    state.set_reading("box", reading(clock, True))
    [limit] = windows(state, clock)
    assert limit.node == "grid" and limit.source == "14a:box" and limit.hard
    assert limit.limit_kw == pytest.approx(9.45) and limit.limit_a is None
    assert limit.start == clock.now() and limit.end is None and limit.ref == "box/di3"
    assert limit.reason == (
        "§14a EnWG dimming: input di3 of box closed: 9.45 kW (3 controllable devices × 4.2 kW × "
        "0.75, BNetzA BK6-22-300)"
    )
    assert tightest(windows(state, clock), "grid", clock.now()) == (None, pytest.approx(9.45))
    alarm = state.alarms[(ALARM_ACTIVE, "grid")]
    assert alarm.severity is Severity.INFO
    assert alarm.text == (
        "§14a EnWG dimming limit 9.45 kW on 'grid' in force (14a:box: 9.45 kW (3 controllable "
        "devices × 4.2 kW × 0.75, BNetzA BK6-22-300))"
    )
    assert "§14a dimming active: input di3 of box says dim; limit 9.45 kW on 'grid'" in caplog.text
    assert ("limits", "14a:box") in changes
    # Held: the window stays with its start; a republish on the tick changes nothing.
    clock.advance(1)
    source.evaluate()
    assert windows(state, clock)[0].start == NOW + timedelta(seconds=1)
    changes.clear()
    clock.advance(1)
    state.set_reading("box", reading(clock, False))
    assert windows(state, clock) == []
    assert (ALARM_ACTIVE, "grid") not in state.alarms
    assert "§14a dimming released: limit 9.45 kW on 'grid' withdrawn" in caplog.text
    assert ("limits", "14a:box") in changes


def test_the_hold_shows_as_the_window_s_end(write_config, clock) -> None:
    state, _ = make(write_config, clock, "    hold_s: 60\n")
    state.set_reading("box", reading(clock, True))
    clock.advance(5)
    state.set_reading("box", reading(clock, False))
    [limit] = windows(state, clock)
    assert limit.end == clock.now() + timedelta(seconds=60)
    assert limit.reason.endswith("; released, held 60 s")
    assert (ALARM_ACTIVE, "grid") in state.alarms
    clock.advance(60)
    state.set_reading("box", reading(clock, False))
    assert windows(state, clock) == [] and (ALARM_ACTIVE, "grid") not in state.alarms


def test_an_unreadable_input_applies_the_limit_and_warns(write_config, clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sitectl.grid14a")
    state, source = make(write_config, clock)
    state.set_reading("box", reading(clock, False))
    clock.advance(1)
    cause = "timeout: no response from unit 1 at 127.0.0.1:502 within 1 s"
    state.set_reading("box", reading(clock, None, Quality.ERROR, cause))
    clock.advance(9)
    source.evaluate()
    assert windows(state, clock) == []  # 10 s since the last value: not yet
    clock.advance(0.5)
    source.evaluate()
    [limit] = windows(state, clock)
    assert limit.limit_kw == pytest.approx(9.45) and limit.hard
    assert limit.reason.startswith(
        "§14a EnWG: input di3 of box unreadable for more than 10 s (timeout:"
    )
    assert limit.reason.endswith("applied, unknown is the worst case")
    # The reason stays the same while it lasts (the API and MQTT republish on a change).
    clock.advance(3)
    source.evaluate()
    assert windows(state, clock)[0].reason == limit.reason
    warning = state.alarms[(ALARM_UNKNOWN, "box")]
    assert warning.severity is Severity.WARNING
    assert warning.text.startswith(
        "§14a input di3 of box unreadable for more than 10 s (timeout: no response"
    )
    assert (ALARM_ACTIVE, "grid") in state.alarms
    # Readable again, open: the limit goes (no hold), both alarms clear.
    clock.advance(1)
    state.set_reading("box", reading(clock, False))
    assert windows(state, clock) == []
    assert (ALARM_UNKNOWN, "box") not in state.alarms and (ALARM_ACTIVE, "grid") not in state.alarms
    assert "§14a input di3 of box readable again (not dimming)" in caplog.text


def test_a_bad_value_of_the_input_counts_as_unknown(write_config, clock) -> None:
    state, source = make(write_config, clock)
    bad = "input di3 (discrete input 3): not read"
    state.set_reading("box", reading(clock, None, Quality.IMPLAUSIBLE, bad))
    clock.advance(11)
    source.evaluate()
    assert len(windows(state, clock)) == 1
    assert f"({bad})" in state.alarms[(ALARM_UNKNOWN, "box")].text


def test_a_silent_source_leaves_the_limit_on_the_board(write_config, clock) -> None:
    # Its task stops publishing (hung, or gone): after the heartbeat the board answers the
    # dimming limit by itself.
    state, source = make(write_config, clock)
    state.set_reading("box", reading(clock, False))
    assert windows(state, clock) == []
    clock.advance(10)
    assert state.limits.silent("14a:box", clock.now())
    [limit] = windows(state, clock)
    assert limit.limit_kw == pytest.approx(9.45)
    assert limit.reason.startswith("§14a EnWG: the dimming source stopped confirming input di3")
    source.evaluate()  # back: the contact's state decides again
    assert windows(state, clock) == [] and not state.limits.silent("14a:box", clock.now())


def test_the_limit_goes_on_the_configured_node(write_config, clock) -> None:
    state, _ = make(write_config, clock, "    node: feeder\n    limit_kw: 20\n")
    state.set_reading("box", reading(clock, True))
    [limit] = windows(state, clock)
    assert limit.node == "feeder" and limit.limit_kw == 20
    assert "20 kW (configured limit_kw)" in limit.reason
    assert (ALARM_ACTIVE, "feeder") in state.alarms
