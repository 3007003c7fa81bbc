"""Step responses: how fast a charger follows a lower limit, measured from its own reports."""

from __future__ import annotations

from sitectl.control.draw import Draw
from sitectl.control.memory import ChargerMemory
from sitectl.control.response import StepResponses
from sitectl.state import SiteState
from tests.ocpp.conftest import depot_config


def draw(amps: float) -> dict[int, Draw]:
    phases = (amps, amps, amps)
    return {1: Draw(phases, phases, phases, "current")}


def steps(times_and_draws, limits):
    """Feed cycles: each (t, reported_at, amps); limits: [(t, limit)] appended when t is reached."""
    state = SiteState(depot_config([{"id": "A"}], None))
    state.chargers["A"].connected = True
    mem = ChargerMemory(commanded_a=32.0)
    responses = StepResponses(state, {"A": mem})
    pending = list(limits)
    connector = state.chargers["A"].connectors[1]
    for t, reported_at, amps in times_and_draws:
        while pending and pending[0][0] <= t:
            at, limit = pending.pop(0)
            mem.limit_history.append((at, limit))
            mem.commanded_a = limit
        connector.current_mono = reported_at
        responses.observe({"A": draw(amps)}, t)
    return responses, state


def test_a_slow_ramp_is_bounded_both_ways_and_extends_the_hold_after_two_steps():
    cycles, limits = [], [(0.0, 32.0)]
    for base in (100.0, 200.0):
        limits.append((base, 16.0))
        cycles += [(base + 0.5, base - 1.0, 30.0)]  # the last report before: above
        cycles += [(base + 4.5, base + 4.0, 25.0), (base + 8.5, base + 8.0, 17.5)]
        cycles += [(base + 12.5, base + 12.0, 16.2)]  # down: within 1 A
        limits.append((base + 50, 32.0))
        cycles += [(base + 60, base + 59, 31.0)]
    responses, state = steps(sorted(cycles), limits)
    view = state.chargers["A"].step_response
    assert view == {"steps": 2, "ramp_down_s_at_least": 8.0, "ramp_down_s_at_most": 12.0}
    assert responses.hold_s("A", 6.0) == 8.0
    assert responses.hold_s("A", 10.0) == 10.0  # never shorter than the setting


def test_a_fast_charger_or_a_vehicle_already_below_changes_nothing():
    # Comes down before its first report: at least 0 s, the setting stands.
    limits = [(0.0, 32.0), (100.0, 16.0), (150.0, 32.0), (200.0, 16.0)]
    cycles = [(100.5, 99.0, 30.0), (102.5, 102.0, 16.0), (200.5, 199.0, 30.0)]
    cycles += [(202.5, 202.0, 15.0)]
    responses, state = steps(cycles, limits)
    assert state.chargers["A"].step_response["ramp_down_s_at_least"] == 0.0
    assert responses.hold_s("A", 6.0) == 6.0
    # A vehicle drawing less than the new limit anyway is no step at all.
    responses, state = steps([(100.5, 99.0, 10.0), (102.5, 102.0, 9.0)], [(0, 32.0), (100, 16.0)])
    assert state.chargers["A"].step_response == {}
