"""An independent yardstick: the most energy a problem allows, by a plain LP.

Tests and ``bench/optimizer.py`` compare the allocator's energy with this. It shares no model
code with :mod:`optimizer.lp`: each session's column appears directly in the row of every node
above it (no flow variables), there is no price, peak, earliness, fairness or 6 A rule — only
``maximise Σ weight · energy`` under the limits, windows and energy wanted — plus, when asked,
``Σ min_weight · (energy toward the minimum target)`` (one column per session, at most its
``min_energy_kwh`` and at most its energy: issue #19.1).
"""

from __future__ import annotations

import highspy
import numpy as np

from optimizer._highs import new_highs
from optimizer.problem import Problem

__all__ = ["max_energy"]


def max_energy(
    problem: Problem, weights: np.ndarray | None = None, min_weights: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Solve ``max Σ_s weight_s · energy_s`` subject to every limit of ``problem``.

    Args:
        problem: The problem.
        weights: Value of a kWh per session (problem order); 1 for all when omitted.
        min_weights: Value of a kWh of each session's minimum target on top of ``weights``
            (problem order); minimums are not weighed when omitted.

    Returns:
        The optimal weighted energy (kWh) and the plan, shape ``(sessions, steps)`` (A).

    Raises:
        RuntimeError: HiGHS did not reach optimality (cannot happen for a valid problem:
            all-zero is always feasible).
    """
    sessions = problem.sessions
    S, T = len(sessions), problem.steps
    if S == 0:
        return 0.0, np.zeros((0, T))
    w = np.ones(S) if weights is None else np.asarray(weights, dtype=float)
    volt = problem.voltage_ln_v
    dt_h = problem.durations_s / 3600.0
    ancestors = problem.ancestors()
    load = problem.load_through_a()
    nph = np.array([len(s.phases) for s in sessions], dtype=float)
    kwh_per_a = volt * np.outer(nph, dt_h) / 1000.0  # (S, T)

    # Column bounds: max_a inside the window, less on a last step left part-way, else 0.
    upper = problem.session_caps_a()
    t = np.arange(T)
    limits_a, limits_kw = problem.limits_a(), problem.limits_kw()  # hard caps per step included

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    row_upper: list[np.ndarray] = []
    n_rows = 0
    # Node current rows, one per node/phase/step: Σ sessions below on that phase.
    for n in range(len(problem.nodes)):
        below = [k for k, s in enumerate(sessions) if n in ancestors[problem.node_index(s.node)]]
        for p in range(3):
            on_p = [k for k in below if p in sessions[k].phases]
            for k in on_p:
                rows.append(n_rows + t)
                cols.append(k * T + t)
                vals.append(np.ones(T))
            row_upper.append(np.maximum(limits_a[n, p] - load[n, p], 0.0))
            n_rows += T
        if np.isfinite(limits_kw[n]).any():
            for k in below:
                rows.append(n_rows + t)
                cols.append(k * T + t)
                vals.append(np.full(T, volt * nph[k] / 1000.0))
            row_upper.append(np.maximum(limits_kw[n] - volt * load[n].sum(axis=0) / 1000.0, 0.0))
            n_rows += T
    # Energy rows: Σ_t kWh-per-A · i ≤ wanted.
    for k, s in enumerate(sessions):
        rows.append(np.full(T, n_rows))
        cols.append(k * T + t)
        vals.append(kwh_per_a[k])
        row_upper.append(np.array([s.energy_kwh]))
        n_rows += 1

    n_cols = S * T
    objective = (w[:, None] * kwh_per_a).ravel()
    upper = upper.ravel()
    if min_weights is not None:
        # m_s: energy toward the minimum, m_s <= min_energy_kwh, m_s - Σ_t kWh-per-A · i <= 0.
        mins = np.array([s.min_energy_kwh for s in sessions], dtype=float)
        for k in range(S):
            rows.append(np.full(T + 1, n_rows))
            cols.append(np.append(k * T + t, n_cols + k))
            vals.append(np.append(-kwh_per_a[k], 1.0))
            row_upper.append(np.array([0.0]))
            n_rows += 1
        objective = np.concatenate([objective, np.asarray(min_weights, dtype=float)])
        upper = np.concatenate([upper, mins])
        n_cols += S

    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)
    order = np.lexsort((r, c))
    r, c, v = r[order], c[order], v[order]
    start = np.zeros(n_cols + 1, dtype=np.int32)
    np.cumsum(np.bincount(c, minlength=n_cols), out=start[1:])
    highs = new_highs()
    highs.passModel(
        n_cols,
        n_rows,
        len(v),
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMaximize),
        0.0,
        objective,
        np.zeros(n_cols),
        upper,
        np.full(n_rows, -highspy.kHighsInf),
        np.concatenate(row_upper),
        start[:-1],
        r.astype(np.int32),
        v,
        np.zeros(n_cols, dtype=np.int32),
    )
    highs.run()
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"reference LP: {highs.modelStatusToString(status)}")
    plan = np.asarray(highs.getSolution().col_value, dtype=float)[: S * T].reshape(S, T)
    return float(highs.getInfo().objective_function_value), plan
