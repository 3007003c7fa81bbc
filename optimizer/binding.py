"""Why each session's step-0 current is what it is: the limits that hold it (issue #19.2).

Rule 1: a session is *held* when its step-0 current is below its ``max_a`` (by more than
`HELD_TOL_A`), or its ``max_a`` is 0 (blocked); only held sessions get holds. A session at its
``max_a`` is limited by whatever set that maximum, which only the caller knows (charger,
vehicle, CSMS, a learned cap).

Rule 2: a limit holds a session when it is *tight on step 0* on the session's path — a node
above it (its own charger node included) with no headroom left (`TIGHT_A`) on a phase it draws,
or a kW-limited node with no kW headroom — after the dispatched currents of every session.
That is the LP's binding row (or bound) mapped back to the node: the LP's rows are per group
of nodes (`optimizer._structure`), so the node named is the group's member that is tight, and
for the LP its step-0 dual (the objective gained per A more, in currency units; HiGHS's row
or column dual, `LpDuals`) comes with it. The same test on the final currents serves the
fallback, whose rule is "fill in order until a node runs out": for it the holds name the
node that ran out and the sessions that took it.

Rule 2b: a limit the caller capped for some steps (`optimizer.problem.NodeCap`) is named as
such: when the node's step-0 limit is a cap's, not its own, the hold's ``cap`` is that cap's
position in ``Problem.caps`` (the least one covering step 0), so the caller can say whose limit
it is. A session held by nothing hard but a soft cap tight on step 0 on its path is held by
``SOFT`` (the LP kept to it rather than pay its penalty: its energy is later or not needed).

Rule 3: without a tight limit, a held session at 0 A whose path has less than ``min_a`` left
(or that the 6 A rounding paused, ``Allocation.paused``) is held by the minimum current
(IEC 61851-1); one whose energy the plan puts on a later step was *deferred* (the cheaper or
later step is ``Hold.step``; for the LP ``dual`` is the reduced cost of its step-0 current);
one the root's peak row holds at the peak so far is held by the demand charge; one whose need
the step-0 current already meets wants no more. Anything else is ``NONE`` (not expected; tests
count it).

Holds are computed once per cycle from numpy arrays (`optimizer._arrays.Arrays` keeps every
node's path flat): O(S · depth) without a Python loop over sessions that are not held, and the
sessions sharing a tight limit are named up to `SHARE_MAX`, largest current first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from optimizer._arrays import Arrays, compile_problem
from optimizer._structure import AGG, BOUND, DIRECT
from optimizer.allocation import Allocation
from optimizer.problem import Problem

__all__ = [
    "BLOCKED",
    "DEFERRED",
    "DEPARTED",
    "HELD_TOL_A",
    "KW",
    "MIN_CURRENT",
    "NEED",
    "NONE",
    "NOT_ARRIVED",
    "PEAK",
    "PHASE",
    "SHARE_MAX",
    "SOFT",
    "TIGHT_A",
    "Binding",
    "Hold",
    "LpDuals",
    "step0_binding",
]

#: Hold kinds.
PHASE = "phase"  # a node's per-phase current limit (a circuit, the grid, a charger's own max)
KW = "kw"  # a node's kW limit
SOFT = "soft"  # a soft cap on a node, kept to rather than paid for (phase, or None: kW)
MIN_CURRENT = "min_current"  # paused: less than min_a left (the 6 A rule)
DEFERRED = "deferred"  # the plan gives it its energy on a later step
PEAK = "peak"  # held at the peak so far (demand charge)
NEED = "need"  # it wants no more than it gets
BLOCKED = "blocked"  # max_a is 0: it cannot charge within its bounds
DEPARTED = "departed"  # its departure is now or past
NOT_ARRIVED = "not_arrived"  # it arrives on a later step
NONE = "none"  # nothing found (not expected)

#: A step-0 current this far below max_a is held (A): below what the API shows (0.1 A).
HELD_TOL_A = 0.05
#: A node with less headroom than this left on step 0 is tight (A per phase; Σ A for kW rows):
#: the LP meets its rows to ~1e-7, the 6 A rounding exactly.
TIGHT_A = 1e-3
#: Sessions named per shared limit (the largest currents); `Hold.sharing_n` counts them all.
SHARE_MAX = 8


@dataclass(frozen=True, slots=True)
class Hold:
    """One reason a session's step-0 current is below its maximum.

    Attributes:
        kind: one of the kinds above.
        node: the node (PHASE, KW, MIN_CURRENT: the node that ran out), else ``None``.
        phase: site phase 0..2 (PHASE, MIN_CURRENT on a phase), else ``None``.
        limit: the node's limit on step 0 (A per phase; kW for KW), NaN if none.
        load: non-EV (and fixed) current through it on step 0 (A; kW for KW).
        ev: EV current through it on step 0 (A; kW for KW).
        room: what is left (A; kW for KW): ~0 when tight, < min_a for MIN_CURRENT.
        dual: the LP's step-0 dual of that limit (currency per A, or per kW; for DEFERRED the
            reduced cost of the step-0 current), NaN when unknown (fallback).
        step: DEFERRED: the first later step that carries its energy.
        sharing: other sessions drawing through the same limit (largest first), on ``phase``.
        sharing_n: how many there are in all.
        phases: PHASE: every phase of the session that is tight there, tightest first
            (``phase`` is the first; ``dual`` is their sum: one A more on each of them).
        cap: PHASE, KW, MIN_CURRENT, SOFT: position in ``Problem.caps`` of the cap that sets
            the node's step-0 limit there (Rule 2b), ``None`` when it is the node's own.
    """

    kind: str
    node: str | None = None
    phase: int | None = None
    limit: float = math.nan
    load: float = math.nan
    ev: float = math.nan
    room: float = math.nan
    dual: float = math.nan
    step: int | None = None
    sharing: tuple[str, ...] = ()
    sharing_n: int = 0
    phases: tuple[int, ...] = ()
    cap: int | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """The holds of one allocation's step 0.

    Attributes:
        holds: session id -> its holds, only for held sessions (Rule 1).
        method: the allocation's method ("lp" or "fallback").
    """

    holds: Mapping[str, tuple[Hold, ...]]
    method: str


class LpDuals:
    """Step-0 duals of one solved HiGHS model, fetched on first use (one copy per cycle).

    Args:
        highs: the model that produced the plan.
        structure: its `optimizer._structure.Structure`.
        f0, r_kw, T: its layout (first flow column, first kW row, steps).
        slot_of: slot (column block) of each session.
        scale: the objective scale the costs were handed to HiGHS with.
    """

    def __init__(
        self, highs, structure, f0: int, r_kw: int, T: int, slot_of: np.ndarray, scale: float
    ) -> None:
        self._highs = highs
        self._st = structure
        self._f0, self._r_kw, self._T = f0, r_kw, T
        self._slot_of = slot_of
        self._scale = scale
        self._rows: np.ndarray | None = None
        self._cols: np.ndarray | None = None

    def _fetch(self) -> tuple[np.ndarray, np.ndarray]:
        if self._rows is None or self._cols is None:
            solution = self._highs.getSolution()
            self._rows = np.asarray(solution.row_dual, dtype=float)
            self._cols = np.asarray(solution.col_dual, dtype=float)
        return self._rows, self._cols

    def limit(self, node: int, phase: int | None, k: int) -> float:
        """The dual of node ``node``'s step-0 limit (``phase`` None: its kW row) as session
        ``k`` sees it; NaN where the node has no row of its own (a left-out group)."""
        st, T = self._st, self._T
        g = int(st.group_of_node[node])
        if g < 0:
            return math.nan
        rows, cols = self._fetch()
        kind = int(st.kind[g])
        if kind == BOUND:  # a bound on the session's own column
            value = cols[int(self._slot_of[k]) * T]
        elif phase is None:
            if kind != AGG or st.kw_pos[g] < 0:
                return math.nan
            value = rows[self._r_kw + int(st.kw_pos[g]) * T]
        elif kind == DIRECT:
            value = rows[int(st.row_pos[g]) * 3 * T + phase * T]
        elif kind == AGG:  # its limit is the bound of its flow column
            value = cols[self._f0 + int(st.agg_pos[g]) * 3 * T + phase * T]
        else:
            return math.nan
        return abs(float(value)) / self._scale

    def column(self, k: int) -> float:
        """The reduced cost of session ``k``'s step-0 current (currency per A)."""
        _, cols = self._fetch()
        return float(cols[int(self._slot_of[k]) * self._T]) / self._scale


