"""Each session's plan read out (`sitectl.control.plans`): power per step, ready time, shortfall,
and the ``departure_short`` alarm's hysteresis. Hand-made plans on the coarse far grid of issue
#18 (8 × 15 min, then hours), and plans the real LP made."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from optimizer.allocation import Allocation, Status
from optimizer.lp import solve
from optimizer.problem import Node, Problem, Session
from sitectl.config import Config
from sitectl.control.plans import ALARM_CODE, READY_TOL_KWH, Need, PlanWatch, forecast
from sitectl.state import SessionPlan, SessionState, SiteState

#: An origin for the arithmetic: today's 20:00 UTC (never a literal date the clock overtakes).
NOW = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
FINE, COARSE = 900.0, 3600.0
STEPS_S = (FINE,) * 8 + (COARSE,) * 4  # 2 h fine, then 4 h coarse
VOLT = 230.0
KW_16A = 16 * 3 * VOLT / 1000  # 11.04 kW


def problem(*sessions: Session, limit_a: float = 100.0) -> Problem:
    return Problem(
        nodes=(Node("site", None, (limit_a,) * 3),),
        sessions=sessions,
        steps=len(STEPS_S),
        step_s=STEPS_S,
        voltage_ln_v=VOLT,
    )


def car(departure_step: int = 13, share: float = 1.0, max_a: float = 16.0, **kw) -> Session:
    return Session(
        id=kw.pop("id", "c/1"),
        node="site",
        slot=kw.pop("slot", "c/1"),
        phases=kw.pop("phases", (0, 1, 2)),
        min_a=min(6.0, max_a),
        max_a=max_a,
        energy_kwh=kw.pop("energy_kwh", 100.0),
        departure_step=departure_step,
        last_step_share=share,
    )


def allocation(plan: list[list[float]], method: str = "lp") -> Allocation:
    rows = np.asarray(plan, dtype=float)
    return Allocation(
        {"c/1": float(rows[0, 0])},
        rows,
        {},
        Status.OPTIMAL if method == "lp" else Status.FALLBACK,
        method,
    )


def hours(h: float) -> datetime:
    return NOW + timedelta(hours=h)


def test_steps_carry_their_start_current_and_power() -> None:
    p = problem(car())
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(7), None)})["c/1"]
    assert [s.start for s in found.steps[7:10]] == [hours(1.75), hours(2), hours(3)]
    assert [s.duration_s for s in found.steps[7:10]] == [FINE, COARSE, COARSE]
    assert found.steps[0].current_a == 16.0
    assert found.steps[0].power_kw == pytest.approx(KW_16A)
    assert found.phases == 3


def test_ready_time_is_interpolated_inside_a_coarse_step() -> None:
    # 16 A throughout: 2 h of fine steps give 22.08 kWh; the need is reached half-way into
    # the first hour-long step, at 2.5 h.
    need = KW_16A * 2.5
    p = problem(car())
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(5), need)})["c/1"]
    assert found.status == "on_time" and found.shortfall_kwh == 0.0
    expected = hours(2.5) - timedelta(hours=READY_TOL_KWH / KW_16A)
    assert abs((found.ready_at - expected).total_seconds()) < 1.0
    assert found.planned_kwh == pytest.approx(KW_16A * 5)  # to the departure, not beyond


def test_ready_time_inside_a_fine_step_and_after_a_pause() -> None:
    # Paused for the first half hour, then 16 A: 11.04 kWh reached 1 h later, at 1.5 h.
    plan = [[0.0, 0.0] + [16.0] * 10]
    p = problem(car())
    found = forecast(p, allocation(plan), NOW, {"c/1": Need(hours(5), KW_16A)})["c/1"]
    expected = hours(1.5) - timedelta(hours=READY_TOL_KWH / KW_16A)
    assert abs((found.ready_at - expected).total_seconds()) < 1.0


def test_a_need_already_met_is_ready_now() -> None:
    p = problem(car())
    found = forecast(p, allocation([[0.0] * 12]), NOW, {"c/1": Need(hours(5), 0.0)})["c/1"]
    assert found.status == "on_time" and found.ready_at == NOW


def test_shortfall_and_minutes_late_at_the_planned_final_rate() -> None:
    # Leaving at 2.5 h: half of the first coarse step. The LP's mean current on that step is
    # 8 A (16 A for the half hour it is there).
    p = problem(car(departure_step=9, share=0.5))
    plan = [[16.0] * 8 + [8.0] + [0.0] * 3]
    found = forecast(p, allocation(plan), NOW, {"c/1": Need(hours(2.5), 40.0)})["c/1"]
    planned = KW_16A * 2.5
    assert found.status == "short"
    assert found.planned_kwh == pytest.approx(planned)
    assert found.shortfall_kwh == pytest.approx(40.0 - planned)
    assert found.late_rate == "planned"
    assert found.late_min == pytest.approx((40.0 - planned) / KW_16A * 60)
    assert found.ready_at == hours(2.5) + timedelta(minutes=found.late_min)


def test_minutes_late_at_the_maximum_when_the_plan_ends_at_zero() -> None:
    # Held back on its last steps (a neighbour of higher priority): late at its maximum, 32 A.
    p = problem(car(departure_step=4, max_a=32.0))
    plan = [[16.0, 16.0, 0.0, 0.0] + [0.0] * 8]
    found = forecast(p, allocation(plan), NOW, {"c/1": Need(hours(1), 20.0)})["c/1"]
    short = 20.0 - KW_16A * 0.5
    assert found.status == "short" and found.late_rate == "maximum"
    assert found.shortfall_kwh == pytest.approx(short)
    assert found.late_min == pytest.approx(short / (2 * KW_16A) * 60)


def test_a_blocked_session_is_short_without_a_ready_time() -> None:
    p = problem(car(departure_step=4, max_a=0.0))
    found = forecast(p, allocation([[0.0] * 12]), NOW, {"c/1": Need(hours(1), 5.0)})["c/1"]
    assert found.status == "short" and found.shortfall_kwh == pytest.approx(5.0)
    assert found.ready_at is None and found.late_min is None and found.late_rate is None


def test_leaving_inside_step_0_gets_the_current_until_it_leaves() -> None:
    p = problem(car(departure_step=1))
    found = forecast(
        p, allocation([[16.0] + [0.0] * 11]), NOW, {"c/1": Need(NOW + timedelta(minutes=5), 2.0)}
    )["c/1"]
    assert found.planned_kwh == pytest.approx(KW_16A * 5 / 60)
    assert found.status == "short"


def test_an_unknown_need_has_planned_energy_only() -> None:
    p = problem(car())
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(3), None)})["c/1"]
    assert found.status == "need_unknown" and "until the vehicle stops" in found.reason
    assert found.ready_at is None and found.shortfall_kwh is None and found.late_min is None
    assert found.planned_kwh == pytest.approx(KW_16A * 3)


def test_a_floor_counts_as_planned_current() -> None:
    p = problem(car())
    found = forecast(p, allocation([[4.0] * 12]), NOW, {"c/1": Need(hours(1), None, 6.0)})["c/1"]
    assert found.steps[0].current_a == 10.0
    assert found.planned_kwh == pytest.approx(10 * 3 * VOLT / 1000)


def test_the_fallback_plans_no_further_than_step_0() -> None:
    p = problem(car())
    found = forecast(
        p, allocation([[16.0] + [0.0] * 11], "fallback"), NOW, {"c/1": Need(hours(3), 30.0)}
    )["c/1"]
    assert found.status == "no_plan" and found.shortfall_kwh is None


def test_a_session_held_in_its_minimum_pause_is_not_called_short() -> None:
    # The snapshot asks the LP for nothing while a pause sits out min_pause_s.
    p = problem(car(departure_step=4, energy_kwh=0.0))
    found = forecast(p, allocation([[0.0] * 12]), NOW, {"c/1": Need(hours(1), 20.0)})["c/1"]
    assert found.status == "held" and found.shortfall_kwh is None


def test_a_departure_past_the_plan_is_not_called_short() -> None:
    p = problem(car(departure_step=20))
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(10), 500.0)})["c/1"]
    assert found.status == "beyond_horizon" and found.shortfall_kwh is None
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(10), 20.0)})["c/1"]
    assert found.status == "on_time"


def test_single_phase_power_uses_its_phase_count() -> None:
    p = problem(car(phases=(1,)))
    found = forecast(p, allocation([[16.0] * 12]), NOW, {"c/1": Need(hours(1), None)})["c/1"]
    assert found.phases == 1 and found.steps[0].power_kw == pytest.approx(16 * VOLT / 1000)


def test_against_the_real_lp_planned_energy_is_the_lps_own() -> None:
    # Two cars on 40 A per phase leaving at 2.5 h; a wants 60 kWh and cannot have it all.
    a = car(id="a", slot="a", departure_step=9, share=0.5, max_a=32.0, energy_kwh=60.0)
    b = car(id="b", slot="b", departure_step=9, share=0.5, max_a=32.0, energy_kwh=10.0)
    p = problem(a, b, limit_a=40.0)
    answer = solve(p, budget_s=10.0)
    needs = {"a": Need(hours(2.5), 60.0), "b": Need(hours(2.5), 10.0)}
    found = forecast(p, answer, NOW, needs)
    for sid in ("a", "b"):
        assert found[sid].planned_kwh == pytest.approx(answer.energy_kwh[sid], abs=1e-3)
    assert found["b"].status == "on_time" and found["b"].ready_at <= hours(2.5)
    assert found["a"].status == "short"
    assert found["a"].shortfall_kwh == pytest.approx(60.0 - answer.energy_kwh["a"], abs=1e-3)
    assert found["a"].ready_at > hours(2.5) and found["a"].late_min > 0


# The alarm's hysteresis, on a real SiteState.


def site() -> SiteState:
    config = Config.model_validate(
        {
            "site": {"id": "p", "limit_kw": 100, "phase_limit_a": 100},
            "chargers": [{"id": "c", "circuit": "grid", "max_current_a": 32, "password": "x" * 16}],
            "mqtt": {"enabled": False},
        }
    )
    state = SiteState(config, clock=lambda: NOW)
    state.chargers["c"].connectors[1].session = SessionState("c/7", 1, NOW)
    return state


def cycle(watch: PlanWatch, state: SiteState, need_kwh: float, plan_a: float) -> None:
    p = problem(car(departure_step=4))
    state.control.sessions = {
        "c/1": SessionPlan(hours(1), "command", need_kwh, "command", True, plan_a)
    }
    answer = allocation([[plan_a] * 4 + [0.0] * 8])
    watch.update(p, answer, NOW, {"c/1": ("c", 1)}, {})


def test_the_alarm_waits_for_cycles_in_a_row_and_clears_with_hysteresis() -> None:
    state = site()
    watch = PlanWatch(state, ZoneInfo("Europe/Berlin"), after_cycles=3)
    key = (ALARM_CODE, "c/1")
    for _ in range(2):
        cycle(watch, state, 20.0, 16.0)  # 11.04 kWh planned: 8.96 short
    assert key not in state.alarms
    cycle(watch, state, 20.0, 16.0)
    assert key in state.alarms
    assert "9.0 kWh short" in state.alarms[key].text and "min late" in state.alarms[key].text
    assert state.control.sessions["c/1"].forecast.status == "short"
    # Between the thresholds (0.4 kWh short: under 0.5, over 0.25): it stays raised.
    for _ in range(5):
        cycle(watch, state, KW_16A + 0.4, 16.0)
    assert key in state.alarms
    for _ in range(2):
        cycle(watch, state, 10.0, 16.0)
    assert key in state.alarms
    cycle(watch, state, 10.0, 16.0)
    assert key not in state.alarms


def test_a_short_cycle_between_good_ones_does_not_raise() -> None:
    state = site()
    watch = PlanWatch(state, ZoneInfo("UTC"), after_cycles=3)
    for need in (20.0, 20.0, 10.0, 20.0, 20.0, 10.0):
        cycle(watch, state, need, 16.0)
    assert (ALARM_CODE, "c/1") not in state.alarms


def test_the_alarm_clears_when_the_session_ends() -> None:
    state = site()
    watch = PlanWatch(state, ZoneInfo("UTC"), after_cycles=1)
    cycle(watch, state, 20.0, 16.0)
    assert (ALARM_CODE, "c/1") in state.alarms
    state.control.sessions = {}
    watch.update(
        problem(),
        dataclasses.replace(allocation([[0.0] * 12]), plan_a=np.zeros((0, 12))),
        NOW,
        {},
        {},
    )
    assert (ALARM_CODE, "c/1") not in state.alarms


# Later steps shared among equals (the alarm's second reading of the plan).

A_STEP_KWH = 3 * VOLT / 1000 * FINE / 3600  # kWh of 1 A on three phases over a fine step


def two_cars() -> tuple[Problem, Allocation, dict[str, Need]]:
    # Two equal cars on 40 A for 2 h; a hand-made split that serves b on every later step and
    # a on step 0 only: read as is, a is short; shared as step 0 is, both get their need.
    a = car(id="a", slot="a", departure_step=8, max_a=32.0, energy_kwh=10.0)
    b = car(id="b", slot="b", departure_step=8, max_a=32.0, energy_kwh=20.0)
    p = problem(a, b, limit_a=40.0)
    plan = [[20.0] + [0.0] * 11, [20.0] + [32.0] * 7 + [0.0] * 4]
    answer = Allocation({"a": 20.0, "b": 20.0}, np.asarray(plan), {}, Status.OPTIMAL, "lp")
    return p, answer, {"a": Need(hours(2), 10.0), "b": Need(hours(2), 20.0)}


def test_shared_among_equals_later_steps_split_evenly_up_to_each_need() -> None:
    p, answer, needs = two_cars()
    as_is = forecast(p, answer, NOW, needs)
    assert as_is["a"].status == "short" and as_is["b"].status == "on_time"
    shared = forecast(p, answer, NOW, needs, share_equals=True)
    assert shared["a"].status == "on_time" and shared["b"].status == "on_time"
    # Step 0 as dispatched; step 1 halved between the two; a full, b takes the rest.
    assert [shared[k].steps[0].current_a for k in "ab"] == [20.0, 20.0]
    assert shared["a"].steps[1].current_a == pytest.approx(16.0)
    assert shared["b"].steps[1].current_a == pytest.approx(16.0)
    need_a = (10.0 - 20.0 * A_STEP_KWH) / A_STEP_KWH  # A-steps a still needs after step 0
    assert sum(s.current_a for s in shared["a"].steps[1:]) == pytest.approx(need_a)
    # Neither is planned more than it needs (the hand-made b was), and b gets the rest.
    assert shared["a"].planned_kwh == pytest.approx(10.0)
    assert shared["b"].planned_kwh == pytest.approx(20.0)


def test_the_alarm_names_only_a_car_short_in_both_readings_of_the_plan() -> None:
    config = Config.model_validate(
        {
            "site": {"id": "p", "limit_kw": 100, "phase_limit_a": 100},
            "chargers": [
                {"id": c, "circuit": "grid", "max_current_a": 32, "password": "x" * 16}
                for c in ("a", "b")
            ],
            "mqtt": {"enabled": False},
        }
    )
    state = SiteState(config, clock=lambda: NOW)
    for c in ("a", "b"):
        state.chargers[c].connectors[1].session = SessionState(f"{c}/7", 1, NOW)
    watch = PlanWatch(state, ZoneInfo("UTC"), after_cycles=1)
    p, answer, needs = two_cars()
    for _ in range(3):
        state.control.sessions = {
            k: SessionPlan(hours(2), "command", needs[k].remaining_kwh, "command", True, 20.0)
            for k in "ab"
        }
        watch.update(p, answer, NOW, {"a": ("a", 1), "b": ("b", 1)}, {})
    # The forecast shown is the plan's own (a short), the alarm is not raised for it.
    assert state.control.sessions["a"].forecast.status == "short"
    assert (ALARM_CODE, "a") not in state.alarms and (ALARM_CODE, "b") not in state.alarms
