"""The LP on hand-built cases whose answer is known, and the Allocator's warm-start contract."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optimizer.allocation import Status
from optimizer.lp import FAIRNESS_PIECES, Allocator, solve
from optimizer.problem import Load, Node, Problem
from optimizer.verify import verify
from tests.optimizer.cases import car, energy_of, one_circuit

# 16 A on three phases at 230 V for 15 min.
KWH_16A_3PH_STEP = 3 * 230.0 * 16 / 1000 * 0.25


def solved(problem, **kwargs):
    allocation = solve(problem, budget_s=kwargs.pop("budget_s", 10.0))
    assert verify(problem, allocation) == []
    return allocation


def test_one_phase_full_two_cars_share_it():
    # L1 has 32 - 20 = 12 A left: two three-phase cars share it 6/6 every step.
    p = one_circuit([car("a"), car("b")], load_a=(20.0, 0.0, 0.0))
    a = solved(p)
    assert a.status is Status.OPTIMAL and a.method == "lp"
    assert a.dispatch_a == pytest.approx({"a": 6.0, "b": 6.0})
    np.testing.assert_allclose(a.plan_a.sum(axis=0), 12.0)


def test_no_room_for_two_minimums_pauses_one_and_gives_the_other_all():
    # 10 A on L1: 5/5 would break the 6 A rule, so one car takes 10 A, the other pauses.
    p = one_circuit([car("a"), car("b")], load_a=(22.0, 0.0, 0.0))
    a = solved(p)
    assert sorted(a.dispatch_a.values()) == pytest.approx([0.0, 10.0])
    assert len(a.paused) == 1 and a.dispatch_a[a.paused[0]] == 0.0
    assert a.plan_a[:, 1:].sum(axis=0) == pytest.approx([10.0] * 7)


def test_single_phase_cars_on_each_phase_are_independent():
    p = one_circuit(
        [car(f"p{k}", phases=(k,), max_a=16.0) for k in range(3)], limit_a=(16.0, 16.0, 16.0)
    )
    a = solved(p)
    assert a.dispatch_a == pytest.approx({"p0": 16.0, "p1": 16.0, "p2": 16.0})


def test_single_phase_cars_and_a_three_phase_car_fill_every_phase():
    sessions = [car(f"p{k}", phases=(k,)) for k in range(3)] + [car("t")]
    a = solved(one_circuit(sessions, limit_a=16.0))
    x = a.dispatch_a
    for k in range(3):
        assert x[f"p{k}"] + x["t"] == pytest.approx(16.0)
    # Fair to within one fairness piece of (max - min) / (pieces - 1).
    assert abs(x["p0"] - x["t"]) <= (16.0 - 6.0) / (FAIRNESS_PIECES - 1) + 1e-6


def test_equal_cars_share_within_one_fairness_piece():
    p = one_circuit([car(c) for c in "abcd"], limit_a=40.0)
    a = solved(p)
    values = np.array(list(a.dispatch_a.values()))
    assert values.sum() == pytest.approx(40.0)
    assert values.max() - values.min() <= (16.0 - 6.0) / (FAIRNESS_PIECES - 1) + 1e-6


def test_departure_that_cannot_be_met_gets_full_current_until_it_leaves():
    p = one_circuit([car("a", energy_kwh=100.0, departure_step=4)])
    a = solved(p)
    np.testing.assert_allclose(a.plan_a[0], [16.0] * 4 + [0.0] * 4)
    assert a.energy_kwh["a"] == pytest.approx(4 * KWH_16A_3PH_STEP)


@pytest.mark.parametrize("departure", [0, -3])
def test_departure_at_or_before_now_gets_nothing(departure):
    a = solved(one_circuit([car("gone", departure_step=departure), car("here")]))
    assert a.dispatch_a["gone"] == 0.0 and a.energy_kwh["gone"] == 0.0
    assert a.dispatch_a["here"] == 16.0


def test_planned_arrival_charges_only_from_arrival():
    a = solved(one_circuit([car("later", arrival_step=3, energy_kwh=KWH_16A_3PH_STEP * 2)]))
    np.testing.assert_allclose(a.plan_a[0], [0, 0, 0, 16, 16, 0, 0, 0])


def test_higher_priority_takes_the_circuit():
    p = one_circuit([car("lo"), car("hi", priority=1)], limit_a=16.0)
    a = solved(p)
    np.testing.assert_allclose(a.plan_a[1], 16.0)
    np.testing.assert_allclose(a.plan_a[0], 0.0)


def test_priority_beats_the_three_phase_energy_advantage():
    # On the binding L1 an amp to the three-phase car yields 3x the energy of one to the
    # single-phase car; priority (weight 4x) must still win.
    p = one_circuit([car("three", max_a=16.0), car("one", phases=(0,), priority=1)], limit_a=16.0)
    a = solved(p)
    assert a.dispatch_a == pytest.approx({"three": 0.0, "one": 16.0})


def test_car_leaving_within_the_horizon_goes_before_one_leaving_after():
    p = one_circuit(
        [car("after", departure_step=40), car("within", departure_step=8)], limit_a=16.0
    )
    a = solved(p)
    np.testing.assert_allclose(a.plan_a[1], 16.0)
    np.testing.assert_allclose(a.plan_a[0], 0.0)


def test_price_valley_moves_charging_into_it():
    prices = (0.30,) * 6 + (0.10,) * 4 + (0.30,) * 2
    p = one_circuit(
        [car("a", energy_kwh=4 * KWH_16A_3PH_STEP, departure_step=12)], steps=12, prices=prices
    )
    a = solved(p)
    np.testing.assert_allclose(a.plan_a[0], [0.0] * 6 + [16.0] * 4 + [0.0] * 2, atol=1e-6)
    assert a.dispatch_a["a"] == 0.0


def test_flat_price_charges_as_early_as_possible():
    p = one_circuit([car("a", energy_kwh=2 * KWH_16A_3PH_STEP)], prices=(0.2,) * 8)
    np.testing.assert_allclose(solved(p).plan_a[0], [16, 16, 0, 0, 0, 0, 0, 0], atol=1e-6)


def test_demand_charge_flattens_the_peak():
    p = one_circuit(
        [car("a", energy_kwh=4 * KWH_16A_3PH_STEP)], prices=(0.2,) * 8, demand_charge_per_kw=10.0
    )
    np.testing.assert_allclose(solved(p).plan_a[0], 8.0, atol=1e-6)


def test_peak_already_reached_costs_nothing_to_use():
    # 11.04 kW were already reached this month: charging at full power adds no demand charge.
    p = one_circuit(
        [car("a", energy_kwh=4 * KWH_16A_3PH_STEP)], prices=(0.2,) * 8, demand_charge_per_kw=10.0
    )
    p = dataclasses.replace(
        p, tariff=dataclasses.replace(p.tariff, peak_so_far_kw=3 * 230 * 16 / 1000)
    )
    np.testing.assert_allclose(solved(p).plan_a[0], [16] * 4 + [0] * 4, atol=1e-6)


def test_power_limit_binds():
    # 8.28 kW = 36 A summed over phases: two three-phase cars at 6 A each.
    p = one_circuit([car("a"), car("b")], limit_a=63.0, limit_kw=8.28)
    a = solved(p)
    assert a.dispatch_a == pytest.approx({"a": 6.0, "b": 6.0})


def test_load_above_the_limit_leaves_everyone_under_it_at_zero():
    p = Problem(
        nodes=(Node("grid", None, 100.0), Node("f1", "grid", 32.0), Node("f2", "grid", 32.0)),
        sessions=(car("a", "f1"), car("b", "f1", phases=(1,)), car("c", "f2")),
        steps=4,
        step_s=900,
        loads=(Load("heater", "f1", ((40.0,) * 4, (0.0,) * 4, (0.0,) * 4)),),
    )
    a = solved(p)
    assert a.status is Status.OPTIMAL
    # f1's L1 is overloaded: the three-phase car there stops; the L2 car and f2 are unaffected.
    assert a.dispatch_a == pytest.approx({"a": 0.0, "b": 16.0, "c": 16.0})


def test_zero_sessions():
    a = solved(one_circuit([]))
    assert a.status is Status.OPTIMAL and a.dispatch_a == {} and a.plan_a.shape == (0, 8)


def test_car_needing_less_than_one_step_at_minimum_gets_the_minimum():
    a = solved(one_circuit([car("nearly_full", energy_kwh=0.5)]))
    assert a.dispatch_a["nearly_full"] == pytest.approx(6.0)
    np.testing.assert_allclose(a.plan_a[0, 1:], 0.0)


def test_energy_is_never_planned_above_what_is_wanted():
    p = one_circuit([car("a", energy_kwh=5.0), car("b", energy_kwh=7.0, phases=(1,))])
    a = solved(p)
    np.testing.assert_allclose(energy_of(p, a.plan_a), [5.0, 7.0], atol=1e-6)


def test_no_budget_answers_with_the_fallback():
    p = one_circuit([car("a"), car("b")], load_a=(20.0, 0.0, 0.0))
    a = solve(p, budget_s=0.0)
    assert a.status is Status.TIME_LIMIT and a.method == "fallback"
    assert verify(p, a) == []
    assert sum(a.dispatch_a.values()) == pytest.approx(12.0)


# The Allocator's warm-start contract.


def test_warm_resolve_of_the_same_problem_gives_the_same_answer():
    p = one_circuit([car("a"), car("b"), car("c", phases=(2,))], load_a=(10.0, 3.0, 0.0))
    allocator = Allocator()
    first = allocator.solve(p, 10.0)
    again = allocator.solve(p, 10.0)
    assert allocator.builds == 1
    assert again.objective == pytest.approx(first.objective, rel=1e-9)
    np.testing.assert_allclose(again.plan_a, first.plan_a, atol=1e-6)


def test_warm_answer_after_a_change_equals_the_cold_one():
    p = one_circuit([car("a"), car("b")], load_a=(20.0, 0.0, 0.0))
    changed = dataclasses.replace(
        p, sessions=(dataclasses.replace(p.sessions[0], energy_kwh=3.0), p.sessions[1])
    )
    allocator = Allocator()
    allocator.solve(p, 10.0)
    warm = allocator.solve(changed, 10.0)
    cold = solve(changed, 10.0)
    assert allocator.builds == 1
    assert warm.objective == pytest.approx(cold.objective, rel=1e-9)
    assert warm.total_energy_kwh == pytest.approx(cold.total_energy_kwh, rel=1e-9)


def test_other_car_on_a_known_slot_needs_no_rebuild():
    three = one_circuit([car("s1", slot="c1"), car("s2", slot="c2")], limit_a=20.0)
    single = one_circuit(
        [car("s3", slot="c1", phases=(1,), max_a=32.0), car("s2", slot="c2")], limit_a=20.0
    )
    allocator = Allocator()
    allocator.solve(three, 10.0)
    warm = allocator.solve(single, 10.0)
    assert allocator.builds == 1
    assert verify(single, warm) == []
    assert warm.objective == pytest.approx(solve(single, 10.0).objective, rel=1e-9)
    # And back: the phase rows must follow the car again.
    back = allocator.solve(three, 10.0)
    assert back.objective == pytest.approx(solve(three, 10.0).objective, rel=1e-9)


def test_unplugged_slot_keeps_the_model_and_a_new_slot_rebuilds_it():
    allocator = Allocator()
    allocator.solve(one_circuit([car("a", slot="c1"), car("b", slot="c2")]), 10.0)
    allocator.solve(one_circuit([car("b", slot="c2")]), 10.0)
    assert allocator.builds == 1
    allocator.solve(one_circuit([car("b", slot="c2"), car("c", slot="c3")]), 10.0)
    assert allocator.builds == 2


def test_declared_slots_avoid_the_rebuild():
    allocator = Allocator(known_slots={"c1": "site", "c2": "site", "c3": "site"})
    allocator.solve(one_circuit([car("a", slot="c1")]), 10.0)
    a = allocator.solve(one_circuit([car("b", slot="c2"), car("c", slot="c3")]), 10.0)
    assert allocator.builds == 1 and a.status is Status.OPTIMAL


def test_new_topology_rebuilds():
    allocator = Allocator()
    allocator.solve(one_circuit([car("a")], limit_a=32.0), 10.0)
    allocator.solve(one_circuit([car("a")], limit_a=20.0), 10.0)  # a limit is a bound: no rebuild
    assert allocator.builds == 1
    allocator.solve(one_circuit([car("a")], steps=6), 10.0)
    assert allocator.builds == 2


# Failure paths: the control loop always gets a verified answer.


def test_time_limit_is_relative_to_the_highs_run_clock():
    # HiGHS's run clock accumulates over runs; a limit not offset by it would time out every
    # solve once the total passed the budget.
    sessions = [car(f"s{k}", phases=((k % 3),) if k % 2 else (0, 1, 2)) for k in range(40)]
    p = one_circuit(sessions, limit_a=150.0, steps=48)
    q = one_circuit(sessions, limit_a=90.0, steps=48)
    allocator = Allocator()
    budget = 0.25
    statuses = set()
    while allocator._relaxed is None or allocator._relaxed.highs.getRunTime() < 1.2 * budget:
        statuses.add(allocator.solve(p, budget).status)
        statuses.add(allocator.solve(q, budget).status)
    assert statuses == {Status.OPTIMAL}


def test_solver_exception_answers_with_the_fallback_and_rebuilds(monkeypatch):
    import optimizer.lp as lp_module

    p = one_circuit([car("a"), car("b")], load_a=(20.0, 0.0, 0.0))
    allocator = Allocator()
    allocator.solve(p, 10.0)

    def broken(self, deadline):
        raise RuntimeError("HiGHS went away")

    with monkeypatch.context() as m:
        m.setattr(lp_module._Model, "run", broken)
        a = allocator.solve(p, 10.0)
    assert a.status is Status.SOLVER_ERROR and a.method == "fallback"
    assert "went away" in a.detail and verify(p, a) == []
    assert allocator.solve(p, 10.0).status is Status.OPTIMAL
    assert allocator.builds == 2


def test_answer_failing_verify_is_replaced_by_the_fallback(monkeypatch):
    import optimizer.lp as lp_module
    from optimizer.verify import Kind, Violation

    p = one_circuit([car("a")])
    fake = [Violation(Kind.NODE_CURRENT, "site", 0, 0, 1.0)]
    monkeypatch.setattr(lp_module, "verify", lambda problem, allocation: fake)
    a = solve(p, 10.0)
    assert a.status is Status.VERIFY_FAILED and a.method == "fallback"
    assert "node_current" in a.detail


def test_fractional_values_left_after_the_last_round_are_paused(monkeypatch):
    import optimizer.lp as lp_module

    monkeypatch.setattr(lp_module, "_FLOOR_ROUNDS", 1)
    p = one_circuit([car("a"), car("b")], load_a=(22.0, 0.0, 0.0))
    a = solved(p)
    assert a.paused and all(a.dispatch_a[sid] == 0.0 for sid in a.paused)
    assert all(x == 0.0 or x >= 6.0 for x in a.dispatch_a.values())