def step0_binding(
    problem: Problem,
    allocation: Allocation,
    arrays: Arrays | None = None,
    duals: LpDuals | None = None,
) -> Binding:
    """The holds of every held session of ``allocation`` (see the module docstring).

    Args:
        problem: the problem it answers.
        allocation: its answer (LP or fallback); ``plan_a`` rows in problem order.
        arrays: ``compile_problem(problem)`` if the caller has it (compiled here otherwise).
        duals: the LP's duals, if it answered.

    Returns:
        The holds by session id.
    """
    sessions = problem.sessions
    S = len(sessions)
    if S == 0:
        return Binding({}, allocation.method)
    a = arrays if arrays is not None else compile_problem(problem)
    plan = np.asarray(allocation.plan_a, dtype=float).reshape(S, problem.steps)
    x0 = plan[:, 0]
    held_mask = (x0 < a.max_a - HELD_TOL_A) | (a.max_a <= 0)
    if not held_mask.any():
        return Binding({}, allocation.method)
    M = len(a.ancestors)
    # Every session's path as (session, node) pairs, grouped by session, then the EV current
    # through each node and what is left there.
    lens = a.anc_len[a.node_of]
    first_pair = np.cumsum(lens) - lens
    pair_s = np.repeat(np.arange(S), lens)
    pair_n = a.anc_flat[
        np.repeat(a.anc_start[a.node_of], lens)
        + np.arange(int(lens.sum()))
        - np.repeat(first_pair, lens)
    ]
    drawn = a.phase_mask[pair_s]  # (P, 3)
    through = np.stack(
        [np.bincount(pair_n, weights=drawn[:, p] * x0[pair_s], minlength=M) for p in range(3)],
        axis=1,
    )
    room = a.headroom_a[:, :, 0] - through
    kw_pos = np.full(M, -1, dtype=np.intp)
    kw_pos[a.kw_nodes] = np.arange(len(a.kw_nodes))
    kw_room = a.headroom_sum_a[:, 0] - through[a.kw_nodes].sum(axis=1)
    # Per pair: its phases' room (inf on phases not drawn), tight phases, a tight kW row.
    pair_room = np.where(drawn, room[pair_n], np.inf)
    tight_phase = pair_room < TIGHT_A
    pair_kw = kw_pos[pair_n]
    nph_pair = a.nph[pair_s]
    pair_kw_room = np.append(kw_room, np.inf)[pair_kw]  # -1 (no kW row) picks the inf
    tight_kw = pair_kw_room < TIGHT_A * nph_pair
    held_pair = held_mask[pair_s]
    tight_pairs = np.flatnonzero(held_pair & (tight_phase.any(axis=1) | tight_kw))
    # Least room per session on its path (per phase drawn; a kW row shared out per phase).
    least = np.minimum(pair_room.min(axis=1), pair_kw_room / nph_pair)
    least_s = np.minimum.reduceat(least, first_pair)
    later = plan[:, 1:] > TIGHT_A
    later_step = np.zeros(S, dtype=np.intp)  # 0: nothing planned later (or no later step)
    if later.shape[1]:
        later_step = np.where(later.any(axis=1), later.argmax(axis=1) + 1, 0)
    got = (plan * a.kwh_per_a).sum(axis=1)

    volt_kw = a.voltage / 1000.0
    caps_found: dict[tuple[int, int | None, bool], int | None] = {}

    def cap_of(n: int, p: int | None, hard: bool = True) -> int | None:
        """The cap that sets node n's step-0 limit (Rule 2b), once per node and phase."""
        if not problem.caps:
            return None
        key = (n, p, hard)
        if key not in caps_found:
            caps_found[key] = problem.cap_at(n, p, 0, hard)
        return caps_found[key]

    ids = [s.id for s in sessions]
    node_ids = [n.id for n in problem.nodes]
    shares: dict[tuple[int, int | None], tuple[list[int], int]] = {}

    def named(n: int, p: int | None, k: int) -> tuple[tuple[str, ...], int]:
        """Other sessions drawing through node n (on phase p), largest current first."""
        key = (n, p)
        if key not in shares:
            on = pair_s[pair_n == n]
            if p is not None:
                on = on[a.phase_mask[on, p]]
            on = on[x0[on] > TIGHT_A]
            top = on[np.argsort(-x0[on], kind="stable")[: SHARE_MAX + 1]]
            shares[key] = (top.tolist(), int(on.size))
        top, count = shares[key]
        others = tuple(ids[j] for j in top if j != k)[:SHARE_MAX]
        return others, count - (1 if x0[k] > TIGHT_A else 0)

    def node_hold(kind: str, n: int, k: int, phases: tuple[int, ...]) -> Hold:
        """A hold on node n: per phase (``phases`` its tight ones, tightest first) or kW."""
        if not phases:
            j = int(kw_pos[n])
            others, count = named(n, None, k)
            dual = math.nan
            if duals is not None and kind == KW:
                dual = duals.limit(n, None, k) / volt_kw  # per kW, not per Σ A
            return Hold(
                kind,
                node_ids[n],
                None,
                limit=float(a.kw_limit_sum_a[j] * volt_kw),
                load=float(a.load0_a[n].sum() * volt_kw),
                ev=float(through[n].sum() * volt_kw),
                room=float(kw_room[j] * volt_kw),
                dual=dual,
                sharing=others,
                sharing_n=count,
                cap=cap_of(n, None),
            )
        p = phases[0]
        others, count = named(n, p, k)
        dual = math.nan
        if duals is not None and kind == PHASE:
            dual = sum(duals.limit(n, q, k) for q in phases)
        return Hold(
            kind,
            node_ids[n],
            p,
            limit=float(a.limit_a[n, p]),
            load=float(a.load0_a[n, p]),
            ev=float(through[n, p]),
            room=float(room[n, p]),
            dual=dual,
            sharing=others,
            sharing_n=count,
            phases=phases,
            cap=cap_of(n, p),
        )

    made: dict[tuple[str, int, tuple[int, ...]], Hold] = {}

    def cached(kind: str, n: int, k: int, phases: tuple[int, ...]) -> Hold:
        """`node_hold`, made once per limit: only the sharing list differs between the
        sessions under it (a BOUND group's dual is per session, but it has one session)."""
        key = (kind, n, phases)
        hold = made.get(key)
        if hold is None:
            hold = made[key] = node_hold(kind, n, k, phases)
            return hold
        top, _ = shares[(n, phases[0] if phases else None)]
        if k in top:  # it is among the named ones: name the others
            others, count = named(n, phases[0] if phases else None, k)
            return dataclasses.replace(hold, sharing=others, sharing_n=count)
        count = hold.sharing_n + (1 if x0[hold_owner[key]] > TIGHT_A else 0)
        return dataclasses.replace(
            hold,
            sharing=tuple(ids[j] for j in top)[:SHARE_MAX],
            sharing_n=count - (1 if x0[k] > TIGHT_A else 0),
        )

    hold_owner: dict[tuple[str, int, tuple[int, ...]], int] = {}
    out: dict[str, list[Hold]] = {}
    rooms = pair_room[tight_pairs].tolist()
    tight_ph = tight_phase[tight_pairs].tolist()
    tight_kws = tight_kw[tight_pairs].tolist()
    for q, q_room, q_ph, q_kw in zip(tight_pairs.tolist(), rooms, tight_ph, tight_kws, strict=True):
        k, n = int(pair_s[q]), int(pair_n[q])
        holds = out.setdefault(ids[k], [])
        if any(q_ph):
            phases = tuple(p for p in sorted(range(3), key=q_room.__getitem__) if q_ph[p])
            hold_owner.setdefault((PHASE, n, phases), k)
            holds.append(cached(PHASE, n, k, phases))
        if q_kw:
            hold_owner.setdefault((KW, n, ()), k)
            holds.append(cached(KW, n, k, ()))
    soft_holds = _soft_holds(
        a, node_ids, held_mask, (pair_s, pair_n, drawn, nph_pair), through, cap_of
    )
    tariff = problem.tariff
    peak_a = tariff.peak_so_far_kw / volt_kw
    root_total = float(a.load0_a[a.root].sum() + through[a.root].sum())
    peak_holds = tariff.demand_charge_per_kw > 0 and root_total >= peak_a - TIGHT_A
    paused = set(allocation.paused)
    for k in np.flatnonzero(held_mask).tolist():
        sid = ids[k]
        if a.max_a[k] <= 0:
            out[sid] = [Hold(BLOCKED)]
            continue
        if not a.window[k, 0]:
            if a.departure[k] <= 0:
                out[sid] = [Hold(DEPARTED)]
            elif a.arrival[k] > 0:
                out[sid] = [Hold(NOT_ARRIVED, step=int(a.arrival[k]))]
            else:
                out[sid] = [Hold(NEED)]
            continue
        holds = out.get(sid)
        if (
            x0[k] <= TIGHT_A
            and a.min_a[k] > 0
            and (sid in paused or (not holds and least_s[k] < a.min_a[k] - TIGHT_A))
        ):
            # Paused: the node with least room on its path (below the minimum, or the one the
            # 6 A rounding found too full).
            q0 = int(first_pair[k])
            q = q0 + int(np.argmin(least[q0 : q0 + lens[k]]))
            n = int(pair_n[q])
            if pair_room[q].min() <= pair_kw_room[q] / nph_pair[q]:
                hold = node_hold(MIN_CURRENT, n, k, (int(np.argmin(pair_room[q])),))
            else:
                hold = node_hold(MIN_CURRENT, n, k, ())
            holds = out.setdefault(sid, [])
            holds.insert(0, hold)
        if holds:
            continue
        soft = soft_holds.get(k, [])
        holds = out[sid] = list(soft)
        if peak_holds:
            holds.append(Hold(PEAK, node_ids[a.root], limit=tariff.peak_so_far_kw))
        if later_step[k] and not soft:  # a soft cap holding it says more than "later"
            dual = duals.column(k) if duals is not None else math.nan
            holds.append(Hold(DEFERRED, step=int(later_step[k]), dual=dual))
        elif not peak_holds and not soft:
            holds.append(Hold(NEED if got[k] >= sessions[k].energy_kwh - 1e-3 else NONE))
    return Binding({sid: tuple(h) for sid, h in out.items()}, allocation.method)


