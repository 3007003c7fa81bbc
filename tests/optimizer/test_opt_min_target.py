"""Minimum targets (issue #19.1): met first, weighted by priority, in the LP and the fallback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optimizer.fallback import allocate
from optimizer.lp import Allocator, min_weights, session_weights, shortfall_weight, solve
from optimizer.problem import Session
from optimizer.reference import max_energy
from optimizer.verify import verify
from tests.optimizer.cases import car, one_circuit

#: 16 A on three phases for one 15-minute step (kWh); the site gives 8 such steps in all.
STEP_KWH = 3 * 230.0 * 16 / 1000 * 0.25


def _with_min(session: Session, min_kwh: float) -> Session:
    return dataclasses.replace(session, min_energy_kwh=min_kwh)


def _two_cars(min_kwh: float):
    # One car's worth of current for 8 steps (~22 kWh); both want 20 kWh, "vip" ranks higher.
    return one_circuit(
        [
            _with_min(car("vip", energy_kwh=20.0, departure_step=8, priority=2), min_kwh),
            _with_min(car("low", energy_kwh=20.0, departure_step=8, priority=0), min_kwh),
        ],
        limit_a=16.0,
    )


def test_both_reach_their_minimum_before_either_goes_further():
    p = _two_cars(8.0)
    a = solve(p)
    assert a.method == "lp" and verify(p, a) == []
    assert a.energy_kwh["low"] == pytest.approx(8.0, abs=1e-3)
    assert a.energy_kwh["vip"] == pytest.approx(8 * STEP_KWH - 8.0, abs=1e-3)


def test_without_minimums_priority_takes_everything():
    # The same site without minimum targets: the higher priority fills up first (what the
    # minimum tier changes; this is the behaviour the test above must not have).
    a = solve(_two_cars(0.0))
    assert a.energy_kwh["vip"] == pytest.approx(20.0, abs=1e-3)
    assert a.energy_kwh["low"] < 8.0 - 1.0


def test_minimums_that_cannot_all_be_met_go_by_priority():
    # 2 × 15 kWh of minimums on ~22 kWh: the vip's is met, the other gets the rest.
    a = solve(_two_cars(15.0))
    assert a.energy_kwh["vip"] == pytest.approx(15.0, abs=1e-3)
    assert a.energy_kwh["low"] == pytest.approx(8 * STEP_KWH - 15.0, abs=1e-3)


def test_min_weights_outweigh_every_full_target_kwh():
    p = one_circuit(
        [
            _with_min(car("a", priority=0), 5.0),
            car("b", priority=4),
            _with_min(car("c", priority=1), 5.0),
        ]
    )
    w = min_weights(p)
    full = session_weights(p)
    assert w[1] == 0.0
    assert w[0] > 3 * full.max()  # a priority-0 minimum beats a priority-4 full target
    assert w[2] == pytest.approx(4 * w[0])


def test_warm_allocator_follows_a_minimum_that_appears():
    alloc = Allocator()
    first = alloc.solve(_two_cars(0.0))
    assert first.energy_kwh["low"] < 7.0
    second = alloc.solve(_two_cars(8.0))
    assert second.energy_kwh["low"] == pytest.approx(8.0, abs=1e-3)
    assert alloc.builds == 2  # a slot's first minimum adds its row
    third = alloc.solve(_two_cars(10.0))
    assert third.energy_kwh["low"] == pytest.approx(10.0, abs=1e-3)
    fourth = alloc.solve(_two_cars(0.0))
    assert fourth.energy_kwh["low"] == pytest.approx(first.energy_kwh["low"], abs=1e-3)
    assert alloc.builds == 2  # kept after: bounds and costs only


def test_fallback_serves_minimums_first():
    p = _two_cars(8.0)
    a = allocate(p, horizon=True)
    assert verify(p, a) == []
    assert a.energy_kwh["low"] >= 8.0 - 1e-6
    assert a.energy_kwh["vip"] >= 8.0 - 1e-6
    # Without minimums the same rule gives the vip everything first.
    plain = allocate(_two_cars(0.0), horizon=True)
    assert plain.energy_kwh["low"] < 8.0 - 1.0


def test_fallback_step_zero_shares_between_minimums():
    # Two cars on a 32 A circuit, each wanting a minimum: step 0 gives both their share of
    # the minimum before the vip takes the rest.
    p = one_circuit(
        [
            _with_min(car("vip", max_a=32.0, energy_kwh=30.0, departure_step=2, priority=2), 2.0),
            _with_min(car("low", max_a=32.0, energy_kwh=30.0, departure_step=2), 2.0),
        ],
        limit_a=32.0,
    )
    a = allocate(p)
    assert verify(p, a) == []
    assert a.dispatch_a["low"] >= 6.0 and a.dispatch_a["vip"] >= 6.0
    assert sum(a.dispatch_a.values()) == pytest.approx(32.0)


def test_reference_with_minimum_weights_agrees_with_the_lp():
    p = _two_cars(8.0)
    weights = session_weights(p)
    _, plan = max_energy(p, weights, min_weights=min_weights(p) / shortfall_weight(p))
    kwh = plan.sum(axis=1) * 3 * 230.0 / 1000 * 0.25
    np.testing.assert_allclose(kwh, [8 * STEP_KWH - 8.0, 8.0], atol=1e-3)


def test_min_above_need_is_refused():
    with pytest.raises(ValueError, match="min_energy_kwh"):
        _with_min(car("a", energy_kwh=5.0), 6.0)
