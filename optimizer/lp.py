"""The receding-horizon LP, built once per site with highspy and re-solved warm.

Model (the package docstring lists the objective weights and why their order holds; which
circuit limits become rows is decided by :mod:`optimizer._structure`, issue #18):

* columns, in this order: ``i[s, t]`` per slot and step (A per phase), ``f[g, p, t]`` the EV
  current through each *aggregated* group ``g`` on phase ``p`` (A), ``peak`` (sum of phase
  currents at the root, A), and per slot ``K`` fairness pieces ``a[s, k]`` of its step-0
  current;
* rows: per row group, phase and step one row — for an aggregated group the flow row ``Σ terms
  − f[g,p,t] ≤ 0`` (its limit is the bound of ``f``), for a direct group ``Σ terms ≤
  headroom``, where the terms are the ``i`` of its slots and the ``f`` of aggregated groups
  below, each once; one row per kW-limited aggregated group and step (``Σ_p f ≤ headroom``),
  one peak row per step, one energy row per slot (``Σ_t Δt_h · i ≤ E · 1000 / (U ·
  n_phases)``, in A·h so the phase count never enters the matrix), one fairness row per slot
  (``Σ_k a[s,k] ≤ i[s,0]``), after the soft blocks one minimum row (``−Σ_t Δt_h · i − u ≤
  −minimum`` in A·h, ``u`` its priced shortfall column, held at 0 without a minimum:
  `min_weights`) per slot that has had a minimum target, then ``T`` rows per taper line of a
  DC vehicle (``i_t + per_ah · Q_mid(t) ≤ a``, `optimizer.problem.Session.taper`; a line the
  model lacks rebuilds it, a SoC rising moves only ``a``). A circuit with one slot below it (a
  one-connector charger node) is only a bound on that slot's ``i``; chains merge; limits that
  can never bind have no rows;
* time-windowed limits (`optimizer.problem.NodeCap`): a hard cap lowers its node's headroom
  on the steps it covers (the row bound is the least of the node's own limit and every cap,
  less the non-EV load); a soft cap adds a block of rows with priced excess columns
  (`optimizer._soft`), once per aggregated group, kept while the allocator lives;
* the non-EV load, limits, windows, energy wanted, prices and priorities all live in column
  bounds, row upper bounds and costs. Between cycles only those change (``changeColsBounds``,
  ``changeRowsBounds``, ``changeColsCost``; only entries that differ), so HiGHS re-solves from
  the previous basis, with the primal simplex when that basis is still primal feasible (only
  bounds relaxed) and the dual one otherwise. The model is rebuilt (``passModel``) only when
  the tree, the time grid or the slot set changes, or a left-out limit could now bind; the old
  basis is carried over by name. Another car on a known slot with other phases is a few
  ``changeCoeff``.

The 6 A rule on step 0 (IEC 61851-1; OCPP rule S26 in ``shared/reference``): when the LP gives
a session ``0 < i < min_a`` on step 0, each such session is raised to ``[min_a, max_a]`` if the
headroom left by every other session's current still has ``min_a`` on each of its phases at
every node above it (by priority, then by how much the LP wanted it), else paused at 0; every
session the LP left at 0 on step 0 stays at 0. A second HiGHS model holding those step-0 bounds
is then re-solved so the rest of the plan is re-optimised around them (rounds repeat if that
creates new fractional values; after the last round any left are paused without a re-solve,
which only lowers currents). Fix-and-re-solve, not an exact MILP: the MILP on step 0 took 1.3 s
at 500 × 96 (``shared/bench/optimizer/README.md``), this costs one warm re-solve and loses at
most one step at ``min_a`` per paused session. A separate model keeps the relaxed one's basis
clean: measured at 500 × 96, undoing and redoing the bounds in one model cost 250–500 simplex
iterations per cycle, two models a few dozen.

Why highspy and not cvxpy: the pitfalls measured in the issue (#6) — cvxpy hands HiGHS a primal
start rather than a basis, and an N × T objective Parameter compiles for seconds — and the
benchmark's figures (direct HiGHS warm 0.031 s vs cvxpy re-solve 0.58 s at 500 × 96).
"""

from __future__ import annotations

import dataclasses
import time

import highspy
import numpy as np

from optimizer import _structure, fallback
from optimizer._arrays import Arrays, compile_problem
from optimizer._highs import new_highs
from optimizer._layout import _build_matrix, _Layout, _Matrix, _transfer_basis, _Vectors
from optimizer._soft import soft_vectors
from optimizer.allocation import Allocation, Status
from optimizer.binding import LpDuals, step0_binding
from optimizer.problem import Problem
from optimizer.verify import verify

__all__ = [
    "BEYOND_HORIZON_FACTOR",
    "EARLINESS_PER_KWH",
    "FAIRNESS_PIECES",
    "PRIORITY_BASE",
    "SHORTFALL_MARGIN",
    "Allocator",
    "min_weights",
    "session_weights",
    "shortfall_weight",
    "solve",
]

