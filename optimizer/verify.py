"""Check an allocation against every limit of its problem, independently of how it was made.

The control loop calls :func:`verify` before every dispatch and sends nothing that fails; the
tests call it on every result. It recomputes everything from the :class:`~optimizer.problem.Problem`
dataclasses (it does not share the solvers' array code), so a bug there cannot hide here.

What is checked, for every session, node, phase and step of the plan (step 0 is the dispatch):

* ``node_current``: EV current through a node on a phase ≤ ``max(0, limit_a − non-EV load)``.
  A node whose non-EV load alone is over its limit is not the allocation's fault; only EV
  current above zero there is reported. The limit on a step is the node's own lowered by
  every hard cap covering the step (`optimizer.problem.NodeCap`); soft caps may be exceeded
  (at a price, in the LP) and are not checked.
* ``node_power``: ``U_LN · Σ phases (EV current) / 1000 ≤ max(0, limit_kw − non-EV power)``,
  with ``limit_kw`` per step in the same way (a hard kW cap on a node without one of its own
  limits it on the steps it covers).
* ``session_max``, ``negative``, ``not_finite``: ``0 ≤ i ≤ max_a`` (``× last_step_share`` on
  the last step of a car leaving part-way through it, unless that is step 0).
* ``window``: nothing before ``arrival_step`` or from ``departure_step`` on.
* ``min_current`` (step 0 only): ``i == 0`` or ``i ≥ min_a`` (IEC 61851-1: no current between 0
  and the minimum; the plan after step 0 is not dispatched and may go below).
* ``energy``: planned energy ≤ what is wanted; a car dispatched at exactly ``min_a`` may exceed
  it by at most that one step (it stops by itself when full).
* ``dispatch``, ``shape``: the dispatch covers exactly the problem's sessions and equals the
  plan's step 0; the plan has one row per session and one column per step.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation
from optimizer.problem import Problem

__all__ = ["Kind", "Violation", "verify"]


class Kind(enum.StrEnum):
    """What a :class:`Violation` is about."""

    NODE_CURRENT = "node_current"
    NODE_POWER = "node_power"
    SESSION_MAX = "session_max"
    NEGATIVE = "negative"
    NOT_FINITE = "not_finite"
    WINDOW = "window"
    MIN_CURRENT = "min_current"
    ENERGY = "energy"
    DISPATCH = "dispatch"
    SHAPE = "shape"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule.

    Args:
        kind: Which rule.
        id: Node id (``node_*``) or session id (the rest; empty for ``shape``).
        phase: Site phase 0..2 where it applies, else ``None``.
        step: Step where it applies, else ``None``.
        amount: By how much (A, kW or kWh, per ``kind``); for ``min_current`` the current.
    """

    kind: Kind
    id: str
    phase: int | None
    step: int | None
    amount: float


