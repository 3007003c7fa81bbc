"""The always-feasible heuristic: least laxity first under every node's per-phase headroom.

Used when the LP runs out of time, fails, or its answer does not verify. It imports no solver,
so it works even when HiGHS cannot be loaded.

Rule, for one step: sessions are taken by priority (highest first), then by least laxity — the
slack between the time left before departure and the time the car needs at full current
(``laxity = time left − energy wanted / (max_a · U · phases)``) — with earliest departure
breaking ties. Each gets as much as fits: ``min(max_a, the current that finishes it within the
step, the smallest headroom on every phase it draws at every node above it, the kW headroom of
every kW-limited node above it)``; if that is below ``min_a`` it gets 0 (IEC 61851-1: no current
between 0 and the minimum), otherwise the headroom shrinks by what it took. On step 0 a car whose
remaining need is below one step at ``min_a`` gets ``min_a`` (it stops by itself when full) if
that fits; in the plan's later steps (never dispatched as such) it may finish below ``min_a``.
Nothing is ever given beyond the headroom, so the answer never exceeds a limit; a node whose
non-EV load alone is over its limit has zero headroom and everyone under it gets 0. A node's
limit on a step is its own lowered by every cap covering the step (`optimizer.problem.NodeCap`),
soft caps included: the fallback does not weigh a penalty against a departure, so it keeps
them like hard ones (degraded mode errs on the grid's side).

Minimum targets first (issue #19.1): where sessions have a ``min_energy_kwh`` still to come,
each step is handed out in two passes, the same rule first on what is left of every minimum
(by priority, then least laxity toward the minimum), then on the full needs with what remains;
so no full target takes the current another vehicle's minimum needs.

Why least laxity and not equal share: on the benchmark's one-cycle instances equal share with a
6 A floor delivers 79–85 % of the LP optimum's energy, least laxity first 100 %
(``shared/bench/optimizer/README.md``).

:func:`allocate` decides step 0 only (the dispatch; the plan's later steps are 0) unless
``horizon=True``, which replays the same rule step by step over the horizon with the energy
still wanted, as a receding-horizon controller would (O(T · S), for tests and the benchmark).
"""

from __future__ import annotations

import time

import numpy as np

from optimizer.allocation import Allocation, Status
from optimizer.problem import Problem

__all__ = ["allocate"]

#: Tolerance (A) when comparing a grant with the minimum.
_EPS_A = 1e-9


