"""Non-uniform time grids: conservative coarsening, plans that stay feasible on the fine grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from optimizer.grid import TimeGrid
from optimizer.lp import solve
from optimizer.problem import Load, Node, Problem, Tariff
from optimizer.reference import max_energy
from optimizer.verify import verify
from tests.optimizer.cases import car, one_circuit, problems


def test_tiered_grid_covers_the_horizon():
    grid = TimeGrid.tiered(288, [(24, 1), (12, 3), (1, 12)])
    assert grid.blocks[:25] == (1,) * 24 + (3,)
    assert grid.fine_steps == 288 and len(grid.blocks) == 55
    assert TimeGrid.tiered(10, [(4, 1), (1, 4)]).blocks == (1, 1, 1, 1, 4, 2)
    with pytest.raises(ValueError, match="blocks"):
        TimeGrid(())


def test_coarsening_is_conservative():
    grid = TimeGrid((1, 2, 3))
    fine = Problem(
        nodes=(Node("site", None, 32.0),),
        sessions=(car("a", arrival_step=1, departure_step=5), car("b", departure_step=9)),
        steps=6,
        step_s=300.0,
        loads=(Load("h", "site", ((1, 2, 5, 3, 9, 4), (0,) * 6, (0,) * 6)),),
        tariff=Tariff((0.1, 0.2, 0.4, 0.3, 0.3, 0.3)),
    )
    coarse = grid.coarsen(fine)
    assert coarse.durations_s.tolist() == [300.0, 600.0, 900.0]
    assert coarse.loads[0].current_a[0] == (1.0, 5.0, 9.0)  # the largest of each block
    assert coarse.prices.tolist() == pytest.approx([0.1, 0.3, 0.3])
    a, b = coarse.sessions
    # a: fine window [1, 5) covers block 1 (steps 1-2) only; block 2 (3-5) ends after it leaves.
    assert (a.arrival_step, a.departure_step) == (1, 2)
    assert b.departure_step == 3 + (9 - 6)  # still beyond the horizon


@settings(
    derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(problems(max_steps=12))
def test_coarse_plans_expand_to_verified_fine_plans(problem):
    grid = TimeGrid.tiered(problem.steps, [(2, 1), (1, 3)])
    coarse = solve(grid.coarsen(problem), budget_s=30.0)
    fine = grid.expand_allocation(coarse)
    assert verify(problem, fine) == []
    assert fine.dispatch_a == coarse.dispatch_a


def test_coarse_grid_keeps_most_of_the_energy():
    sessions = [car(f"s{k}", energy_kwh=10.0 + k, departure_step=20 + 7 * k) for k in range(6)]
    problem = one_circuit(sessions, limit_a=40.0, steps=96, step_s=300.0)
    grid = TimeGrid.tiered(96, [(12, 1), (1, 6)])
    fine = grid.expand_allocation(solve(grid.coarsen(problem), 30.0))
    best, _ = max_energy(problem)
    dt_h = problem.durations_s / 3600.0
    got = sum(3 * 230 * (row @ dt_h) / 1000 for row in fine.plan_a)
    assert verify(problem, fine) == []
    assert best * 0.98 <= got <= best + 1e-6
    assert np.count_nonzero(fine.plan_a[:, 0]) > 0