def verify(problem: Problem, allocation: Allocation, tol: float = 1e-6) -> list[Violation]:
    """Check ``allocation`` against every limit of ``problem``.

    Args:
        problem: The problem the allocation answers.
        allocation: The allocation to check.
        tol: Absolute tolerance in A (for energy: ``tol`` A over the whole horizon; for kW:
            ``tol`` A on every phase). Floating point only; 1 µA by default.

    Returns:
        Every violation found, node limits first; empty when the allocation may be dispatched.
    """
    sessions = problem.sessions
    T = problem.steps
    plan = np.asarray(allocation.plan_a, dtype=float)
    if plan.shape != (len(sessions), T):
        return [Violation(Kind.SHAPE, "", None, None, float(plan.size))]
    out: list[Violation] = []
    if not np.isfinite(plan).all():
        for k, t in zip(*np.nonzero(~np.isfinite(plan)), strict=True):
            out.append(Violation(Kind.NOT_FINITE, sessions[k].id, None, int(t), math.nan))
        return out
    volt = problem.voltage_ln_v
    dt_h = problem.durations_s / 3600.0
    S = len(sessions)
    node_of = np.fromiter((problem.node_index(s.node) for s in sessions), dtype=np.intp, count=S)
    phase_mask = np.zeros((S, 3), dtype=bool)
    for k, s in enumerate(sessions):
        phase_mask[k, list(s.phases)] = True

    # Node limits: EV current drawn directly at each node per phase, then added up the tree
    # (children before parents, so each node's total is complete when it is passed up).
    M = len(problem.nodes)
    direct = np.zeros((M, 3, T))
    for p in range(3):
        on_p = phase_mask[:, p]
        np.add.at(direct[:, p, :], node_of[on_p], plan[on_p])
    parents = problem.parents()
    ev = direct
    for n in _bottom_up(parents):
        if parents[n] >= 0:
            ev[parents[n]] += ev[n]
    load = problem.load_through_a()
    # Per step, from the dataclasses: each node's own limit, then every hard cap over its steps.
    limits = np.repeat(
        np.array([node.limit_a for node in problem.nodes], dtype=float).reshape(M, 3)[:, :, None],
        T,
        axis=2,
    )
    limit_kw = np.full((M, T), np.inf)
    for n, node in enumerate(problem.nodes):
        if node.limit_kw is not None:
            limit_kw[n] = node.limit_kw
    for cap in problem.caps:
        if not cap.hard:
            continue
        n = problem.node_index(cap.node)
        steps = slice(cap.first_step, cap.end_step)
        if cap.limit_a is not None:
            for p in range(3):
                limits[n, p, steps] = np.minimum(limits[n, p, steps], cap.limit_a[p])
        if cap.limit_kw is not None:
            limit_kw[n, steps] = np.minimum(limit_kw[n, steps], cap.limit_kw)
    allowed = np.maximum(limits - load, 0.0)
    for n, p, t in zip(*np.nonzero(ev > allowed + tol), strict=True):
        excess = float(ev[n, p, t] - allowed[n, p, t])
        out.append(Violation(Kind.NODE_CURRENT, problem.nodes[n].id, int(p), int(t), excess))
    kw = [n for n in range(M) if np.isfinite(limit_kw[n]).any()]
    if kw:
        ev_kw = volt * ev[kw].sum(axis=1) / 1000.0
        allowed_kw = np.maximum(limit_kw[kw] - volt * load[kw].sum(axis=1) / 1000.0, 0.0)
        for j, t in zip(*np.nonzero(ev_kw > allowed_kw + 3 * tol * volt / 1000.0), strict=True):
            excess = float(ev_kw[j, t] - allowed_kw[j, t])
            out.append(Violation(Kind.NODE_POWER, problem.nodes[kw[j]].id, None, int(t), excess))

    # Sessions: bounds, window, the 6 A floor on step 0, energy (vectorised, then reported).
    fields = np.array(
        [(s.min_a, s.max_a, s.energy_kwh, s.arrival_step, s.departure_step) for s in sessions],
        dtype=float,
    ).reshape(S, 5)
    min_a, _, wanted, arrival, departure = fields.T
    steps = np.arange(T)
    outside = (steps[None, :] < arrival[:, None]) | (steps[None, :] >= departure[:, None])
    for k, t in zip(*np.nonzero(plan < -tol), strict=True):
        out.append(Violation(Kind.NEGATIVE, sessions[k].id, None, int(t), float(-plan[k, t])))
    # The cap is max_a, less on a last step the car leaves part-way through (not step 0).
    cap = problem.step_caps_a()
    for k, t in zip(*np.nonzero(plan > cap + tol), strict=True):
        excess = float(plan[k, t] - cap[k, t])
        out.append(Violation(Kind.SESSION_MAX, sessions[k].id, None, int(t), excess))
    for k, t in zip(*np.nonzero(outside & (plan > tol)), strict=True):
        out.append(Violation(Kind.WINDOW, sessions[k].id, None, int(t), float(plan[k, t])))
    x0 = plan[:, 0]
    for k in np.flatnonzero((x0 > tol) & (x0 < min_a - tol)):
        out.append(Violation(Kind.MIN_CURRENT, sessions[k].id, None, 0, float(x0[k])))
    kwh_per_a = volt * np.multiply.outer(phase_mask.sum(axis=1), dt_h) / 1000.0
    energy = (plan * kwh_per_a).sum(axis=1)
    # A car dispatched at its minimum may overshoot by that one step: it stops when full.
    allowed = np.where(x0 >= min_a - tol, np.maximum(wanted, min_a * kwh_per_a[:, 0]), wanted)
    for k in np.flatnonzero(energy > allowed + tol * kwh_per_a.sum(axis=1)):
        excess = float(energy[k] - allowed[k])
        out.append(Violation(Kind.ENERGY, sessions[k].id, None, None, excess))

    # The dispatch is the plan's step 0, for exactly the problem's sessions.
    ids = {s.id for s in sessions}
    for extra in sorted(set(allocation.dispatch_a) - ids):
        out.append(Violation(Kind.DISPATCH, extra, None, 0, math.nan))
    for k, s in enumerate(sessions):
        sent = allocation.dispatch_a.get(s.id)
        if sent is None or not abs(float(sent) - plan[k, 0]) <= tol:
            out.append(Violation(Kind.DISPATCH, s.id, None, 0, math.nan if sent is None else sent))
    return out


def _bottom_up(parents: list[int]) -> list[int]:
    """Node positions ordered so that every node comes before its parent."""
    children: list[list[int]] = [[] for _ in parents]
    for n, p in enumerate(parents):
        if p >= 0:
            children[p].append(n)
    order = [n for n, p in enumerate(parents) if p < 0]
    for n in order:
        order.extend(children[n])
    return order[::-1]