# Objective weights; the package docstring explains the order they enforce.

#: A kWh of priority p+1 is worth this many kWh of priority p. Above 3 because 1 A freed on a
#: binding phase from a three-phase car is worth at most 3× that amp given to a one-phase car.
PRIORITY_BASE = 4.0
#: Weight of a kWh for a car leaving after the horizon (it can still charge after it).
BEYOND_HORIZON_FACTOR = 0.5
#: Shortfall weight = SHORTFALL_MARGIN × (most a kWh can cost: price, peak, earliness) + 1.
SHORTFALL_MARGIN = 10.0
#: Earliness premium over the whole horizon (currency/kWh), linear in start time; below the
#: 0.01 ct/kWh resolution of the benchmark's prices, so any real price difference wins.
EARLINESS_PER_KWH = 1e-4
#: Concave reward on the step-0 current: piece 0 is [0, min_a], the others split
#: [min_a, max_a] evenly; equal cars end within one piece of each other.
FAIRNESS_PIECES = 5
#: Fairness weight as a share of the earliness gained by moving a kWh one (shortest) step
#: earlier: below 1, so fairness never outweighs "charge earlier".
_FAIRNESS_OF_EARLINESS = 0.5
#: Costs are handed to HiGHS multiplied by this, so the smallest tier (fairness, ~1e-8 per A)
#: stays clear of HiGHS's dual feasibility tolerance (1e-7).
_OBJ_SCALE = 1e4
#: Rounds of fix-and-re-solve for the 6 A rule before what is left is simply paused.
_FLOOR_ROUNDS = 3
#: Currents below this (A) are solver noise and read as 0.
_ZERO_A = 1e-6
#: HiGHS ``simplex_strategy`` values, and the bound violation (A, A·h) up to which the last
#: optimum still counts as feasible (HiGHS's primal feasibility tolerance).
_DUAL, _PRIMAL = 1, 4
_FEAS_TOL = 1e-7
#: Relaxed-model iterations above which the 6 A model starts from the relaxed basis.
_REBASE_ITERATIONS = 100


def shortfall_weight(problem: Problem) -> float:
    """Weight of one undelivered kWh at priority 0 (currency/kWh).

    ``SHORTFALL_MARGIN × (max |price| + demand charge / shortest step in h + earliness) + 1``:
    the most one kWh can add to the lower tiers is its price, the peak it can raise (1 kWh in
    the shortest step raises power by 1/Δt kW) and the earliness premium, so a kWh delivered
    outweighs all of them by the margin.
    """
    prices = problem.prices
    max_price = float(np.abs(prices).max()) if prices.size else 0.0
    min_step_h = float(problem.durations_s.min()) / 3600.0
    peak_per_kwh = problem.tariff.demand_charge_per_kw / min_step_h
    return SHORTFALL_MARGIN * (max_price + peak_per_kwh + EARLINESS_PER_KWH) + 1.0


def session_weights(problem: Problem) -> np.ndarray:
    """Relative value of a kWh per session, problem order: ``4^priority``, ×0.5 if it leaves
    after the horizon."""
    prio = np.array([s.priority for s in problem.sessions], dtype=float)
    beyond = np.array([s.departure_step > problem.steps for s in problem.sessions], dtype=bool)
    return PRIORITY_BASE**prio * np.where(beyond, BEYOND_HORIZON_FACTOR, 1.0)


def min_weights(problem: Problem) -> np.ndarray:
    """Weight of one kWh of each session's minimum target missed, problem order (currency/kWh;
    0 for sessions without one; issue #19.1).

    On top of the kWh's own weight (`session_weights` × `shortfall_weight`): ``4^priority``
    (×0.5 beyond the horizon) times a factor that makes the least of these worth
    `PRIORITY_BASE` times the most any session's kWh toward its full target earns. So no
    full target is served at the cost of another vehicle's minimum (4 > 3: the three-phase
    argument of the priorities), and among minimums priority still orders by 4×. The factor
    is as small as the problem's priorities allow (1 when all are equal), keeping the costs
    HiGHS sees within its tolerances.
    """
    weights = session_weights(problem)
    out = np.zeros(len(problem.sessions))
    has_min = np.array([s.min_energy_kwh > 0 for s in problem.sessions], dtype=bool)
    if not has_min.any():
        return out
    factor = PRIORITY_BASE * float(weights.max()) / float(weights[has_min].min())
    out[has_min] = shortfall_weight(problem) * factor * weights[has_min]
    return out


