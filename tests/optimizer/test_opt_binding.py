"""Step-0 holds (`optimizer.binding`) on hand-made problems whose binding limit is known."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings

from optimizer import binding as b
from optimizer.fallback import allocate
from optimizer.lp import solve
from optimizer.problem import Load, Node, Problem, Tariff
from optimizer.verify import verify
from tests.optimizer.cases import car, one_circuit, problems


def holds(problem: Problem):
    allocation = solve(problem, budget_s=10.0)
    assert verify(problem, allocation) == [] and allocation.method == "lp"
    assert allocation.binding is not None
    return allocation, allocation.binding.holds


def tree(sessions, *, feeder_a=20.0, load_a=(0.0, 0.0, 0.0), steps=8, prices=()):
    """Grid 100 A, one feeder under it, each car on its own charger node (32 A) there."""
    nodes = [Node("grid", None, 100.0), Node("feeder", "grid", feeder_a)]
    nodes += [Node(f"charger:{s.id}", "feeder", 32.0) for s in sessions]
    loads = ()
    if any(load_a):
        loads = (Load("house", "feeder", tuple((x,) * steps for x in load_a)),)
    return Problem(
        nodes=tuple(nodes),
        sessions=tuple(sessions),
        steps=steps,
        step_s=900.0,
        loads=loads,
        tariff=Tariff(prices),
    )


def test_a_feeder_full_on_every_phase_holds_both_cars_and_names_the_other():
    p = tree([car("a", "charger:a", max_a=16), car("b", "charger:b", max_a=16)])
    allocation, found = holds(p)
    # 20 A between them (fairness leaves equal cars within one piece of each other).
    assert sum(allocation.dispatch_a.values()) == pytest.approx(20.0)
    for me, other in (("a", "b"), ("b", "a")):
        (hold,) = found[me]  # one hold per tight node, with every tight phase
        assert (hold.kind, hold.node) == (b.PHASE, "feeder")
        assert sorted(hold.phases) == [0, 1, 2] and hold.phase == hold.phases[0]
        assert hold.limit == 20.0 and hold.ev == pytest.approx(20.0)
        assert hold.room == pytest.approx(0.0, abs=1e-6)
        assert hold.sharing == (other,) and hold.sharing_n == 1
        assert hold.dual > 0  # one more amp there is worth something to the LP


def test_only_the_phase_the_building_fills_holds():
    # L1 carries 12 A of building load: 8 A left on L1 of the feeder, 20 on L2 and L3.
    p = tree([car("a", "charger:a", max_a=16)], load_a=(12.0, 0.0, 0.0))
    allocation, found = holds(p)
    assert allocation.dispatch_a["a"] == pytest.approx(8.0)
    (hold,) = found["a"]
    assert (hold.kind, hold.node, hold.phase, hold.phases) == (b.PHASE, "feeder", 0, (0,))
    assert hold.load == 12.0 and hold.sharing == () and hold.sharing_n == 0
    # Alone under the feeder the car's column bound is that limit: its dual is the reduced cost.
    assert hold.dual > 0


def test_a_site_kw_limit_holds_both():
    p = one_circuit([car("a"), car("b")], limit_a=100.0, limit_kw=15.0)
    allocation, found = holds(p)
    assert sum(allocation.dispatch_a.values()) * 3 * 230 / 1000 == pytest.approx(15.0)
    for me in "ab":
        (hold,) = found[me]
        assert (hold.kind, hold.node, hold.phase) == (b.KW, "site", None)
        assert hold.limit == pytest.approx(15.0) and hold.room == pytest.approx(0.0, abs=1e-4)
        assert hold.dual > 0


def test_a_cheaper_later_step_defers_the_car_there():
    prices = (0.30, 0.30, 0.30, 0.10, 0.10, 0.30, 0.30, 0.30)
    p = one_circuit([car("a", energy_kwh=3.0)], limit_a=100.0, prices=prices)
    allocation, found = holds(p)
    assert allocation.dispatch_a["a"] == 0.0
    (hold,) = found["a"]
    assert hold.kind == b.DEFERRED and hold.step == 3
    assert hold.dual > 0  # a step-0 amp would cost more than it earns (its reduced cost)


def test_a_car_at_its_maximum_is_not_held():
    p = one_circuit([car("a", max_a=16)], limit_a=100.0)
    allocation, found = holds(p)
    assert allocation.dispatch_a["a"] == 16.0 and found == {}


def test_a_twin_charger_holds_its_two_connectors_at_its_own_maximum():
    nodes = (Node("grid", None, 200.0), Node("charger:T", "grid", 32.0))
    sessions = (car("t1", "charger:T", max_a=32), car("t2", "charger:T", max_a=32))
    p = Problem(nodes=nodes, sessions=sessions, steps=8, step_s=900.0)
    _, found = holds(p)
    nodes_held = {h.node for h in found["t1"]} | {h.node for h in found["t2"]}
    assert nodes_held == {"charger:T"}
    assert {h.sharing for h in found["t1"]} == {("t2",)}


def test_no_room_for_the_minimum_pauses_one_by_the_6_a_rule():
    p = one_circuit([car("a"), car("b")], load_a=(22.0, 0.0, 0.0))
    allocation, found = holds(p)
    (paused,) = allocation.paused
    kinds = [h.kind for h in found[paused]]
    assert kinds[0] == b.MIN_CURRENT
    hold = found[paused][0]
    assert (hold.node, hold.phase) == ("site", 0) and hold.room < 6.0
    other = "a" if paused == "b" else "b"
    assert hold.sharing == (other,)


def test_a_small_need_below_its_maximum_wants_no_more():
    p = one_circuit([car("a", energy_kwh=0.05)], limit_a=100.0)
    allocation, found = holds(p)
    assert allocation.dispatch_a["a"] == 6.0  # less than one step at min_a: min_a
    assert [h.kind for h in found["a"]] == [b.NEED]


def test_the_fallback_names_the_node_that_ran_out_and_who_took_it():
    p = tree(
        [car("a", "charger:a", max_a=16, priority=1), car("b", "charger:b", max_a=16)],
        feeder_a=24.0,
    )
    allocation = allocate(p)
    found = b.step0_binding(p, allocation)
    assert found.method == "fallback"
    assert allocation.dispatch_a == pytest.approx({"a": 16.0, "b": 8.0})
    assert "a" not in found.holds  # filled first, to its maximum
    hold = found.holds["b"][0]
    assert (hold.kind, hold.node) == (b.PHASE, "feeder") and hold.sharing == ("a",)
    assert math.isnan(hold.dual)


def test_a_blocked_session_and_one_that_left_are_told_apart():
    p = one_circuit([car("a", min_a=0.0, max_a=0.0), car("b", departure_step=0)], limit_a=100.0)
    _, found = holds(p)
    assert [h.kind for h in found["a"]] == [b.BLOCKED]
    assert [h.kind for h in found["b"]] == [b.DEPARTED]


SETTINGS = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(problems())
def test_every_held_session_has_a_reason_lp_and_fallback(problem):
    # "Every capped session explained": no held session without a hold, none of kind NONE,
    # and nobody at its maximum is held.
    for allocation in (solve(problem, budget_s=30.0), allocate(problem)):
        found = allocation.binding or b.step0_binding(problem, allocation)
        for s in problem.sessions:
            x0 = allocation.dispatch_a[s.id]
            held = x0 < s.max_a - b.HELD_TOL_A or s.max_a <= 0
            assert (s.id in found.holds) == held, (allocation.method, s, x0)
            if held:
                kinds = [h.kind for h in found.holds[s.id]]
                assert kinds and b.NONE not in kinds, (allocation.method, s, x0, kinds)
