"""verify() finds each kind of broken rule in hand-made allocations, and nothing in clean ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.allocation import Allocation, Status
from optimizer.problem import Load, Node, Problem
from optimizer.verify import Kind, Violation, verify
from tests.optimizer.cases import car, one_circuit


def alloc(problem, plan):
    plan = np.asarray(plan, dtype=float)
    ids = [s.id for s in problem.sessions]
    return Allocation(
        dispatch_a=dict(zip(ids, plan[:, 0].tolist(), strict=True)) if plan.ndim == 2 else {},
        plan_a=plan,
        energy_kwh={},
        status=Status.FALLBACK,
        method="test",
    )


def kinds(violations):
    return sorted({v.kind for v in violations})


TREE = Problem(
    nodes=(Node("grid", None, 50.0, limit_kw=20.0), Node("f1", "grid", (32.0, 20.0, 32.0))),
    sessions=(car("a", "f1", energy_kwh=50.0), car("b", "f1", phases=(1,), max_a=32.0)),
    steps=3,
    step_s=900,
    loads=(Load("building", "grid", ((10.0,) * 3, (10.0,) * 3, (10.0,) * 3)),),
)


def test_clean_allocation_passes():
    assert verify(TREE, alloc(TREE, [[10, 10, 10], [10, 10, 0]])) == []


def test_phase_current_through_a_node():
    # L2 of f1: 16 + 8 = 24 > 20.
    v = verify(TREE, alloc(TREE, [[16, 0, 0], [8, 0, 0]]))
    assert v == [Violation(Kind.NODE_CURRENT, "f1", 1, 0, pytest.approx(4.0))]


def test_current_through_an_ancestor_counts_the_load():
    p = one_circuit([car("a", max_a=32.0)], limit_a=32.0, load_a=(10.0, 0.0, 0.0), steps=2)
    v = verify(p, alloc(p, [[25, 0]]))
    assert v == [Violation(Kind.NODE_CURRENT, "site", 0, 0, pytest.approx(3.0))]


def test_power_limit():
    # Grid: 20 kW - 6.9 kW building = 13.1 kW for EVs; 3 × 16 A + 0 = 48 A × 230 V = 11.04 kW ok,
    # 3 × 16 + 16 = 64 A × 230 V = 14.72 kW is 1.62 kW over.
    assert verify(TREE, alloc(TREE, [[16, 0, 0], [0, 0, 0]])) == []
    v = verify(TREE, alloc(TREE, [[16, 0, 0], [16, 0, 0]]))
    assert kinds(v) == [Kind.NODE_CURRENT, Kind.NODE_POWER]
    power = next(x for x in v if x.kind is Kind.NODE_POWER)
    assert (power.id, power.step, power.amount) == ("grid", 0, pytest.approx(1.62))


def test_overloaded_node_accepts_zero_and_reports_only_ev_current():
    p = one_circuit([car("a")], limit_a=32.0, load_a=(40.0, 0.0, 0.0), steps=2)
    assert verify(p, alloc(p, [[0, 0]])) == []
    assert verify(p, alloc(p, [[6, 0]]))[0].amount == pytest.approx(6.0)


def test_session_bounds_window_and_floor():
    p = one_circuit(
        [car("a", max_a=16.0, arrival_step=1, departure_step=3)], steps=4, limit_a=100.0
    )
    assert kinds(verify(p, alloc(p, [[0, 17, 0, 0]]))) == [Kind.SESSION_MAX]
    assert kinds(verify(p, alloc(p, [[0, 10, 10, 10]]))) == [Kind.WINDOW]
    assert kinds(verify(p, alloc(p, [[0, -1, 0, 0]]))) == [Kind.NEGATIVE]
    q = one_circuit([car("a")], steps=2)
    assert verify(q, alloc(q, [[3.0, 0]])) == [Violation(Kind.MIN_CURRENT, "a", None, 0, 3.0)]
    # Below the minimum after step 0 is only a plan, not a dispatch.
    assert verify(q, alloc(q, [[6.0, 3.0]])) == []


def test_energy_above_what_is_wanted():
    p = one_circuit([car("a", energy_kwh=2.0)], steps=2)
    # 16 A × 3 × 230 V × 0.5 h = 5.52 kWh planned for 2 wanted.
    v = verify(p, alloc(p, [[16.0, 16.0]]))
    assert v == [Violation(Kind.ENERGY, "a", None, None, pytest.approx(3.52))]


def test_minimum_may_overshoot_a_tiny_need_by_one_step_only():
    p = one_circuit([car("a", energy_kwh=0.5)], steps=2)
    assert verify(p, alloc(p, [[6.0, 0.0]])) == []
    assert kinds(verify(p, alloc(p, [[6.0, 6.0]]))) == [Kind.ENERGY]


def test_dispatch_must_match_the_plan_and_cover_every_session():
    p = one_circuit([car("a"), car("b")], steps=2)
    good = alloc(p, [[6, 0], [0, 0]])
    bad = Allocation({"a": 7.0, "x": 1.0}, good.plan_a, {}, Status.FALLBACK, "test")
    assert [(v.kind, v.id) for v in verify(p, bad)] == [
        (Kind.DISPATCH, "x"),
        (Kind.DISPATCH, "a"),
        (Kind.DISPATCH, "b"),
    ]


def test_wrong_shape_and_nan():
    p = one_circuit([car("a")], steps=2)
    assert kinds(verify(p, alloc(p, [[6, 0, 0]]))) == [Kind.SHAPE]
    v = verify(p, alloc(p, [[6, math.nan]]))
    assert [(x.kind, x.step) for x in v] == [(Kind.NOT_FINITE, 1)]


def test_tolerance_is_absolute_amperes():
    p = one_circuit([car("a", max_a=32.0)], limit_a=20.0, steps=1)
    assert verify(p, alloc(p, [[20.0 + 5e-7]])) == []
    assert verify(p, alloc(p, [[20.0 + 5e-7]]), tol=1e-9) != []
