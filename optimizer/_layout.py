"""The LP's layout, its constraint matrix and the basis carried between layouts (`optimizer.lp`).

Index arithmetic of one built model (columns and rows in the order `optimizer.lp` describes),
the sparse matrix built from the problem's arrays and structure in one vectorised pass, and the
transfer of a HiGHS basis from one layout to the next (sessions come and go; the columns and
rows of those that stay keep their status, so the warm start survives).
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from optimizer._arrays import Arrays
from optimizer._soft import soft_parts, soft_transfer
from optimizer._structure import Structure


@dataclass(frozen=True, slots=True)
class _Layout:
    """Index arithmetic of one built model (order as in the module docstring)."""

    S: int  # slots
    T: int  # steps
    RG: int  # row groups (3·T rows each)
    A: int  # aggregated groups (3·T flow columns each)
    J: int  # aggregated groups with a kW row
    K: int  # fairness pieces
    Q: int = 0  # aggregated groups with soft rows (4·T rows and excess columns each)
    #: Slots with a minimum-target row and shortfall column, in slot order (`optimizer.lp`).
    min_slots: tuple[int, ...] = ()
    #: Taper lines (slot, A per A·h), T rows each (`optimizer.problem.Session.taper`).
    taper_lines: tuple[tuple[int, float], ...] = ()

    @property
    def f0(self) -> int:
        return self.S * self.T

    @property
    def peak(self) -> int:
        return self.f0 + self.A * 3 * self.T

    @property
    def a0(self) -> int:
        return self.peak + 1

    @property
    def x0(self) -> int:
        return self.a0 + self.S * self.K

    @property
    def u0(self) -> int:  # per slot, its minimum target's shortfall (A·h)
        return self.x0 + self.Q * 4 * self.T

    @property
    def ncol(self) -> int:
        return self.u0 + len(self.min_slots)

    @property
    def r_kw(self) -> int:
        return self.RG * 3 * self.T

    @property
    def r_peak(self) -> int:
        return self.r_kw + self.J * self.T

    @property
    def r_energy(self) -> int:
        return self.r_peak + self.T

    @property
    def r_fair(self) -> int:
        return self.r_energy + self.S

    @property
    def r_soft(self) -> int:
        return self.r_fair + self.S

    @property
    def r_min(self) -> int:  # per slot: −Σ_t Δt_h · i − u ≤ −minimum (A·h)
        return self.r_soft + self.Q * 4 * self.T

    @property
    def r_taper(self) -> int:  # per line and step: i_t + per_ah · Q_mid(t) ≤ a
        return self.r_min + len(self.min_slots)

    @property
    def nrow(self) -> int:
        return self.r_taper + len(self.taper_lines) * self.T


@dataclass(frozen=True, slots=True, eq=False)
class _Vectors:
    """Everything a cycle changes: column bounds, costs, row upper bounds."""

    col_lo: np.ndarray
    col_hi: np.ndarray
    cost: np.ndarray
    row_hi: np.ndarray

    def copy(self) -> _Vectors:
        return _Vectors(
            self.col_lo.copy(), self.col_hi.copy(), self.cost.copy(), self.row_hi.copy()
        )


@dataclass(frozen=True, slots=True, eq=False)
class _Matrix:
    """The constraint matrix as built (column-wise), kept to create the second model lazily."""

    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    phases: tuple[tuple[int, ...], ...]  # phase set per slot the matrix was built with
    structure: Structure


def _build_matrix(
    lay: _Layout, st: Structure, arrays: Arrays, phases: tuple[tuple[int, ...], ...]
) -> _Matrix:
    """The constraint matrix in column-wise form (entries as in the module docstring)."""
    T = lay.T
    t = np.arange(T)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    ones = np.ones(T)
    for s in range(lay.S):  # i columns: rows of the phases drawn, energy, fairness
        cols = s * T + t
        for g in st.slot_rows[s]:
            base = int(st.row_pos[g]) * 3 * T
            parts.extend((base + p * T + t, cols, ones) for p in phases[s])
        parts.append((np.full(T, lay.r_energy + s), cols, arrays.dt_h))
        parts.append((np.array([lay.r_fair + s]), cols[:1], np.array([-1.0])))
    for m, s in enumerate(lay.min_slots):  # minimum rows: -Δt_h · i, -1 · u
        parts.append((np.full(T, lay.r_min + m), s * T + t, -arrays.dt_h))
    n_min = len(lay.min_slots)
    parts.append((lay.r_min + np.arange(n_min), lay.u0 + np.arange(n_min), -np.ones(n_min)))
    if lay.taper_lines:
        # Row t of a line: i_t · (1 + per_ah · Δt_h[t] / 2) + per_ah · Σ_{τ<t} Δt_h[τ] · i_τ:
        # the charge to the middle of step t (lower triangle, T(T+1)/2 entries per line);
        # row 0 is entry (0, 0), first of the lower triangle's row-major order.
        rr, cc = np.tril_indices(T)
        dt = arrays.dt_h
        for j, (s, per_ah) in enumerate(lay.taper_lines):
            vals = per_ah * dt[cc]
            vals[rr == cc] = 1.0 + 0.5 * per_ah * dt[rr[rr == cc]]
            # Step 0 is dispatched and solved again within it: there the vehicle takes what
            # its SoC now allows, not the step's mean (a bus tapering 4 % a quarter hour was
            # held 14 % below what it took, and left short).
            vals[0] = 1.0
            parts.append((lay.r_taper + j * T + rr, s * T + cc, vals))
    # f columns: -1 in their own flow row, +1 in the rows above, the kW row and the peak row.
    pt = np.arange(3 * T)
    step = pt % T
    for j, g in enumerate(st.aggs.tolist()):
        fcols = lay.f0 + j * 3 * T + pt
        parts.append((int(st.row_pos[g]) * 3 * T + pt, fcols, -np.ones(3 * T)))
        for up in st.agg_rows.get(g, ()):
            parts.append((int(st.row_pos[up]) * 3 * T + pt, fcols, np.ones(3 * T)))
        if st.kw_pos[g] >= 0:
            parts.append((lay.r_kw + int(st.kw_pos[g]) * T + step, fcols, np.ones(3 * T)))
        if g == 0:  # the root group carries the peak rows
            parts.append((lay.r_peak + step, fcols, np.ones(3 * T)))
    parts.append((lay.r_peak + t, np.full(T, lay.peak), -np.ones(T)))  # peak column
    s_idx = np.repeat(np.arange(lay.S), lay.K)  # fairness pieces: +1 in their slot's row
    parts.append((lay.r_fair + s_idx, lay.a0 + np.arange(lay.S * lay.K), np.ones(len(s_idx))))
    parts.extend(soft_parts(lay, st))
    rows = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    cols = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    vals = np.concatenate([np.asarray(p[2], dtype=float) for p in parts])
    order = np.lexsort((rows, cols))
    start = np.zeros(lay.ncol, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=lay.ncol)[:-1], out=start[1:])
    return _Matrix(start, rows[order].astype(np.int32), vals[order], phases, st)


def _transfer_basis(
    basis: highspy.HighsBasis,
    old: tuple[_Layout, Structure, list[str]],
    new: tuple[_Layout, Structure, list[str]],
) -> highspy.HighsBasis | None:
    """The old model's basis mapped onto a rebuilt model, block by block, by name.

    Columns and rows that exist in both (the same slot, group, step) keep their status; new
    columns start at their lower bound, new rows basic. If the count of basic variables then
    differs from the number of rows (something basic was removed), the difference is made up
    with row slacks, which HiGHS accepts; it repairs a singular basis itself. ``None`` when
    the old basis is not valid.
    """
    if not basis.valid:
        return None
    (olay, ost, onames), (nlay, nst, nnames) = old, new
    if olay.T != nlay.T or olay.K != nlay.K:
        return None
    T, K = nlay.T, nlay.K
    ocol = np.fromiter((int(x) for x in basis.col_status), dtype=np.int8, count=olay.ncol)
    orow = np.fromiter((int(x) for x in basis.row_status), dtype=np.int8, count=olay.nrow)
    lower, basic = int(highspy.HighsBasisStatus.kLower), int(highspy.HighsBasisStatus.kBasic)
    col = np.full(nlay.ncol, lower, dtype=np.int8)
    row = np.full(nlay.nrow, basic, dtype=np.int8)
    where = {name: k for k, name in enumerate(onames)}
    for k, name in enumerate(nnames):
        ko = where.get(name)
        if ko is None:
            continue
        col[k * T : (k + 1) * T] = ocol[ko * T : (ko + 1) * T]
        a, ao = nlay.a0 + k * K, olay.a0 + ko * K
        col[a : a + K] = ocol[ao : ao + K]
        row[nlay.r_energy + k] = orow[olay.r_energy + ko]
        row[nlay.r_fair + k] = orow[olay.r_fair + ko]
    old_min = {onames[s]: m for m, s in enumerate(olay.min_slots)}
    for m, s in enumerate(nlay.min_slots):
        mo = old_min.get(nnames[s])
        if mo is not None:
            col[nlay.u0 + m] = ocol[olay.u0 + mo]
            row[nlay.r_min + m] = orow[olay.r_min + mo]
    col[nlay.peak] = ocol[olay.peak]
    row[nlay.r_peak : nlay.r_energy] = orow[olay.r_peak : olay.r_energy]
    soft_transfer((olay, ost, ocol, orow), (nlay, nst, col, row))
    okey = {key: g for g, key in enumerate(ost.key)}
    for g, key in enumerate(nst.key):
        go = okey.get(key)
        if go is None:
            continue
        if nst.agg_pos[g] >= 0 and ost.agg_pos[go] >= 0:
            j, jo = nlay.f0 + int(nst.agg_pos[g]) * 3 * T, olay.f0 + int(ost.agg_pos[go]) * 3 * T
            col[j : j + 3 * T] = ocol[jo : jo + 3 * T]
        if nst.row_pos[g] >= 0 and ost.row_pos[go] >= 0:
            r, ro = int(nst.row_pos[g]) * 3 * T, int(ost.row_pos[go]) * 3 * T
            row[r : r + 3 * T] = orow[ro : ro + 3 * T]
        if nst.kw_pos[g] >= 0 and ost.kw_pos[go] >= 0:
            r, ro = nlay.r_kw + int(nst.kw_pos[g]) * T, olay.r_kw + int(ost.kw_pos[go]) * T
            row[r : r + T] = orow[ro : ro + T]
    surplus = int((col == basic).sum() + (row == basic).sum()) - nlay.nrow
    if surplus > 0:  # too many basic: some rows go nonbasic (at their upper bound)
        row[np.flatnonzero(row == basic)[-surplus:]] = int(highspy.HighsBasisStatus.kUpper)
    elif surplus < 0:  # too few: some nonbasic row slacks become basic
        row[np.flatnonzero(row != basic)[:-surplus]] = basic
    status = list(highspy.HighsBasisStatus.__members__.values())
    by_value = {int(s): s for s in status}
    out = highspy.HighsBasis()
    out.col_status = [by_value[int(v)] for v in col]
    out.row_status = [by_value[int(v)] for v in row]
    out.valid = True
    return out
