"""Builders and hypothesis strategies shared by the optimizer tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from optimizer.allocation import Allocation
from optimizer.lp import session_weights
from optimizer.problem import Load, Node, Problem, Session, Tariff

VOLT = 230.0


def car(
    id: str,
    node: str = "site",
    *,
    phases: tuple[int, ...] = (0, 1, 2),
    min_a: float = 6.0,
    max_a: float = 16.0,
    energy_kwh: float = 100.0,
    departure_step: int = 96,
    arrival_step: int = 0,
    priority: int = 0,
    slot: str | None = None,
) -> Session:
    """A session with sensible defaults; the slot defaults to the id."""
    return Session(
        id=id,
        node=node,
        slot=slot or id,
        phases=phases,
        min_a=min_a,
        max_a=max_a,
        energy_kwh=energy_kwh,
        departure_step=departure_step,
        arrival_step=arrival_step,
        priority=priority,
    )


def one_circuit(
    sessions: list[Session],
    *,
    limit_a: float | tuple[float, float, float] = 32.0,
    limit_kw: float | None = None,
    load_a: tuple[float, float, float] = (0.0, 0.0, 0.0),
    steps: int = 8,
    step_s: float = 900.0,
    prices: tuple[float, ...] = (),
    demand_charge_per_kw: float = 0.0,
) -> Problem:
    """One node ("site") with a constant non-EV load per phase."""
    loads = ()
    if any(load_a):
        loads = (Load("house", "site", tuple((x,) * steps for x in load_a)),)
    return Problem(
        nodes=(Node("site", None, limit_a, limit_kw),),
        sessions=tuple(sessions),
        steps=steps,
        step_s=step_s,
        loads=loads,
        tariff=Tariff(prices, demand_charge_per_kw=demand_charge_per_kw),
    )


def energy_of(problem: Problem, plan: np.ndarray) -> np.ndarray:
    """Energy per session of a plan (kWh), by the textbook formula."""
    dt_h = problem.durations_s / 3600.0
    nph = np.array([len(s.phases) for s in problem.sessions], dtype=float)
    return VOLT * nph * (np.asarray(plan) @ dt_h) / 1000.0


def delivered_weighted(problem: Problem, allocation: Allocation) -> float:
    """Σ weight · min(planned, wanted): the LP's first objective tier."""
    wanted = np.array([s.energy_kwh for s in problem.sessions])
    got = np.minimum(energy_of(problem, allocation.plan_a), wanted)
    return float(session_weights(problem) @ got)


def floor_loss_bound(problem: Problem, allocation: Allocation) -> float:
    """Most weighted energy the 6 A rule may cost: one step at min_a per paused session."""
    dt0_h = float(problem.durations_s[0]) / 3600.0
    w = session_weights(problem)
    pos = {s.id: k for k, s in enumerate(problem.sessions)}
    total = 0.0
    for sid in allocation.paused:
        s = problem.sessions[pos[sid]]
        total += w[pos[sid]] * VOLT * len(s.phases) * s.min_a * dt0_h / 1000.0
    return total


@st.composite
def problems(draw, max_nodes: int = 5, max_sessions: int = 10, max_steps: int = 10) -> Problem:
    """Random trees and sessions, including overloaded nodes and odd windows."""
    steps = draw(st.integers(1, max_steps))
    if draw(st.booleans()):
        step_s: float | tuple[float, ...] = draw(st.sampled_from([300.0, 900.0]))
    else:
        step_s = tuple(
            draw(st.lists(st.sampled_from([300.0, 900.0, 3600.0]), min_size=steps, max_size=steps))
        )
    n_nodes = draw(st.integers(1, max_nodes))
    # Mostly usable limits, sometimes tight ones that force pauses, sometimes none at all.
    limit = st.one_of(
        st.floats(4.0, 100.0).map(lambda x: round(x, 1)), st.sampled_from([0.0, 7.0, 10.0, 13.0])
    )
    nodes = []
    for k in range(n_nodes):
        parent = None if k == 0 else f"n{draw(st.integers(0, k - 1))}"
        limit_a = draw(st.one_of(limit, st.tuples(limit, limit, limit)))
        limit_kw = draw(st.one_of(st.none(), st.floats(0.0, 60.0).map(lambda x: round(x, 1))))
        nodes.append(Node(f"n{k}", parent, limit_a, limit_kw))
    loads = []
    for k in range(draw(st.integers(0, 2))):
        node = f"n{draw(st.integers(0, n_nodes - 1))}"
        row = st.lists(
            st.floats(0.0, 30.0).map(lambda x: round(x, 1)), min_size=steps, max_size=steps
        )
        loads.append(Load(f"load{k}", node, (draw(row), draw(row), draw(row))))
    sessions = []
    for k in range(draw(st.integers(0, max_sessions))):
        phases = draw(st.sampled_from([(0, 1, 2), (0,), (1,), (2,), (0, 1)]))
        min_a = draw(st.sampled_from([0.0, 6.0, 6.0, 8.0]))
        max_a = draw(st.floats(min_a, 32.0).map(lambda x: round(x, 1)))
        max_a = max(max_a, min_a)
        sessions.append(
            Session(
                id=f"s{k}",
                node=f"n{draw(st.integers(0, n_nodes - 1))}",
                slot=f"c{k}",
                phases=phases,
                min_a=min_a,
                max_a=max_a,
                energy_kwh=draw(
                    st.one_of(st.floats(0.0, 40.0), st.floats(0.1, 2.0)).map(lambda x: round(x, 2))
                ),
                departure_step=draw(
                    st.one_of(st.integers(1, steps + 3), st.integers(-1, steps + 3))
                ),
                arrival_step=draw(st.one_of(st.just(0), st.integers(0, steps - 1))),
                priority=draw(st.integers(0, 2)),
            )
        )
    prices = ()
    if draw(st.booleans()):
        prices = tuple(
            draw(
                st.lists(
                    st.floats(0.0, 0.6).map(lambda x: round(x, 4)), min_size=steps, max_size=steps
                )
            )
        )
    demand = draw(st.sampled_from([0.0, 0.0, 5.0]))
    return Problem(
        nodes=tuple(nodes),
        sessions=tuple(sessions),
        steps=steps,
        step_s=step_s,
        loads=tuple(loads),
        tariff=Tariff(prices, demand_charge_per_kw=demand),
    )