def _soft_holds(
    a: Arrays,
    node_ids: list[str],
    held_mask: np.ndarray,
    pairs_of: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    through: np.ndarray,
    cap_of: Callable[[int, int | None, bool], int | None],
) -> dict[int, list[Hold]]:
    """Per held session, the soft caps tight on step 0 on its path (Rule 2b), by position."""
    if not a.soft_nodes.size:
        return {}
    pair_s, pair_n, drawn, nph_pair = pairs_of
    M = len(a.ancestors)
    soft_pos = np.full(M, -1, dtype=np.intp)
    soft_pos[a.soft_nodes] = np.arange(len(a.soft_nodes))
    room = a.soft_limit0_a - a.load0_a[a.soft_nodes] - through[a.soft_nodes]  # (Q, 3)
    kw_room = (
        a.soft_kw0_sum_a - a.load0_a[a.soft_nodes].sum(axis=1) - through[a.soft_nodes].sum(axis=1)
    )
    q = soft_pos[pair_n]
    pairs = np.flatnonzero((q >= 0) & held_mask[pair_s])
    volt_kw = a.voltage / 1000.0
    out: dict[int, list[Hold]] = {}
    for j in pairs.tolist():
        k, n, qj = int(pair_s[j]), int(pair_n[j]), int(q[j])
        phase_room = np.where(drawn[j], room[qj], np.inf)
        holds = out.setdefault(k, [])
        if (phase_room < TIGHT_A).any():
            p = int(np.argmin(phase_room))
            tight = tuple(int(x) for x in np.argsort(phase_room) if phase_room[x] < TIGHT_A)
            holds.append(
                Hold(
                    SOFT,
                    node_ids[n],
                    p,
                    limit=float(a.soft_limit0_a[qj, p]),
                    load=float(a.load0_a[n, p]),
                    ev=float(through[n, p]),
                    room=float(room[qj, p]),
                    phases=tight,
                    cap=cap_of(n, p, False),
                )
            )
        if kw_room[qj] < TIGHT_A * nph_pair[j]:
            holds.append(
                Hold(
                    SOFT,
                    node_ids[n],
                    None,
                    limit=float(a.soft_kw0_sum_a[qj] * volt_kw),
                    load=float(a.load0_a[n].sum() * volt_kw),
                    ev=float(through[n].sum() * volt_kw),
                    room=float(kw_room[qj] * volt_kw),
                    cap=cap_of(n, None, False),
                )
            )
    return {k: v for k, v in out.items() if v}