class _Model:
    """One HiGHS instance plus what it currently holds, so updates send only differences."""

    def __init__(self, lay: _Layout, matrix: _Matrix, vectors: _Vectors) -> None:
        self.lay = lay
        self.highs = new_highs()
        # No cost perturbation: cars of equal weight make this LP highly dual degenerate, and
        # perturbed costs then cost a long clean-up; measured at 500 chargers × 96 steps, a
        # departure took 525 dual iterations without against 2,067 with.
        self.highs.setOptionValue("dual_simplex_cost_perturbation_multiplier", 0.0)
        self.highs.passModel(
            lay.ncol,
            lay.nrow,
            len(matrix.value),
            int(highspy.MatrixFormat.kColwise),
            int(highspy.ObjSense.kMinimize),
            0.0,
            vectors.cost,
            vectors.col_lo,
            vectors.col_hi,
            np.full(lay.nrow, -highspy.kHighsInf),
            vectors.row_hi,
            matrix.start,
            matrix.index,
            matrix.value,
            np.zeros(lay.ncol, dtype=np.int32),  # integrality: all continuous
        )
        self.held = vectors.copy()
        self.phases = list(matrix.phases)
        self.structure = matrix.structure
        #: The last optimal solution (columns, row activities); None when there is none or
        #: the matrix changed since.
        self.solution: tuple[np.ndarray, np.ndarray] | None = None

    def set(self, v: _Vectors) -> None:
        """Make the model hold ``v``, sending HiGHS only the entries that differ."""
        held, highs = self.held, self.highs
        changed = np.flatnonzero((v.col_lo != held.col_lo) | (v.col_hi != held.col_hi))
        if changed.size:
            highs.changeColsBounds(
                changed.size, changed.astype(np.int32), v.col_lo[changed], v.col_hi[changed]
            )
        changed = np.flatnonzero(v.cost != held.cost)
        if changed.size:
            highs.changeColsCost(changed.size, changed.astype(np.int32), v.cost[changed])
        changed = np.flatnonzero(v.row_hi != held.row_hi)
        if changed.size:
            highs.changeRowsBounds(
                changed.size,
                changed.astype(np.int32),
                np.full(changed.size, -highspy.kHighsInf),
                v.row_hi[changed],
            )
        self.held = v.copy()

    def set_phases(self, slot: int, phases: tuple[int, ...]) -> None:
        """Move a slot's ``i`` columns to the rows of the phases its car now draws."""
        old, T = self.phases[slot], self.lay.T
        if old == phases:
            return
        st = self.structure
        changes = [(p, 0.0) for p in set(old) - set(phases)]
        changes += [(p, 1.0) for p in set(phases) - set(old)]
        x = None if self.solution is None else self.solution[0][slot * T : (slot + 1) * T]
        for g in st.slot_rows[slot]:
            base = int(st.row_pos[g]) * 3 * T
            for p, value in changes:
                for t in range(T):
                    self.highs.changeCoeff(base + p * T + t, slot * T + t, value)
                if x is not None:  # keep the last optimum's row activities true
                    assert self.solution is not None
                    rows = self.solution[1][base + p * T : base + (p + 1) * T]
                    rows += x if value else -x
        self.phases[slot] = phases

    def _primal_feasible(self) -> bool:
        """Whether the last optimum still satisfies every bound the model now holds."""
        if self.solution is None:
            return False
        x, rows = self.solution
        v = self.held
        return bool(
            (x >= v.col_lo - _FEAS_TOL).all()
            and (x <= v.col_hi + _FEAS_TOL).all()
            and (rows <= v.row_hi + _FEAS_TOL).all()
        )

    def run(self, deadline: float) -> tuple[Status, str] | None:
        """Solve until optimal or ``deadline`` (perf_counter); ``None`` if optimal, else why not."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return Status.TIME_LIMIT, "budget spent before the solve"
        # HiGHS compares time_limit with a run clock that accumulates over every run of this
        # instance (measured, highspy 1.16), so the limit is "clock now + remaining".
        self.highs.setOptionValue("time_limit", self.highs.getRunTime() + remaining)
        # From a basis that is still primal feasible (a car arrived, a limit rose: only bounds
        # relaxed and costs changed) the primal simplex only has to improve; measured at 500
        # chargers × 96 steps, an arrival took it 20 iterations against 2,000 for the dual.
        # Anything tightened leaves the dual simplex the natural choice.
        primal = self._primal_feasible()
        self.highs.setOptionValue("simplex_strategy", _PRIMAL if primal else _DUAL)
        # Never lose the basis: a presolved run that hits the time limit leaves no basis of
        # this model, so the next cycle would start from nothing again (and time out again).
        # Without presolve, a cut-off run leaves the simplex where it stopped, and the next
        # cycle goes on from there.
        self.highs.setOptionValue("presolve", "off")
        self.highs.run()
        status = self.highs.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            solution = self.highs.getSolution()
            self.solution = (
                np.asarray(solution.col_value, dtype=float),
                np.asarray(solution.row_value, dtype=float),
            )
            return None
        self.solution = None
        if status == highspy.HighsModelStatus.kTimeLimit:
            return Status.TIME_LIMIT, "HiGHS time limit"
        return Status.SOLVER_ERROR, self.highs.modelStatusToString(status)

    def currents(self) -> np.ndarray:
        """The ``i`` columns of the last optimal solution, shape ``(slots, steps)``."""
        assert self.solution is not None
        n = self.lay.S * self.lay.T
        return self.solution[0][:n].reshape(self.lay.S, self.lay.T)


class Allocator:
    """Stateful LP solver: keeps the site's HiGHS models and re-solves them warm.

    Not thread-safe: one allocator per control loop, called from one worker thread at a time.

    Args:
        known_slots: Optional ``slot -> node id`` for every connector of the site, so the
            model is built for all of them at once and never rebuilt when a car arrives on a
            connector it has not seen yet. Slots met later are added by a rebuild.
        verify_result: Check every LP answer with :func:`optimizer.verify.verify` and answer
            with the fallback if it fails (default; the control loop verifies again anyway).
    """

    def __init__(
        self, known_slots: dict[str, str] | None = None, *, verify_result: bool = True
    ) -> None:
        self._known_slots: dict[str, str] = dict(known_slots or {})
        self._verify = verify_result
        self._key: tuple | None = None
        self._slots: dict[str, int] = {}
        self._slot_node: list[str] = []
        self._layout: _Layout | None = None
        self._matrix: _Matrix | None = None
        self._relaxed: _Model | None = None  # the LP as stated
        self._fixed: _Model | None = None  # the LP with step-0 bounds from the 6 A rule
        #: Groups once found able to bind: never pruned again (`optimizer._structure`).
        self._keep: set[str] = set()
        #: Nodes once kW-limited or soft-capped: their rows stay (`_prepare`).
        self._kw_seen: set[str] = set()
        self._soft_seen: set[str] = set()
        #: Slots once given a minimum target: their minimum rows stay (`_prepare`).
        self._min_seen: set[str] = set()
        #: Taper lines in the model, (slot, A per A·h) -> line position (`_build`).
        self._taper_index: dict[tuple[str, float], int] = {}
        self._hr = np.zeros((0, 3, 0))  # this cycle's headroom per group (G, 3, T)
        self._kw_hr = np.zeros((0, 0))  # and kW headroom per group (G, T), inf if none
        #: How many times the model was built from scratch (tests and the benchmark read it).
        self.builds = 0
        self._t0 = 0.0  # start of the solve under way (its time includes the holds)

    @property
    def shape(self) -> tuple[int, int]:
        """Columns and rows of the LP as it stands (0, 0 before the first solve)."""
        if self._relaxed is None:
            return 0, 0
        return self._relaxed.highs.getNumCol(), self._relaxed.highs.getNumRow()

    def solve(self, problem: Problem, budget_s: float = 1.0) -> Allocation:
        """Allocate currents for ``problem`` within ``budget_s`` seconds.

        Never raises for a valid problem: if HiGHS fails, runs out of time or its answer does
        not verify, the answer comes from :func:`optimizer.fallback.allocate` and ``status``
        says why. The budget covers model update, solves and rounding; HiGHS gets what is left
        as its ``time_limit``.

        Args:
            problem: The cycle's problem.
            budget_s: Wall-time budget (s).

        Returns:
            The allocation; ``status is Status.OPTIMAL`` when it comes from the LP. Its
            ``objective`` is the LP optimum before the 6 A rule (currency units).
        """
        t0 = self._t0 = time.perf_counter()
        deadline = t0 + budget_s
        if not problem.sessions:
            empty = np.zeros((0, problem.steps))
            return _allocation(problem, None, empty, 0.0, [], t0)
        try:
            arrays = compile_problem(problem)
            relaxed = self._prepare(problem, arrays)
            slot_of = self._session_slots(problem)
            vectors = self._vectors(problem, arrays, slot_of)
            relaxed.set(vectors)
            failure = relaxed.run(deadline)
            if failure is not None:
                return self._failed(problem, t0, failure)
            info = relaxed.highs.getInfo()
            objective = info.objective_function_value / _OBJ_SCALE
            plan = self._plan(relaxed, arrays, slot_of)
            last = relaxed  # the model whose solution the plan is (its duals explain it)
            paused: list[int] = []
            frac = _fractional(arrays, plan)
            if frac.size:
                fixed = self._fixed_model(problem, rebase=info.simplex_iteration_count)
                for round_ in range(_FLOOR_ROUNDS):
                    if round_ == _FLOOR_ROUNDS - 1:
                        plan[frac, 0] = 0.0  # lowering is always safe
                        paused.extend(frac.tolist())
                        break
                    paused.extend(self._fix_step0(arrays, plan, frac, vectors, slot_of))
                    fixed.set(vectors)
                    failure = fixed.run(deadline)
                    if failure is not None:
                        return self._failed(problem, t0, failure)
                    plan = self._plan(fixed, arrays, slot_of)
                    last = fixed
                    frac = _fractional(arrays, plan)
                    if frac.size == 0:
                        break
            allocation = _allocation(problem, arrays, plan, objective, sorted(set(paused)), t0)
        except Exception as exc:  # the control loop must get an answer, whatever broke
            return self._failed(problem, t0, (Status.SOLVER_ERROR, repr(exc)))
        if self._verify:
            violations = verify(problem, allocation)
            if violations:
                return self._fallback(problem, t0, Status.VERIFY_FAILED, str(violations[0]))
        return self._explained(problem, allocation, arrays, last, slot_of)

    def _explained(
        self,
        problem: Problem,
        allocation: Allocation,
        arrays: Arrays,
        model: _Model,
        slot_of: np.ndarray,
    ) -> Allocation:
        """The allocation with its step-0 holds (`optimizer.binding`); without them if that
        fails (an explanation must never cost the answer)."""
        assert self._layout is not None and self._matrix is not None
        lay = self._layout
        duals = LpDuals(
            model.highs, self._matrix.structure, lay.f0, lay.r_kw, lay.T, slot_of, _OBJ_SCALE
        )
        try:
            binding = step0_binding(problem, allocation, arrays, duals)
        except Exception as exc:  # the answer stands without its reasons
            return dataclasses.replace(allocation, detail=f"binding: {exc!r}")
        return dataclasses.replace(
            allocation, binding=binding, solve_s=time.perf_counter() - self._t0
        )

    # Building and updating the models.

    def _prepare(self, problem: Problem, arrays: Arrays) -> _Model:
        """Rebuild if the tree, the grid, the slot set or the rows needed changed; bring phase
        rows up to date. Leaves this cycle's group headroom in ``self._hr``/``self._kw_hr``."""
        # A node once kW-limited or soft-capped keeps its rows (inf when nothing limits it):
        # a window coming and going does not rebuild the model each time.
        ids = [n.id for n in problem.nodes]
        self._kw_seen.update(np.asarray(ids, dtype=object)[problem.kw_limited()].tolist())
        self._soft_seen.update(np.asarray(ids, dtype=object)[problem.soft_capped()].tolist())
        nodes = tuple(
            (n.id, n.parent, n.id in self._kw_seen, n.id in self._soft_seen) for n in problem.nodes
        )
        key = (nodes, problem.steps, tuple(problem.durations_s.tolist()))
        if key == self._key:
            slots = dict(zip(self._slots, self._slot_node, strict=True))
        else:  # new tree or grid: start from the declared slots
            slots = dict(self._known_slots)
        rebuild = key != self._key
        for s in problem.sessions:
            if slots.get(s.slot) != s.node:
                slots[s.slot] = s.node
                rebuild = True
            if s.min_energy_kwh > 0 and s.slot not in self._min_seen:
                # A slot's first minimum adds its row; kept after, so no rebuild each time.
                self._min_seen.add(s.slot)
                rebuild = True
            # A taper line the model lacks (a DC car with its SoC known, its taper within the
            # horizon) adds its block; one no longer needed stays, unbounded, until a rebuild.
            if any((s.slot, per_ah) not in self._taper_index for _, per_ah in s.taper):
                rebuild = True
        if not rebuild:
            assert self._matrix is not None
            st = self._matrix.structure
            self._hr = st.headroom(arrays.headroom_a)
            # A group left out because it could never bind might bind now: keep it.
            wakes = _structure.unpruned(st, self._hr)
            if wakes:
                self._keep |= wakes
                rebuild = True
        if rebuild:
            self._build(problem, arrays, slots)
            self._key = key
        assert self._relaxed is not None and self._matrix is not None
        st = self._matrix.structure
        if rebuild:
            self._hr = st.headroom(arrays.headroom_a)
        self._kw_hr = st.kw_headroom(arrays.kw_nodes, arrays.headroom_sum_a)
        for model in (self._relaxed, self._fixed):
            if model is not None:
                self._sync_phases(model, problem)
        return self._relaxed

    def _sync_phases(self, model: _Model, problem: Problem) -> None:
        for s in problem.sessions:
            model.set_phases(self._slots[s.slot], s.phases)

    def _build(self, problem: Problem, arrays: Arrays, slots: dict[str, str]) -> None:
        """Build the model for ``slots``; carry the old model's basis over where it fits."""
        old = (self._relaxed, self._matrix, self._layout, list(self._slots))
        names = sorted(slots)
        self._slots = {name: k for k, name in enumerate(names)}
        self._slot_node = [slots[name] for name in names]
        phases_by_slot = {s.slot: s.phases for s in problem.sessions}
        phases = tuple(phases_by_slot.get(name, (0, 1, 2)) for name in names)
        node_pos = np.array([problem.node_index(n) for n in self._slot_node], dtype=np.intp)
        kw_node = np.array([n.id in self._kw_seen for n in problem.nodes], dtype=bool)
        soft_node = np.array([n.id in self._soft_seen for n in problem.nodes], dtype=bool)
        st = _structure.build(
            arrays.parents,
            node_pos,
            kw_node,
            arrays.headroom_a,
            frozenset(self._keep),
            [n.id for n in problem.nodes],
            soft_node,
        )
        lay = _Layout(
            S=len(names),
            T=problem.steps,
            RG=len(st.row_groups),
            A=len(st.aggs),
            J=len(st.kw_groups),
            K=FAIRNESS_PIECES,
            Q=len(st.soft_groups),
            min_slots=tuple(k for k, name in enumerate(names) if name in self._min_seen),
            taper_lines=tuple(
                sorted(
                    {
                        (self._slots[s.slot], per_ah)
                        for s in problem.sessions
                        for _, per_ah in s.taper
                    }
                )
            ),
        )
        self._taper_index = {
            (names[slot], per_ah): j for j, (slot, per_ah) in enumerate(lay.taper_lines)
        }
        self._layout = lay
        self._matrix = _build_matrix(lay, st, arrays, phases)
        self._hr = st.headroom(arrays.headroom_a)
        self._kw_hr = st.kw_headroom(arrays.kw_nodes, arrays.headroom_sum_a)
        vectors = self._vectors(problem, arrays, self._session_slots(problem))
        self._relaxed = _Model(lay, self._matrix, vectors)
        self._fixed = None
        self.builds += 1
        old_model, old_matrix, old_layout, old_names = old
        if old_model is not None and old_matrix is not None and old_layout is not None:
            basis = _transfer_basis(
                old_model.highs.getBasis(),
                (old_layout, old_matrix.structure, old_names),
                (lay, st, names),
            )
            if basis is not None:
                self._relaxed.highs.setBasis(basis)

    def _fixed_model(self, problem: Problem, rebase: int = 0) -> _Model:
        """The second model, created on first need from the relaxed one's matrix and basis.

        Its own last basis is the better start after a small change (a few step-0 bounds
        differ from its last solve); after a change that took the relaxed model ``rebase`` >
        ``_REBASE_ITERATIONS`` iterations, it would have to make the same journey, so it
        starts from the relaxed optimum instead (a C++ copy of the basis, no Python lists).
        """
        assert self._relaxed is not None
        if self._fixed is None:
            assert self._layout is not None and self._matrix is not None
            self._fixed = _Model(self._layout, self._matrix, self._relaxed.held)
            self._sync_phases(self._fixed, problem)
            self._fixed.highs.setBasis(self._relaxed.highs.getBasis())
        elif rebase > _REBASE_ITERATIONS:
            self._fixed.highs.setBasis(self._relaxed.highs.getBasis())
            self._fixed.solution = None
        return self._fixed

    def _session_slots(self, problem: Problem) -> np.ndarray:
        return np.fromiter(
            (self._slots[s.slot] for s in problem.sessions),
            dtype=np.intp,
            count=len(problem.sessions),
        )

    def _vectors(self, problem: Problem, arrays: Arrays, slot_of: np.ndarray) -> _Vectors:
        """Column bounds, costs and row upper bounds for this cycle (``slot_of``: slot per
        session)."""
        lay, matrix = self._layout, self._matrix
        assert lay is not None and matrix is not None
        st = matrix.structure
        T, S, K = lay.T, lay.S, lay.K
        col_lo = np.zeros(lay.ncol)
        col_hi = np.zeros(lay.ncol)
        cost = np.zeros(lay.ncol)
        row_hi = np.zeros(lay.nrow)
        volt = arrays.voltage
        hr, kw_hr = self._hr, self._kw_hr

        # i columns: their cap (max_a inside the window, less on a last step the car leaves
        # part-way through), 0 outside and on empty slots; a slot alone under
        # a group has that group's headroom as its bound (the least over the phases it draws,
        # and its share of the kW headroom).
        hi = arrays.cap_a.copy()
        bound = st.slot_bound[slot_of]
        alone = np.flatnonzero(bound >= 0)
        if alone.size:
            g = bound[alone]
            per_phase = np.where(arrays.phase_mask[alone, :, None], hr[g], np.inf).min(axis=1)
            per_kw = kw_hr[g] / arrays.nph[alone, None]
            hi[alone] = np.minimum(hi[alone], np.minimum(per_phase, per_kw))
        i_hi = np.zeros((S, T))
        i_hi[slot_of] = hi
        col_hi[: S * T] = i_hi.ravel()
        horizon_h = float(arrays.dt_h.sum())
        per_kwh = (
            -shortfall_weight(problem) * session_weights(problem)[:, None]
            + problem.prices[None, :]
            + EARLINESS_PER_KWH * (arrays.start_h / horizon_h)[None, :]
        )
        i_cost = np.zeros((S, T))
        i_cost[slot_of] = arrays.kwh_per_a * per_kwh
        cost[: S * T] = i_cost.ravel()

        # f columns: the group's EV headroom, already clamped at 0 where the non-EV load alone
        # is over.
        col_hi[lay.f0 : lay.peak] = hr[st.aggs].ravel()
        # Peak column in summed phase amperes: the demand charge costs U/1000 per A.
        col_lo[lay.peak] = problem.tariff.peak_so_far_kw * 1000.0 / volt
        col_hi[lay.peak] = highspy.kHighsInf
        cost[lay.peak] = problem.tariff.demand_charge_per_kw * volt / 1000.0

        # Fairness pieces of the step-0 current: [0, min_a], then (max_a - min_a) / (K - 1).
        active0 = arrays.window[:, 0]
        widths = np.zeros((S, K))
        widths[slot_of, 0] = np.where(active0, arrays.min_a, 0.0)
        widths[slot_of, 1:] = np.where(active0, (arrays.max_a - arrays.min_a) / (K - 1), 0.0)[
            :, None
        ]
        col_hi[lay.a0 : lay.x0] = widths.ravel()
        eps_f = _FAIRNESS_OF_EARLINESS * EARLINESS_PER_KWH * float(arrays.dt_h.min()) / horizon_h
        a_cost = np.zeros((S, K))
        a_cost[slot_of] = -eps_f * arrays.kwh_per_a[:, :1] * ((K - np.arange(K)) / K)[None, :]
        cost[lay.a0 : lay.x0] = a_cost.ravel()

        # Rows: direct groups their headroom, flow rows 0; kW rows their headroom; peak rows
        # minus the root's non-EV load.
        group_hi = np.where(
            (st.kind[st.row_groups] == _structure.DIRECT)[:, None, None], hr[st.row_groups], 0.0
        )
        row_hi[: lay.r_kw] = group_hi.ravel()
        row_hi[lay.r_kw : lay.r_peak] = kw_hr[st.kw_groups].ravel()
        row_hi[lay.r_peak : lay.r_energy] = -arrays.load_root_sum_a
        energy_ah = np.zeros(S)
        energy_ah[slot_of] = arrays.energy_kwh * 1000.0 / (volt * arrays.nph)
        row_hi[lay.r_energy : lay.r_fair] = energy_ah
        # Minimum targets: the shortfall u (A·h) below each slot's minimum is priced per kWh
        # (`min_weights`); free only where a minimum is asked.
        if lay.min_slots:
            rows_of = np.full(S, -1, dtype=np.intp)
            rows_of[list(lay.min_slots)] = np.arange(len(lay.min_slots))
            m = rows_of[slot_of]
            has = m >= 0
            n_min = len(lay.min_slots)
            min_ah = np.zeros(n_min)
            min_ah[m[has]] = arrays.min_energy_kwh[has] * 1000.0 / (volt * arrays.nph[has])
            row_hi[lay.r_min : lay.r_min + n_min] = -min_ah
            u_hi = np.zeros(n_min)
            u_hi[m[has]] = np.where(arrays.min_energy_kwh[has] > 0, highspy.kHighsInf, 0.0)
            col_hi[lay.u0 : lay.u0 + n_min] = u_hi
            u_cost = np.zeros(n_min)
            u_cost[m[has]] = (min_weights(problem) * volt * arrays.nph / 1000.0)[has]
            cost[lay.u0 : lay.u0 + n_min] = u_cost
        if lay.taper_lines:
            row_hi[lay.r_taper : lay.nrow] = highspy.kHighsInf
            for s in problem.sessions:
                for a, per_ah in s.taper:
                    j = lay.r_taper + self._taper_index[(s.slot, per_ah)] * T
                    row_hi[j : j + T] = a
        penalty = problem.soft_penalty * shortfall_weight(problem)
        soft_vectors(lay, st, arrays, penalty, col_hi, cost, row_hi)
        return _Vectors(col_lo, col_hi, cost * _OBJ_SCALE, row_hi)

    # Reading the answer and the 6 A rule.

    @staticmethod
    def _plan(model: _Model, arrays: Arrays, slot_of: np.ndarray) -> np.ndarray:
        """The model's currents as ``(sessions, steps)``, solver noise cleaned."""
        plan = model.currents()[slot_of]
        # Tiny values to 0, nothing above the cap or outside the window: each only lowers.
        plan = np.minimum(plan, arrays.cap_a)
        plan[plan < _ZERO_A] = 0.0
        return plan

    def _fix_step0(
        self,
        arrays: Arrays,
        plan: np.ndarray,
        frac: np.ndarray,
        vectors: _Vectors,
        slot_of: np.ndarray,
    ) -> list[int]:
        """Set step-0 bounds in ``vectors`` for the 6 A rule (see the module docstring).

        The current plan with raised sessions at ``min_a`` (their later steps lowered to keep
        their energy) and paused ones at 0 satisfies these bounds and every limit, so the
        re-solve is feasible and at least as good as that point.

        Returns:
            Positions of the sessions paused.
        """
        lay = self._layout
        assert lay is not None
        x0 = plan[:, 0]
        min_a = arrays.min_a
        others = x0.copy()
        others[frac] = 0.0
        room, kw_room = _step0_room(arrays, others)
        kw_pos = {int(n): j for j, n in enumerate(arrays.kw_nodes)}
        slot_col = slot_of * lay.T
        dt0_h = float(arrays.dt_h[0])
        paused = []
        for k in sorted(frac.tolist(), key=lambda k: (-arrays.priority[k], -x0[k])):
            need = min_a[k]
            path = arrays.ancestors[arrays.node_of[k]]
            mask = arrays.phase_mask[k]
            kw_path = [kw_pos[n] for n in path if n in kw_pos]
            fits = (
                all((room[n][mask] >= need - _ZERO_A).all() for n in path)
                and all(kw_room[j] >= need * arrays.nph[k] - _ZERO_A for j in kw_path)
                and arrays.taper_cap0_a[k] >= need - _ZERO_A  # the vehicle takes it
            )
            col = slot_col[k]
            if not fits:
                paused.append(k)
                vectors.col_lo[col] = vectors.col_hi[col] = 0.0
                continue
            for n in path:
                room[n][mask] -= need
            for j in kw_path:
                kw_room[j] -= need * arrays.nph[k]
            vectors.col_lo[col] = need
            need_ah = arrays.energy_kwh[k] * 1000.0 / (arrays.voltage * arrays.nph[k])
            if need_ah < need * dt0_h:
                # Wants less than one step at min_a: it gets min_a and stops when full.
                vectors.row_hi[lay.r_energy + slot_of[k]] = need * dt0_h
        # Sessions the LP left at 0 stay there, or the re-solve would hand the capacity just
        # freed to a new fractional entrant rather than to cars already charging.
        idle = arrays.window[:, 0] & (min_a > 0) & (x0 == 0)
        vectors.col_hi[slot_col[idle]] = 0.0
        return paused

    def _failed(self, problem: Problem, t0: float, why: tuple[Status, str]) -> Allocation:
        """Answer with the fallback; after an error, start the next call from a new model."""
        if why[0] is Status.SOLVER_ERROR:
            self._key = None
        return self._fallback(problem, t0, *why)

    def _fallback(self, problem: Problem, t0: float, status: Status, detail: str) -> Allocation:
        answer = fallback.allocate(problem)
        return Allocation(
            dispatch_a=answer.dispatch_a,
            plan_a=answer.plan_a,
            energy_kwh=answer.energy_kwh,
            status=status,
            method="fallback",
            solve_s=time.perf_counter() - t0,
            detail=detail,
        )


