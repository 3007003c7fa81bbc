"""Soft caps in the LP: limits that may be exceeded at a price (issue #20).

A soft :class:`~optimizer.problem.NodeCap` (an OpenADR import-capacity request, a congestion
price band) is not a constraint: the LP may go over it, paying ``Problem.soft_penalty ×
shortfall weight`` per kWh over. Below the weight of a kWh short at departure and far above
any price or peak the LP weighs (`optimizer.lp.shortfall_weight` is ten times those), a soft
cap is exceeded only to deliver energy a car would otherwise miss, and then only by that.

Every aggregated group with a soft-capped member (`optimizer._structure` aggregates them all)
owns one block ``q`` of ``4·T`` rows and ``4·T`` excess columns after the fairness rows and
pieces: per phase and step ``f[g,p,t] − x[q,p,t] ≤ soft headroom`` (rows ``p·T + t``), then per
step ``Σ_p f[g,p,t] − y[q,t] ≤ soft kW headroom`` in summed phase amperes (rows ``3·T + t``).
The headroom is the soft limit less the non-EV load (at least 0), the least over the group's
soft members. Where no soft cap covers a step, the row's bound is +inf and its excess column
is held at 0, so a block can stay in the model while its cap comes and goes (a block, once
made, is kept like any row that could bind: no rebuild each time an event starts or ends).

Hard limits are untouched: ``f`` keeps its own bound, and the soft row only adds a price.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from optimizer._structure import Structure

if TYPE_CHECKING:
    from optimizer._arrays import Arrays
    from optimizer._layout import _Layout

__all__ = ["soft_parts", "soft_transfer", "soft_vectors"]

_Parts = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def soft_parts(lay: _Layout, st: Structure) -> _Parts:
    """The matrix entries of every soft block (row, column, value triples)."""
    T = lay.T
    parts: _Parts = []
    pt = np.arange(3 * T)
    step = pt % T
    block = np.arange(4 * T)
    for q, g in enumerate(st.soft_groups.tolist()):
        fcols = lay.f0 + int(st.agg_pos[g]) * 3 * T + pt
        base = lay.r_soft + q * 4 * T
        parts.append((base + pt, fcols, np.ones(3 * T)))  # f in its phase row
        parts.append((base + 3 * T + step, fcols, np.ones(3 * T)))  # and in the kW row
        parts.append((base + block, lay.x0 + q * 4 * T + block, -np.ones(4 * T)))  # excess
    return parts


def soft_headroom(st: Structure, arrays: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Per soft block its EV headroom under the soft caps: ``(Q, 3, T)`` A per phase and
    ``(Q, T)`` Σ phase A, the least over its soft members; inf where none covers a step."""
    Q, T = len(st.soft_groups), arrays.steps
    per_phase = np.full((Q, 3, T), np.inf)
    per_kw = np.full((Q, T), np.inf)
    for i, node in enumerate(arrays.soft_nodes.tolist()):
        g = int(st.group_of_node[node])
        q = int(st.soft_pos[g]) if g >= 0 else -1
        if q < 0:
            continue  # no slot below it: no EV current to price
        np.minimum(per_phase[q], arrays.soft_headroom_a[i], out=per_phase[q])
        np.minimum(per_kw[q], arrays.soft_headroom_sum_a[i], out=per_kw[q])
    return per_phase, per_kw


def soft_vectors(
    lay: _Layout,
    st: Structure,
    arrays: Arrays,
    penalty_per_kwh: float,
    col_hi: np.ndarray,
    cost: np.ndarray,
    row_hi: np.ndarray,
) -> None:
    """Fill the soft blocks' row bounds, excess bounds and costs (unscaled) in place."""
    if lay.Q == 0:
        return
    T = lay.T
    per_phase, per_kw = soft_headroom(st, arrays)
    bounds = np.concatenate([per_phase.reshape(lay.Q, 3 * T), per_kw], axis=1)  # (Q, 4T)
    row_hi[lay.r_soft : lay.r_soft + lay.Q * 4 * T] = bounds.ravel()
    # An excess column is free only where its row has a finite bound.
    col_hi[lay.x0 : lay.x0 + lay.Q * 4 * T] = np.where(np.isfinite(bounds), np.inf, 0.0).ravel()
    # One A over on one phase for step t is U · Δt_h / 1000 kWh (the kW row counts Σ phase A,
    # so the same per A there).
    per_a = penalty_per_kwh * arrays.voltage * arrays.dt_h / 1000.0
    cost[lay.x0 : lay.x0 + lay.Q * 4 * T] = np.tile(per_a, 4 * lay.Q)


def soft_transfer(
    old: tuple[_Layout, Structure, np.ndarray, np.ndarray],
    new: tuple[_Layout, Structure, np.ndarray, np.ndarray],
) -> None:
    """Carry the soft blocks' basis statuses over by group key (`_layout._transfer_basis`)."""
    olay, ost, ocol, orow = old
    nlay, nst, col, row = new
    if olay.Q == 0 or nlay.Q == 0:
        return
    width = 4 * nlay.T
    okey = {ost.key[g]: q for q, g in enumerate(ost.soft_groups.tolist())}
    for q, g in enumerate(nst.soft_groups.tolist()):
        qo = okey.get(nst.key[g])
        if qo is None:
            continue
        col[nlay.x0 + q * width : nlay.x0 + (q + 1) * width] = ocol[
            olay.x0 + qo * width : olay.x0 + (qo + 1) * width
        ]
        row[nlay.r_soft + q * width : nlay.r_soft + (q + 1) * width] = orow[
            olay.r_soft + qo * width : olay.r_soft + (qo + 1) * width
        ]
