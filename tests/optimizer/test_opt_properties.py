"""Properties over random trees and sessions (hypothesis, derandomised)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings

from optimizer.allocation import Status
from optimizer.fallback import allocate
from optimizer.lp import Allocator, session_weights, solve
from optimizer.reference import max_energy
from optimizer.verify import verify
from tests.optimizer.cases import delivered_weighted, floor_loss_bound, problems

SETTINGS = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Energies compare to 1e-6 kWh plus solver tolerance relative to the size of the answer.
TOL_KWH = 1e-5


@SETTINGS
@given(problems())
def test_lp_answers_are_optimal_and_verified(problem):
    a = solve(problem, budget_s=30.0)
    assert a.status is Status.OPTIMAL, a.detail
    assert verify(problem, a) == []
    assert set(a.dispatch_a) == {s.id for s in problem.sessions}


@SETTINGS
@given(problems())
def test_fallback_answers_are_verified(problem):
    assert verify(problem, allocate(problem)) == []
    assert verify(problem, allocate(problem, horizon=True)) == []


@SETTINGS
@given(problems())
def test_lp_delivers_what_the_reference_optimum_does_less_the_6a_rule(problem):
    a = solve(problem, budget_s=30.0)
    best, _ = max_energy(problem, session_weights(problem))
    got = delivered_weighted(problem, a)
    slack = TOL_KWH * (1.0 + best)
    assert got <= best + slack
    assert got >= best - floor_loss_bound(problem, a) - slack
    if not a.paused:
        assert got == pytest.approx(best, rel=1e-6, abs=TOL_KWH)


@SETTINGS
@given(problems())
def test_lp_never_delivers_less_than_the_fallback(problem):
    a = solve(problem, budget_s=30.0)
    f = allocate(problem, horizon=True)
    slack = TOL_KWH * (1.0 + delivered_weighted(problem, f))
    assert delivered_weighted(problem, a) >= (
        delivered_weighted(problem, f) - floor_loss_bound(problem, a) - slack
    )


@SETTINGS
@given(problems())
def test_warm_resolve_gives_the_cold_objective(problem):
    allocator = Allocator()
    other = dataclasses.replace(
        problem,
        sessions=tuple(
            dataclasses.replace(s, energy_kwh=s.energy_kwh / 2, departure_step=s.departure_step - 1)
            for s in problem.sessions
        ),
    )
    allocator.solve(other, 30.0)
    warm = allocator.solve(problem, 30.0)
    again = allocator.solve(problem, 30.0)
    cold = solve(problem, 30.0)
    assert allocator.builds <= 1
    assert warm.status is Status.OPTIMAL and again.status is Status.OPTIMAL
    assert warm.objective == pytest.approx(cold.objective, rel=1e-7, abs=1e-6)
    assert again.objective == pytest.approx(warm.objective, rel=1e-7, abs=1e-6)