def _fractional(arrays: Arrays, plan: np.ndarray) -> np.ndarray:
    """Positions of sessions with ``0 < i < min_a`` on step 0."""
    x0 = plan[:, 0]
    return np.flatnonzero((x0 > 0) & (x0 < arrays.min_a - _ZERO_A))


def _step0_room(arrays: Arrays, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step-0 headroom left after ``x0``: per node and phase (A), per kW node (Σ A)."""
    used = np.zeros((len(arrays.ancestors), 3))
    np.add.at(used, arrays.node_of, arrays.phase_mask * x0[:, None])
    through = np.zeros_like(used)
    for n, path in enumerate(arrays.ancestors):
        through[path] += used[n]
    room = arrays.headroom_a[:, :, 0] - through
    kw_room = arrays.headroom_sum_a[:, 0] - through[arrays.kw_nodes].sum(axis=1)
    return room, kw_room


def _allocation(
    problem: Problem,
    arrays: Arrays | None,
    plan: np.ndarray,
    objective: float,
    paused: list[int],
    t0: float,
) -> Allocation:
    energy = (plan * arrays.kwh_per_a).sum(axis=1) if arrays is not None else np.zeros(0)
    ids = [s.id for s in problem.sessions]
    return Allocation(
        dispatch_a=dict(zip(ids, plan[:, 0].tolist(), strict=True)),
        plan_a=plan,
        energy_kwh=dict(zip(ids, energy.tolist(), strict=True)),
        status=Status.OPTIMAL,
        method="lp",
        objective=objective,
        solve_s=time.perf_counter() - t0,
        paused=tuple(ids[k] for k in paused),
    )


def solve(problem: Problem, budget_s: float = 1.0) -> Allocation:
    """Solve ``problem`` with a fresh :class:`Allocator` (tests, one-off use).

    Args:
        problem: The problem.
        budget_s: Wall-time budget (s).

    Returns:
        The allocation (see :meth:`Allocator.solve`).
    """
    return Allocator().solve(problem, budget_s)
