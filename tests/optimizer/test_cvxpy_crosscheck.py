"""Cross-check: an independent cvxpy model of the allocation LP reaches HiGHS's optimum.

The model here is written from the objective and constraints as documented in :mod:`optimizer`
and :mod:`optimizer.lp`, not from the HiGHS model's code: no flow variables (each session's
current appears directly in the row of every node above it), energy in kWh rather than A·h,
the peak in kW rather than summed amperes, and an interior-point solver (Clarabel) instead of
simplex. If :class:`optimizer.lp.Allocator` built a row, a bound or a cost wrong, the two optima
part. Only the relaxed optimum (``Allocation.objective``, before the 6 A rule) is compared: the
6 A rule is not an LP.

Instances are random but seeded, built through :class:`optimizer.problem.Problem`. cvxpy is the
``crosscheck`` extra (also in ``dev``); without it the module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.allocation import Status
from optimizer.lp import (
    BEYOND_HORIZON_FACTOR,
    EARLINESS_PER_KWH,
    FAIRNESS_PIECES,
    PRIORITY_BASE,
    SHORTFALL_MARGIN,
    solve,
)
from optimizer.problem import Load, Node, Problem, Session, Tariff

cp = pytest.importorskip("cvxpy")

#: "Worth at most half the earliness of one (shortest) step" (optimizer package docstring).
FAIRNESS_SHARE_OF_EARLINESS = 0.5


def random_problem(seed: int) -> Problem:
    """A small depot: a grid connection, one to three feeders, a few cars, a building load."""
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(4, 9))
    if rng.random() < 0.5:
        step_s: float | tuple[float, ...] = float(rng.choice([300.0, 900.0]))
    else:  # fine near now, coarse later
        step_s = tuple(sorted(float(rng.choice([300.0, 900.0, 3600.0])) for _ in range(steps)))
    nodes = [
        Node(
            "grid",
            None,
            tuple(float(x) for x in rng.uniform(40, 100, 3)),
            float(rng.uniform(30, 60)) if rng.random() < 0.6 else None,
        )
    ]
    for k in range(int(rng.integers(1, 4))):
        nodes.append(
            Node(
                f"feeder{k}",
                "grid",
                float(rng.uniform(20, 60)),
                float(rng.uniform(10, 30)) if rng.random() < 0.3 else None,
            )
        )
    sessions = []
    for k in range(int(rng.integers(2, 7))):
        three = rng.random() < 0.6
        min_a = 6.0
        sessions.append(
            Session(
                id=f"car{k}",
                node=str(rng.choice([n.id for n in nodes])),
                slot=f"slot{k}",
                phases=(0, 1, 2) if three else (int(rng.integers(0, 3)),),
                min_a=min_a,
                max_a=float(rng.uniform(min_a, 32)),
                energy_kwh=float(rng.uniform(0.5, 40)),
                departure_step=int(rng.integers(1, steps + 3)),
                arrival_step=int(rng.integers(0, 2)),
                priority=int(rng.integers(0, 3)),
            )
        )
    building = rng.uniform(-5, 30, (3, steps))  # negative: local generation
    tariff = Tariff(
        price_per_kwh=tuple(float(x) for x in rng.uniform(0.05, 0.40, steps)),
        demand_charge_per_kw=float(rng.choice([0.0, 0.1, 0.25])),
        peak_so_far_kw=float(rng.uniform(0, 20)),
    )
    return Problem(
        nodes=tuple(nodes),
        sessions=tuple(sessions),
        steps=steps,
        step_s=step_s,
        loads=(Load("building", "grid", tuple(tuple(row) for row in building)),),
        tariff=tariff,
    )


def cvxpy_optimum(problem: Problem) -> float:
    """The documented LP, stated directly; returns its optimal objective (currency units)."""
    S, T, U = len(problem.sessions), problem.steps, problem.voltage_ln_v
    dt_h = problem.durations_s / 3600.0
    start_h = np.concatenate(([0.0], np.cumsum(dt_h)[:-1]))
    horizon_h = float(dt_h.sum())
    prices = np.asarray(problem.tariff.price_per_kwh or [0.0] * T)
    tariff = problem.tariff
    nph = np.array([len(s.phases) for s in problem.sessions], dtype=float)
    kwh_per_a = U * nph[:, None] * dt_h[None, :] / 1000.0  # (S, T)

    # A kWh delivered is worth W · 4^priority (× 0.5 when leaving after the horizon).
    big_w = (
        SHORTFALL_MARGIN
        * (np.abs(prices).max() + tariff.demand_charge_per_kw / dt_h.min() + EARLINESS_PER_KWH)
        + 1.0
    )
    value = np.array(
        [
            PRIORITY_BASE**s.priority * (BEYOND_HORIZON_FACTOR if s.departure_step > T else 1.0)
            for s in problem.sessions
        ]
    )
    t = np.arange(T)
    window = np.array(
        [
            (t >= s.arrival_step) & (t < s.departure_step) & (s.energy_kwh > 0) & (s.max_a > 0)
            for s in problem.sessions
        ]
    )
    max_a = np.array([s.max_a for s in problem.sessions])
    min_a = np.array([s.min_a for s in problem.sessions])

    i = cp.Variable((S, T), nonneg=True)  # A per phase drawn
    peak_kw = cp.Variable()
    K = FAIRNESS_PIECES
    a = cp.Variable((S, K), nonneg=True)  # pieces of the step-0 current
    cons = [i <= np.where(window, max_a[:, None], 0.0)]
    cons.append(
        cp.sum(cp.multiply(kwh_per_a, i), axis=1) <= [s.energy_kwh for s in problem.sessions]
    )

    load = problem.load_through_a()  # (nodes, 3, T)
    ancestors = problem.ancestors()
    for n, node in enumerate(problem.nodes):
        below = [
            k for k, s in enumerate(problem.sessions) if n in ancestors[problem.node_index(s.node)]
        ]
        for p in range(3):
            on_p = [k for k in below if p in problem.sessions[k].phases]
            if on_p:
                room = np.maximum(node.limit_a[p] - load[n, p], 0.0)
                cons.append(cp.sum(i[on_p, :], axis=0) <= room)
        if node.limit_kw is not None and below:
            room_kw = np.maximum(node.limit_kw - U * load[n].sum(axis=0) / 1000.0, 0.0)
            ev_kw = U / 1000.0 * (nph[below] @ i[below, :])
            cons.append(ev_kw <= room_kw)
    root = problem.root()
    grid_kw = U / 1000.0 * (nph @ i + load[root].sum(axis=0))
    cons += [peak_kw >= tariff.peak_so_far_kw, peak_kw >= grid_kw]

    widths = np.zeros((S, K))
    widths[:, 0] = np.where(window[:, 0], min_a, 0.0)
    widths[:, 1:] = np.where(window[:, 0], (max_a - min_a) / (K - 1), 0.0)[:, None]
    cons += [a <= widths, cp.sum(a, axis=1) <= i[:, 0]]

    per_kwh = -big_w * value[:, None] + prices[None, :] + EARLINESS_PER_KWH * start_h / horizon_h
    eps_fair = FAIRNESS_SHARE_OF_EARLINESS * EARLINESS_PER_KWH * dt_h.min() / horizon_h
    piece_value = eps_fair * kwh_per_a[:, :1] * ((K - np.arange(K)) / K)[None, :]
    objective = (
        cp.sum(cp.multiply(kwh_per_a * per_kwh, i))
        + tariff.demand_charge_per_kw * peak_kw
        - cp.sum(cp.multiply(piece_value, a))
    )
    model = cp.Problem(cp.Minimize(objective), cons)
    # Clarabel's default stopping tolerances (1e-8 relative) leave ~1e-6 on an objective of
    # ~1e3, more than the fairness tier is worth; these reach ~1e-9 on every instance here.
    model.solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500
    )
    assert model.status == cp.OPTIMAL, model.status
    return float(model.value)


@pytest.mark.parametrize("seed", range(8))
def test_highs_optimum_matches_an_independent_cvxpy_model(seed: int) -> None:
    problem = random_problem(seed)
    allocation = solve(problem, budget_s=30.0)
    assert allocation.status is Status.OPTIMAL, allocation.detail
    expected = cvxpy_optimum(problem)
    # Absolute, and fine enough to see the smallest tier: fairness is worth ~1e-5..1e-4 here.
    assert allocation.objective == pytest.approx(expected, rel=1e-12, abs=1e-7)


def test_the_crosscheck_notices_a_different_model() -> None:
    """The comparison has teeth: a tighter grid limit moves the cvxpy optimum away."""
    problem = random_problem(0)
    allocation = solve(problem, budget_s=30.0)
    root = problem.nodes[0]
    tighter = Problem(
        nodes=(
            Node(root.id, None, tuple(x / 4 for x in root.limit_a), root.limit_kw),
            *problem.nodes[1:],
        ),
        sessions=problem.sessions,
        steps=problem.steps,
        step_s=problem.step_s,
        loads=problem.loads,
        tariff=problem.tariff,
    )
    assert cvxpy_optimum(tighter) != pytest.approx(allocation.objective, rel=1e-12, abs=1e-7)
