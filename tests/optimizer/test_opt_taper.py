"""A DC vehicle's taper in the plan (issue #21): the LP plans no more than the curve allows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from optimizer.lp import Allocator, solve
from optimizer.problem import soc_taper
from optimizer.verify import verify
from sitectl.control.plans import Need, forecast
from tests.optimizer.cases import car, one_circuit

VOLT = 230.0
KWH_PER_AH = 3 * VOLT / 1000  # three phases, efficiency 1
BATTERY = 100.0


def _dc(soc: float, taper: bool):
    # 100 A on three phases (69 kW) into a 100 kWh battery at `soc`, wanting it full.
    need = (100.0 - soc) / 100 * BATTERY
    session = car("bus", max_a=100.0, min_a=0.0, energy_kwh=need, departure_step=16)
    if taper:
        session = dataclasses.replace(
            session, taper=soc_taper(100.0, soc, BATTERY, KWH_PER_AH, 80.0, 0.1)
        )
    return one_circuit([session], limit_a=200.0, steps=16)


def test_the_plan_follows_the_taper_and_is_ready_later():
    p = _dc(70.0, taper=True)
    a = solve(p)
    assert a.method == "lp" and verify(p, a) == []
    plan = a.plan_a[0]
    ((line_a, per_ah),) = p.sessions[0].taper
    dt_h = 0.25
    charge = np.concatenate(([0.0], np.cumsum(plan * dt_h)[:-1]))  # A·h before each step
    mid = charge + plan * dt_h / 2
    mid[0] = 0.0  # step 0 is held to what the SoC allows now (it is solved again within it)
    assert (plan <= line_a - per_ah * mid + 1e-6).all()
    # The taper bites: the current falls step after step once past 80 %.
    assert plan[0] == pytest.approx(100.0) and plan[3] < plan[2] < plan[1] < 100.0
    now = datetime.now(UTC)
    departure = now + timedelta(seconds=float(p.durations_s.sum()))
    needs = {"bus": Need(departure, p.sessions[0].energy_kwh)}
    ready = forecast(p, a, now, needs)["bus"].ready_at
    plain = _dc(70.0, taper=False)
    ready_plain = forecast(plain, solve(plain), now, needs)["bus"].ready_at
    assert ready is not None and ready_plain is not None
    assert (ready - ready_plain).total_seconds() > 1200  # tapering takes ~29 min longer


def test_a_low_soc_charges_at_full_current_until_the_taper():
    p = _dc(20.0, taper=True)
    a = solve(p)
    # 60 kWh to 80 % at 69 kW: the first three steps are at the full 100 A.
    np.testing.assert_allclose(a.plan_a[0, :3], 100.0, atol=1e-6)


def test_warm_allocator_keeps_the_taper_block_as_the_soc_rises():
    alloc = Allocator()
    alloc.solve(_dc(70.0, taper=True))
    assert alloc.builds == 1
    second = alloc.solve(_dc(75.0, taper=True))  # same car, higher SoC: only a bound moves
    assert alloc.builds == 1
    ((line_a, _),) = _dc(75.0, taper=True).sessions[0].taper
    assert second.plan_a[0, 0] <= line_a + 1e-6


def test_the_six_amp_rule_never_raises_above_the_taper():
    # Nearly full: the taper allows less than min_a on step 0, so it is paused, not raised.
    session = car("bus", max_a=100.0, min_a=20.0, energy_kwh=0.5, departure_step=4)
    session = dataclasses.replace(session, taper=((10.0, 1.0),))
    p = one_circuit([session], limit_a=200.0, steps=4)
    a = solve(p)
    assert a.method == "lp" and verify(p, a) == []
    assert a.dispatch_a["bus"] == 0.0 and a.paused == ("bus",)
