"""A problem as numpy arrays: the one place that turns dataclasses into numbers.

The LP and its 6 A rounding read these arrays. :mod:`optimizer.verify` deliberately does not, so
a mistake here cannot hide from the check (nor does the fallback, which takes only what it needs
for speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.problem import Problem

#: Seconds per hour and W per kW, named so the conversions below read as formulas.
_S_PER_H = 3600.0
_W_PER_KW = 1000.0


@dataclass(frozen=True, slots=True, eq=False)
class Arrays:
    """Numeric view of a :class:`Problem`; sessions in problem order.

    Shapes: S sessions, M nodes, T steps, J nodes with a kW limit.
    """

    steps: int
    dt_h: np.ndarray  # (T,) step length in hours
    start_h: np.ndarray  # (T,) start of each step, hours from now
    voltage: float
    node_of: np.ndarray  # (S,) node position
    phase_mask: np.ndarray  # (S, 3) bool, phases drawn
    nph: np.ndarray  # (S,) number of phases drawn
    min_a: np.ndarray  # (S,)
    max_a: np.ndarray  # (S,)
    energy_kwh: np.ndarray  # (S,)
    min_energy_kwh: np.ndarray  # (S,) the minimum target's part of energy_kwh
    taper_cap0_a: np.ndarray  # (S,) most step-0 current its taper allows (inf: no taper)
    arrival: np.ndarray  # (S,) int
    departure: np.ndarray  # (S,) int
    priority: np.ndarray  # (S,) int
    window: np.ndarray  # (S, T) bool: arrival <= t < departure and something wanted
    cap_a: np.ndarray  # (S, T) most current per step (`Problem.session_caps_a`), 0 outside
    kwh_per_a: np.ndarray  # (S, T) energy of 1 A per phase over step t
    headroom_a: np.ndarray  # (M, 3, T) EV current allowed per node/phase/step, >= 0
    kw_nodes: np.ndarray  # (J,) positions of nodes with a kW limit
    headroom_sum_a: np.ndarray  # (J, T) kW headroom as a sum of phase currents, >= 0
    load_root_sum_a: np.ndarray  # (T,) non-EV current through the root, summed over phases
    ancestors: list[list[int]]  # per node: itself and its ancestors
    parents: list[int]
    root: int
    # The same paths flat, so step-0 sums over every node above a session need no Python loop
    # (`optimizer.binding`): node k's path is anc_flat[anc_start[k] : anc_start[k] + anc_len[k]].
    anc_flat: np.ndarray  # (Σ path lengths,) node positions
    anc_start: np.ndarray  # (M,)
    anc_len: np.ndarray  # (M,)
    limit_a: np.ndarray  # (M, 3) limit per node and phase on step 0 (caps included)
    load0_a: np.ndarray  # (M, 3) non-EV current through each node on step 0
    kw_limit_sum_a: np.ndarray  # (J,) kW limit on step 0 as a sum of phase currents
    # Soft caps (`optimizer._soft`): Q nodes with one, their EV headroom under it (inf where
    # none covers a step) and their step-0 soft limits.
    soft_nodes: np.ndarray  # (Q,) node positions
    soft_headroom_a: np.ndarray  # (Q, 3, T) per phase, >= 0
    soft_headroom_sum_a: np.ndarray  # (Q, T) kW as a sum of phase currents, >= 0
    soft_limit0_a: np.ndarray  # (Q, 3) step-0 soft limit per phase (A), inf if none
    soft_kw0_sum_a: np.ndarray  # (Q,) step-0 soft kW limit as Σ phase A, inf if none


def kwh_per_amp(voltage_ln_v: float, nph: np.ndarray, dt_h: np.ndarray) -> np.ndarray:
    """Energy of 1 A per phase over each step: ``U_LN · n_phases · Δt / 1000`` (kWh).

    Unity power factor, as in the benchmark's scoring model (``shared/bench/optimizer``).
    """
    return voltage_ln_v * np.multiply.outer(nph.astype(float), dt_h) / _W_PER_KW


def compile_problem(problem: Problem) -> Arrays:
    """Turn a validated problem into arrays (O(S + M·T), no solver)."""
    T = problem.steps
    dt_h = problem.durations_s / _S_PER_H
    start_h = np.concatenate(([0.0], np.cumsum(dt_h)[:-1]))
    sessions = problem.sessions
    S = len(sessions)
    node_of = np.fromiter((problem.node_index(s.node) for s in sessions), dtype=np.intp, count=S)
    phase_mask = np.zeros((S, 3), dtype=bool)
    for k, s in enumerate(sessions):
        phase_mask[k, list(s.phases)] = True
    nph = phase_mask.sum(axis=1)
    fields = np.array(
        [
            (
                s.min_a,
                s.max_a,
                s.energy_kwh,
                s.arrival_step,
                s.departure_step,
                s.priority,
                s.min_energy_kwh,
            )
            for s in sessions
        ],
        dtype=float,
    ).reshape(S, 7)
    min_a, max_a, energy_kwh = fields[:, 0], fields[:, 1], fields[:, 2]
    arrival = fields[:, 3].astype(np.int64)
    departure = fields[:, 4].astype(np.int64)
    priority = fields[:, 5].astype(np.int64)
    cap_a = problem.session_caps_a()
    window = cap_a > 0  # in its window, wanting energy, with a current above 0
    volt = problem.voltage_ln_v
    load = problem.load_through_a()
    # Per step: the nodes' own limits lowered by the hard caps over the steps they cover.
    limits = problem.limits_a()
    # A node whose non-EV load alone exceeds its limit leaves 0 for EVs, never a negative
    # headroom: the LP stays feasible (everyone below it at 0) instead of failing.
    headroom_a = np.maximum(limits - load, 0.0)
    kw_nodes = np.flatnonzero(problem.kw_limited()).astype(np.intp)
    kw_sum_a = problem.limits_kw()[kw_nodes] * (_W_PER_KW / volt)  # (J, T)
    load_sum = load.sum(axis=1)  # (M, T)
    headroom_sum_a = np.maximum(kw_sum_a - load_sum[kw_nodes], 0.0)
    soft_nodes = np.flatnonzero(problem.soft_capped()).astype(np.intp)
    if soft_nodes.size:
        soft_a = problem.limits_a(soft=True)[soft_nodes]
        soft_sum = problem.limits_kw(soft=True)[soft_nodes] * (_W_PER_KW / volt)
    else:
        soft_a, soft_sum = np.zeros((0, 3, T)), np.zeros((0, T))
    soft_headroom_a = np.maximum(soft_a - load[soft_nodes], 0.0)
    soft_headroom_sum_a = np.maximum(soft_sum - load_sum[soft_nodes], 0.0)
    parents = problem.parents()
    root = parents.index(-1)
    ancestors = problem.ancestors()
    anc_len = np.fromiter((len(a) for a in ancestors), dtype=np.intp, count=len(ancestors))
    anc_start = np.concatenate(([0], np.cumsum(anc_len)[:-1])).astype(np.intp)
    anc_flat = np.fromiter((n for a in ancestors for n in a), dtype=np.intp, count=anc_len.sum())
    return Arrays(
        steps=T,
        dt_h=dt_h,
        start_h=start_h,
        voltage=volt,
        node_of=node_of,
        phase_mask=phase_mask,
        nph=nph,
        min_a=min_a,
        max_a=max_a,
        energy_kwh=energy_kwh,
        min_energy_kwh=fields[:, 6].copy(),
        taper_cap0_a=np.array(
            [min((a for a, _ in s.taper), default=np.inf) for s in sessions],
            dtype=float,
        ).reshape(S),
        arrival=arrival,
        departure=departure,
        priority=priority,
        window=window,
        cap_a=cap_a,
        kwh_per_a=kwh_per_amp(volt, nph, dt_h),
        headroom_a=headroom_a,
        kw_nodes=kw_nodes,
        headroom_sum_a=headroom_sum_a.reshape(len(kw_nodes), T),
        load_root_sum_a=load[root].sum(axis=0),
        ancestors=ancestors,
        parents=parents,
        root=root,
        anc_flat=anc_flat,
        anc_start=anc_start,
        anc_len=anc_len,
        limit_a=limits[:, :, 0].copy(),
        load0_a=load[:, :, 0].copy(),
        kw_limit_sum_a=kw_sum_a[:, 0].copy(),
        soft_nodes=soft_nodes,
        soft_headroom_a=soft_headroom_a,
        soft_headroom_sum_a=soft_headroom_sum_a,
        soft_limit0_a=soft_a[:, :, 0].copy(),
        soft_kw0_sum_a=soft_sum[:, 0].copy(),
    )