def allocate(problem: Problem, *, horizon: bool = False) -> Allocation:
    """Allocate by least laxity first; always feasible.

    Args:
        problem: The problem.
        horizon: Plan every step (replaying the rule), not just step 0.

    Returns:
        An allocation with ``status == Status.FALLBACK`` and ``method == "fallback"``; its plan
        passes :func:`optimizer.verify.verify`.
    """
    t0 = time.perf_counter()
    sessions = problem.sessions
    S, T = len(sessions), problem.steps
    volt = problem.voltage_ln_v
    durations = problem.durations_s
    dt_h = durations / 3600.0
    ends_h = np.cumsum(dt_h)  # end of each step, hours from now
    ancestors = problem.ancestors()
    load = problem.load_through_a()
    steps_planned = T if horizon else 1
    # Per step: hard and soft caps both lower the limit (see the module docstring).
    limits = problem.limits_a()[:, :, :steps_planned]
    limits_kw = problem.limits_kw()[:, :steps_planned]
    if problem.caps and not all(c.hard for c in problem.caps):
        np.minimum(limits, problem.limits_a(soft=True)[:, :, :steps_planned], out=limits)
        np.minimum(limits_kw, problem.limits_kw(soft=True)[:, :steps_planned], out=limits_kw)
    kw_nodes = {int(k) for k in np.flatnonzero(np.isfinite(limits_kw).any(axis=1))}

    # Per session: the flat (node·3 + phase) headroom slots it draws on and its kW nodes.
    paths: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[int]]] = {}
    node_pos = problem.node_index
    sess_path = []
    for s in sessions:
        key = (s.node, s.phases)
        if key not in paths:
            anc = ancestors[node_pos(s.node)]
            paths[key] = (
                [n * 3 + p for n in anc for p in s.phases],
                [n for n in anc if n in kw_nodes],
            )
        sess_path.append(paths[key])
    nph = np.fromiter((len(s.phases) for s in sessions), dtype=float, count=S)
    kw_per_a = volt * nph / 1000.0
    min_a = [s.min_a for s in sessions]
    max_a = [s.max_a for s in sessions]
    prio = np.fromiter((s.priority for s in sessions), dtype=float, count=S)
    arrival = np.fromiter((s.arrival_step for s in sessions), dtype=np.int64, count=S)
    departure = np.fromiter((s.departure_step for s in sessions), dtype=np.int64, count=S)
    remaining = np.fromiter((s.energy_kwh for s in sessions), dtype=float, count=S)
    # Time at which each car leaves, hours from now (beyond the horizon: extrapolate the grid).
    dep_clip = np.clip(departure, 0, T)
    leave_h = np.where(dep_clip > 0, ends_h[np.maximum(dep_clip - 1, 0)], 0.0)
    share = np.fromiter((s.last_step_share for s in sessions), dtype=float, count=S)
    part = (departure >= 2) & (departure <= T)  # leaves part-way through its last step
    leave_h = leave_h - np.where(part, (1.0 - share) * dt_h[np.maximum(dep_clip - 1, 0)], 0.0)
    caps = problem.session_caps_a()
    beyond = departure > T
    leave_h = leave_h + np.where(beyond, (departure - T) * dt_h[-1], 0.0)
    rate_kw = np.maximum(np.asarray(max_a) * kw_per_a, 1e-12)

    remaining_min = np.fromiter((s.min_energy_kwh for s in sessions), dtype=float, count=S)
    plan = np.zeros((S, T))
    for t in range(steps_planned):
        active = (arrival <= t) & (t < departure) & (remaining > 1e-9) & (np.asarray(max_a) > 0)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            continue
        now_h = ends_h[t] - dt_h[t]
        room = np.maximum(limits[:, :, t] - load[:, :, t], 0.0).ravel().tolist()
        kw_room = {
            n: max(float(limits_kw[n, t]) * 1000.0 / volt - float(load[n, :, t].sum()), 0.0)
            for n in kw_nodes
        }
        step_h = float(dt_h[t])
        cap_t = caps[:, t].tolist()
        nph_l = nph.tolist()
        given = [0.0] * S
        # Minimums first (only those still to come), then the full needs.
        passes = [remaining_min, remaining] if (remaining_min[idx] > 1e-9).any() else [remaining]
        for wanted in passes:
            todo = idx[wanted[idx] > 1e-9]
            laxity = (leave_h[todo] - now_h) - wanted[todo] / rate_kw[todo]
            order = todo[np.lexsort((leave_h[todo], laxity, -prio[todo]))]
            finish = (wanted / (kw_per_a * step_h)).tolist()
            for k in order.tolist():
                lo = min_a[k]
                # Finishing in this step takes `finish`. On step 0 a car that needs less
                # than min_a asks min_a (it stops when full); later steps are only a plan
                # and may finish a car below min_a.
                want = min(cap_t[k], max(finish[k], lo) if t == 0 else finish[k]) - given[k]
                if want <= _EPS_A:
                    continue
                flat, kws = sess_path[k]
                give = min(want, min([room[j] for j in flat]))
                n_ph = nph_l[k]
                for n in kws:
                    give = min(give, kw_room[n] / n_ph)
                total = given[k] + give
                if give <= 0.0 or (
                    total < lo - _EPS_A and (t == 0 or total < given[k] + want - _EPS_A)
                ):
                    continue
                for j in flat:
                    room[j] -= give
                for n in kws:
                    kw_room[n] -= give * n_ph
                given[k] = total
        plan[:, t] = given
        if horizon:
            step_kwh = plan[:, t] * kw_per_a * step_h
            remaining = np.maximum(remaining - step_kwh, 0.0)
            remaining_min = np.maximum(remaining_min - step_kwh, 0.0)
    energy = plan @ dt_h * kw_per_a if S else np.zeros(0)
    ids = [s.id for s in sessions]
    return Allocation(
        dispatch_a=dict(zip(ids, plan[:, 0].tolist(), strict=True)),
        plan_a=plan,
        energy_kwh=dict(zip(ids, energy.tolist(), strict=True)),
        status=Status.FALLBACK,
        method="fallback",
        solve_s=time.perf_counter() - t0,
    )
