"""The allocation problem: plain frozen dataclasses, validated on construction.

A :class:`Problem` is everything the optimizer needs for one control cycle: the circuit tree with
its per-phase limits (:class:`Node`), the non-EV loads hanging off it (:class:`Load`), the
connected vehicles (:class:`Session`), the time grid and the :class:`Tariff`. Every field is in
SI-ish units named by suffix (``_a`` amperes per phase, ``_kw``, ``_kwh``, ``_s``, ``_v``); phases
are the site's phases 0, 1, 2 (L1, L2, L3). Nothing here solves anything; :mod:`optimizer.lp` and
:mod:`optimizer.fallback` read a problem, :mod:`optimizer.verify` checks an answer against it.

Invalid input raises :class:`ValueError` naming the offending field, so a caller that builds a
problem from live data learns which reading or session was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PHASES",
    "Load",
    "Node",
    "NodeCap",
    "Problem",
    "Session",
    "Tariff",
    "soc_taper",
]

#: The site's phases L1, L2, L3.
PHASES: tuple[int, int, int] = (0, 1, 2)


def _finite(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return v


def _per_phase(name: str, value: float | Sequence[float]) -> tuple[float, float, float]:
    """Normalise a scalar (same on every phase) or a 3-sequence to a 3-tuple of floats."""
    if isinstance(value, int | float):
        v = _finite(name, value)
        return (v, v, v)
    vals = tuple(_finite(f"{name}[{k}]", x) for k, x in enumerate(value))
    if len(vals) != 3:
        raise ValueError(f"{name}: need one value per phase (3), got {len(vals)}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Node:
    """One circuit of the tree: grid connection, transformer, feeder, charger circuit.

    Args:
        id: Unique name.
        parent: Id of the parent node, ``None`` for the root (the grid connection). Exactly one
            root per problem.
        limit_a: Current limit per phase (A), a scalar for all three phases or one per phase.
        limit_kw: Optional limit on the total active power through the node (kW, all phases),
            e.g. the grid contract. The model takes power as ``voltage_ln_v × Σ phase currents``
            (unity power factor), as the benchmark's scoring model does.

    Raises:
        ValueError: A limit is negative or not finite.
    """

    id: str
    parent: str | None
    limit_a: tuple[float, float, float]
    limit_kw: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: must be a non-empty string")
        limits = _per_phase("limit_a", self.limit_a)
        if min(limits) < 0:
            raise ValueError(f"limit_a: must be >= 0, got {limits}")
        object.__setattr__(self, "limit_a", limits)
        if self.limit_kw is not None:
            kw = _finite("limit_kw", self.limit_kw)
            if kw < 0:
                raise ValueError(f"limit_kw: must be >= 0, got {kw}")
            object.__setattr__(self, "limit_kw", kw)


@dataclass(frozen=True, slots=True)
class NodeCap:
    """A limit on one node over some steps: a time-windowed limit mapped onto the grid.

    The node's own ``limit_a``/``limit_kw`` hold on every step; a cap lowers them on steps
    ``first_step <= t < end_step`` (the caller maps a window onto every step it overlaps). A
    hard cap is a constraint like the node's own limit, so the limit on a step is the least of
    the node's and every hard cap's; a cap above the node's own limit changes nothing. A soft
    cap may be exceeded at a price (``Problem.soft_penalty``, in the LP only; the fallback keeps
    it like a hard one).

    Args:
        node: Id of the node.
        first_step: First step it covers (>= 0).
        end_step: First step after it (> first_step, <= ``Problem.steps``).
        limit_a: Current limit per phase (A), a scalar or one per phase; ``None``: kW only.
        limit_kw: Active-power limit (kW, all phases; ``U_LN × Σ phase currents`` like
            ``Node.limit_kw``); ``None``: A only.
        hard: Whether it is a constraint (True) or a penalty (False).
        ref: The caller's name for it (its source), for messages.

    Raises:
        ValueError: No limit, a limit negative or not finite, steps out of order.
    """

    node: str
    first_step: int
    end_step: int
    limit_a: tuple[float, float, float] | None = None
    limit_kw: float | None = None
    hard: bool = True
    ref: str = ""

    def __post_init__(self) -> None:
        where = f"(cap {self.ref or self.node!r})"
        if not self.node:
            raise ValueError(f"node: must be a non-empty string {where}")
        for name in ("first_step", "end_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"{name}: must be an integer, got {v!r} {where}")
            object.__setattr__(self, name, int(v))
        if not 0 <= self.first_step < self.end_step:
            raise ValueError(
                f"first_step/end_step: need 0 <= first < end, got {self.first_step}, "
                f"{self.end_step} {where}"
            )
        if self.limit_a is None and self.limit_kw is None:
            raise ValueError(f"limit_a/limit_kw: give at least one {where}")
        if self.limit_a is not None:
            limits = _per_phase(f"limit_a {where}", self.limit_a)
            if min(limits) < 0:
                raise ValueError(f"limit_a: must be >= 0, got {limits} {where}")
            object.__setattr__(self, "limit_a", limits)
        if self.limit_kw is not None:
            kw = _finite(f"limit_kw {where}", self.limit_kw)
            if kw < 0:
                raise ValueError(f"limit_kw: must be >= 0, got {kw} {where}")
            object.__setattr__(self, "limit_kw", kw)
        object.__setattr__(self, "hard", bool(self.hard))


@dataclass(frozen=True, slots=True)
class Load:
    """A non-EV load (building, measured residual) on a node, per phase and step.

    The load counts against its node and every ancestor, exactly as a charger does: attach the
    building to the transformer and the grid connection sees it too. For step 0 the control loop
    gives the measured value; later steps are a forecast (or the same value repeated). Values are
    signed: a negative current (local generation behind the node) adds headroom.

    Args:
        id: Name, for messages.
        node: Id of the node it hangs off.
        current_a: ``current_a[phase][step]`` in A, three rows of ``Problem.steps`` values.

    Raises:
        ValueError: Not three rows, rows of different length, or a value not finite.
    """

    id: str
    node: str
    current_a: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]

    def __post_init__(self) -> None:
        rows = tuple(tuple(float(x) for x in row) for row in self.current_a)
        if len(rows) != 3:
            raise ValueError(f"current_a: need 3 phase rows, got {len(rows)} (load {self.id!r})")
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"current_a: phase rows differ in length (load {self.id!r})")
        if not all(math.isfinite(x) for r in rows for x in r):
            raise ValueError(f"current_a: values must be finite (load {self.id!r})")
        object.__setattr__(self, "current_a", rows)

    @classmethod
    def balanced_kw(
        cls, id: str, node: str, power_kw: Sequence[float], voltage_ln_v: float = 230.0
    ) -> Load:
        """Build a load balanced over the three phases from its power per step.

        ``I = P / (3 · U_LN)`` per phase, the benchmark format's conversion
        (``shared/bench/optimizer/README.md``).

        Args:
            id: Name of the load.
            node: Node it hangs off.
            power_kw: Active power per step (kW).
            voltage_ln_v: Line-to-neutral voltage (V).

        Returns:
            The load with the same current on each phase.
        """
        per_phase = tuple(float(p) * 1000.0 / (3.0 * voltage_ln_v) for p in power_kw)
        return cls(id=id, node=node, current_a=(per_phase, per_phase, per_phase))


@dataclass(frozen=True, slots=True)
class Session:
    """A connected (or expected) vehicle on one connector.

    Args:
        id: Session id, the key of the dispatch.
        node: Id of the node the charger is wired to.
        slot: Stable key of the connector (e.g. ``"c0042/1"``). The LP keeps one block of
            variables per slot, so the model keeps its shape while cars come and go; two sessions
            of one problem must not share a slot.
        phases: Site phases drawn, already mapped through the charger's phase rotation (a
            three-phase car on a charger wired L2-L3-L1 draws ``(0, 1, 2)``; a single-phase car
            on it draws ``(1,)``).
        min_a: Minimum current per phase while charging (IEC 61851-1: 6 A); the dispatch gives
            either 0 (pause) or at least this.
        max_a: Maximum current per phase, already the minimum of charger, cable, vehicle and CSMS
            bounds.
        energy_kwh: Energy still wanted (kWh).
        departure_step: First step at which the car is gone; it charges in steps
            ``arrival_step <= t < departure_step``. May lie beyond the horizon, may be <= 0 (then
            it gets nothing).
        arrival_step: First step it can charge; 0 for a connected car, later for a planned one.
        priority: 0..4; a kWh at priority p+1 weighs as much as 4 at p, enough to win a
            binding phase even against a three-phase car (see :mod:`optimizer`).
        last_step_share: Share (0, 1] of step ``departure_step - 1`` that the car is still
            there. A step's current is its average over the step, so on that step it is at
            most ``max_a · last_step_share``: a car leaving 20 minutes into an hour-long step
            of a coarse far horizon gets 20 minutes of charge in the plan, not 0 and not 60.
            Never applied on step 0, which is dispatched as is (a caller scales the energy
            wanted instead).
        min_energy_kwh: The part of ``energy_kwh`` that is its minimum target (kWh, 0 to
            ``energy_kwh``; issue #19.1: fleet ``min_target_soc``, VDV 463 ``minTargetSoc``).
            Met first: a kWh of it outweighs any session's kWh toward its full target
            (`optimizer.lp.min_weights`).
        taper: What the vehicle can take as its battery fills (a DC charging curve, issue
            #21): lines ``(a_a, per_ah)``, each bounding the current on every step by
            ``a_a − per_ah · Q`` where ``Q`` is the charge (A·h per phase) planned from now to
            the middle of that step (on step 0, now: it is dispatched and solved again
            within it); the least line holds, so any concave piecewise-linear
            curve of the SoC fits (the SoC is linear in ``Q``). Empty: no taper (AC, or SoC
            or battery unknown). A planning model of the vehicle, not a limit: the LP plans
            it, the verifier does not judge it.

    Raises:
        ValueError: A field is out of range; the message names it.
    """

    id: str
    node: str
    slot: str
    phases: tuple[int, ...]
    min_a: float
    max_a: float
    energy_kwh: float
    departure_step: int
    arrival_step: int = 0
    priority: int = 0
    last_step_share: float = 1.0
    min_energy_kwh: float = 0.0
    taper: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: must be a non-empty string")
        if not self.slot:
            raise ValueError(f"slot: must be a non-empty string (session {self.id!r})")
        phases = tuple(int(p) for p in self.phases)
        if not phases or len(set(phases)) != len(phases) or not set(phases) <= set(PHASES):
            raise ValueError(f"phases: need distinct phases from 0, 1, 2, got {self.phases!r}")
        object.__setattr__(self, "phases", phases)
        for name in ("min_a", "max_a", "energy_kwh", "min_energy_kwh"):
            v = _finite(f"{name} (session {self.id!r})", getattr(self, name))
            if v < 0:
                raise ValueError(f"{name}: must be >= 0, got {v} (session {self.id!r})")
            object.__setattr__(self, name, v)
        if self.min_energy_kwh > self.energy_kwh + 1e-9:
            raise ValueError(
                f"min_energy_kwh: {self.min_energy_kwh} is above energy_kwh {self.energy_kwh} "
                f"(session {self.id!r})"
            )
        if self.max_a < self.min_a:
            raise ValueError(
                f"max_a: {self.max_a} is below min_a {self.min_a} (session {self.id!r}); "
                "give max_a = 0 to block the session"
            )
        for name in ("departure_step", "arrival_step", "priority"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"{name}: must be an integer, got {v!r} (session {self.id!r})")
            object.__setattr__(self, name, int(v))
        if not 0 <= self.priority <= 4:
            raise ValueError(f"priority: must be 0..4, got {self.priority} (session {self.id!r})")
        share = _finite(f"last_step_share (session {self.id!r})", self.last_step_share)
        if not 0 < share <= 1:
            raise ValueError(
                f"last_step_share: must be in (0, 1], got {share} (session {self.id!r})"
            )
        object.__setattr__(self, "last_step_share", share)
        lines = []
        for k, line in enumerate(self.taper):
            a, per_ah = (_finite(f"taper[{k}] (session {self.id!r})", x) for x in line)
            if a < 0 or per_ah <= 0:
                raise ValueError(
                    f"taper[{k}]: need a_a >= 0 and per_ah > 0, got {line!r} (session {self.id!r})"
                )
            lines.append((a, per_ah))
        object.__setattr__(self, "taper", tuple(lines))


def soc_taper(
    full_a: float,
    soc_pct: float,
    battery_kwh: float,
    kwh_per_ah: float,
    from_soc: float = 80.0,
    share_at_full: float = 0.1,
) -> tuple[tuple[float, float], ...]:
    """`Session.taper` for a curve flat at ``full_a`` up to ``from_soc`` and linear from there
    to ``share_at_full · full_a`` at 100 % (the simulator's DC curve, `sitectl.whatif.physics`).

    Args:
        full_a: Current per phase the vehicle takes below the taper (A).
        soc_pct: Its SoC now (%).
        battery_kwh: Usable capacity (kWh).
        kwh_per_ah: Energy into the battery per A·h per phase planned (kWh: ``U · phases ·
            efficiency / 1000``).
        from_soc: Where the taper starts (%), below 100.
        share_at_full: Share of ``full_a`` it still takes at 100 %, in [0, 1).

    Returns:
        The one line of the taper, ``a − per_ah · Q``; the flat part is ``max_a``.
    """
    slope_per_soc = full_a * (1.0 - share_at_full) / (100.0 - from_soc)  # A per % SoC
    per_ah = slope_per_soc * 100.0 * kwh_per_ah / battery_kwh  # % SoC per A·h, times that
    a = full_a + slope_per_soc * (from_soc - soc_pct)
    return ((max(a, 0.0), per_ah),)


@dataclass(frozen=True, slots=True)
class Tariff:
    """What energy and peak cost.

    Args:
        price_per_kwh: Energy price per step (currency/kWh), ``Problem.steps`` values; empty
            means free energy (no price signal).
        demand_charge_per_kw: Charge on the peak grid power over the horizon (currency/kW).
        peak_so_far_kw: Peak already reached in the billing period; a new plan pays only for
            exceeding it.

    Raises:
        ValueError: A value is negative or not finite.
    """

    price_per_kwh: tuple[float, ...] = ()
    demand_charge_per_kw: float = 0.0
    peak_so_far_kw: float = 0.0

    def __post_init__(self) -> None:
        prices = tuple(_finite(f"price_per_kwh[{k}]", p) for k, p in enumerate(self.price_per_kwh))
        object.__setattr__(self, "price_per_kwh", prices)
        for name in ("demand_charge_per_kw", "peak_so_far_kw"):
            v = _finite(name, getattr(self, name))
            if v < 0:
                raise ValueError(f"{name}: must be >= 0, got {v}")
            object.__setattr__(self, name, v)


@dataclass(frozen=True, slots=True)
class Problem:
    """One control cycle's allocation problem.

    Step 0 starts now and is what gets dispatched; the rest of the horizon is the plan.

    Args:
        nodes: The circuit tree, any order; exactly one root.
        sessions: Vehicles; ids and slots unique.
        steps: Number of steps T in the horizon.
        step_s: Step length (s): one value for a uniform grid, or one per step for a
            non-uniform grid (fine near now, coarse later).
        loads: Non-EV loads, each with ``steps`` values per phase.
        tariff: Prices; ``tariff.price_per_kwh`` is empty or has ``steps`` values.
        voltage_ln_v: Line-to-neutral voltage (V) used for every kW <-> A conversion.
        caps: Time-windowed limits on nodes (:class:`NodeCap`), hard or soft.
        soft_penalty: Price of a kWh over a soft cap, as a share of the weight of a
            priority-0 kWh short at departure (`optimizer.lp.shortfall_weight`). Between
            `BEYOND_HORIZON_FACTOR` (0.5) and 1, a soft cap is exceeded only to deliver energy
            a car leaving within the horizon would otherwise miss, never to save cost.

    Raises:
        ValueError: Inconsistent input (unknown node, cycle, duplicate id or slot, wrong
            length); the message names the field.
    """

    nodes: tuple[Node, ...]
    sessions: tuple[Session, ...]
    steps: int
    step_s: float | tuple[float, ...]
    loads: tuple[Load, ...] = ()
    tariff: Tariff = field(default_factory=Tariff)
    voltage_ln_v: float = 230.0
    caps: tuple[NodeCap, ...] = ()
    soft_penalty: float = 0.75
    # Derived, filled by __post_init__ (slots and frozen rule out cached_property on fields).
    _node_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "sessions", tuple(self.sessions))
        object.__setattr__(self, "loads", tuple(self.loads))
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps: must be an integer >= 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        if isinstance(self.step_s, int | float):
            step = _finite("step_s", self.step_s)
            if step <= 0:
                raise ValueError(f"step_s: must be > 0, got {step}")
            object.__setattr__(self, "step_s", step)
        else:
            durations = tuple(_finite(f"step_s[{k}]", d) for k, d in enumerate(self.step_s))
            if len(durations) != self.steps:
                raise ValueError(f"step_s: need {self.steps} durations, got {len(durations)}")
            if min(durations) <= 0:
                raise ValueError("step_s: every duration must be > 0")
            object.__setattr__(self, "step_s", durations)
        volt = _finite("voltage_ln_v", self.voltage_ln_v)
        if volt <= 0:
            raise ValueError(f"voltage_ln_v: must be > 0, got {volt}")
        object.__setattr__(self, "voltage_ln_v", volt)

        index: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            if node.id in index:
                raise ValueError(f"nodes: duplicate id {node.id!r}")
            index[node.id] = k
        object.__setattr__(self, "_node_index", index)
        roots = [n.id for n in self.nodes if n.parent is None]
        if len(roots) != 1:
            raise ValueError(f"nodes: need exactly one root (parent None), got {roots}")
        for node in self.nodes:
            if node.parent is not None and node.parent not in index:
                raise ValueError(f"nodes: {node.id!r} has unknown parent {node.parent!r}")
        for node in self.nodes:  # every node must reach the root without a cycle
            seen = {node.id}
            cur = node.parent
            while cur is not None:
                if cur in seen:
                    raise ValueError(f"nodes: cycle through {node.id!r}")
                seen.add(cur)
                cur = self.nodes[index[cur]].parent

        ids: set[str] = set()
        slots: set[str] = set()
        for s in self.sessions:
            if s.id in ids:
                raise ValueError(f"sessions: duplicate id {s.id!r}")
            if s.slot in slots:
                raise ValueError(f"sessions: slot {s.slot!r} used twice (session {s.id!r})")
            if s.node not in index:
                raise ValueError(f"sessions: {s.id!r} on unknown node {s.node!r}")
            ids.add(s.id)
            slots.add(s.slot)
        load_ids: set[str] = set()
        for load in self.loads:
            if load.node not in index:
                raise ValueError(f"loads: {load.id!r} on unknown node {load.node!r}")
            if load.id in load_ids:
                raise ValueError(f"loads: duplicate id {load.id!r}")
            load_ids.add(load.id)
            if len(load.current_a[0]) != self.steps:
                raise ValueError(
                    f"loads: {load.id!r} has {len(load.current_a[0])} steps, need {self.steps}"
                )
        n_prices = len(self.tariff.price_per_kwh)
        if n_prices not in (0, self.steps):
            raise ValueError(f"tariff.price_per_kwh: need {self.steps} prices, got {n_prices}")
        object.__setattr__(self, "caps", tuple(self.caps))
        for k, cap in enumerate(self.caps):
            if not isinstance(cap, NodeCap):
                raise ValueError(f"caps[{k}]: need a NodeCap, got {type(cap).__name__}")
            if cap.node not in index:
                raise ValueError(f"caps[{k}]: {cap.ref or 'cap'} on unknown node {cap.node!r}")
            if cap.end_step > self.steps:
                raise ValueError(
                    f"caps[{k}]: end_step {cap.end_step} beyond the horizon ({self.steps} steps)"
                )
        penalty = _finite("soft_penalty", self.soft_penalty)
        if penalty <= 0:
            raise ValueError(f"soft_penalty: must be > 0, got {penalty}")
        object.__setattr__(self, "soft_penalty", penalty)

    # Derived views. They are cheap, but the LP calls them every cycle, so keep them numpy.

    @property
    def durations_s(self) -> np.ndarray:
        """Length of each step (s), shape ``(steps,)``."""
        if isinstance(self.step_s, float):
            return np.full(self.steps, self.step_s)
        return np.asarray(self.step_s, dtype=float)

    @property
    def prices(self) -> np.ndarray:
        """Energy price per step, shape ``(steps,)``; zeros when the tariff has none."""
        if not self.tariff.price_per_kwh:
            return np.zeros(self.steps)
        return np.asarray(self.tariff.price_per_kwh, dtype=float)

    def step_caps_a(self) -> np.ndarray:
        """Most current per phase each session may take on each step if it were there,
        ``(sessions, steps)`` (A): ``max_a``, times ``last_step_share`` on its last step unless
        that is step 0. Windows are not applied (see `session_caps_a`)."""
        S, T = len(self.sessions), self.steps
        f = np.array(
            [(s.max_a, s.departure_step, s.last_step_share) for s in self.sessions], dtype=float
        ).reshape(S, 3)
        max_a, departure, share = f.T
        caps = np.repeat(max_a[:, None], T, axis=1)
        last = departure.astype(np.int64) - 1
        scaled = np.flatnonzero((last >= 1) & (last < T) & (share < 1.0))
        caps[scaled, last[scaled]] *= share[scaled]
        return caps

    def session_caps_a(self) -> np.ndarray:
        """`step_caps_a` inside each session's window (``arrival_step <= t <
        departure_step``, and only while it wants energy), 0 outside."""
        t = np.arange(self.steps)[None, :]
        f = np.array(
            [(s.energy_kwh, s.arrival_step, s.departure_step) for s in self.sessions], dtype=float
        ).reshape(len(self.sessions), 3)
        wanted, arrival, departure = f.T
        inside = (t >= arrival[:, None]) & (t < departure[:, None]) & (wanted[:, None] > 0)
        return np.where(inside, self.step_caps_a(), 0.0)

    # Limits per step: the nodes' own, lowered by the caps over the steps they cover.

    def limits_a(self, soft: bool = False) -> np.ndarray:
        """Per-phase current limit of every node on every step, ``(nodes, 3, steps)`` (A).

        ``soft=False``: the node's own limit lowered by every hard cap. ``soft=True``: the
        least soft cap, ``inf`` where none covers the step.
        """
        M, T = len(self.nodes), self.steps
        if soft:
            out = np.full((M, 3, T), np.inf)
        else:
            own = np.array([n.limit_a for n in self.nodes], dtype=float).reshape(M, 3)
            out = np.repeat(own[:, :, None], T, axis=2)
        for cap in self.caps:
            if cap.hard != soft and cap.limit_a is not None:
                view = out[self._node_index[cap.node], :, cap.first_step : cap.end_step]
                np.minimum(view, np.asarray(cap.limit_a)[:, None], out=view)
        return out

    def limits_kw(self, soft: bool = False) -> np.ndarray:
        """Active-power limit of every node on every step, ``(nodes, steps)`` (kW), ``inf``
        where there is none; ``soft`` as in `limits_a`."""
        M, T = len(self.nodes), self.steps
        out = np.full((M, T), np.inf)
        if not soft:
            for k, n in enumerate(self.nodes):
                if n.limit_kw is not None:
                    out[k] = n.limit_kw
        for cap in self.caps:
            if cap.hard != soft and cap.limit_kw is not None:
                view = out[self._node_index[cap.node], cap.first_step : cap.end_step]
                np.minimum(view, cap.limit_kw, out=view)
        return out

    def kw_limited(self) -> np.ndarray:
        """Per node, whether it has a hard kW limit on some step (its own or a cap's)."""
        out = np.array([n.limit_kw is not None for n in self.nodes], dtype=bool)
        for cap in self.caps:
            if cap.hard and cap.limit_kw is not None:
                out[self._node_index[cap.node]] = True
        return out

    def soft_capped(self) -> np.ndarray:
        """Per node, whether a soft cap covers it on some step."""
        out = np.zeros(len(self.nodes), dtype=bool)
        for cap in self.caps:
            if not cap.hard:
                out[self._node_index[cap.node]] = True
        return out

    def cap_at(self, node: int, phase: int | None, step: int, hard: bool = True) -> int | None:
        """Position in ``caps`` of the cap that sets node ``node``'s limit on ``step`` (its
        per-phase limit on ``phase``, its kW limit for ``None``): the least cap covering the
        step, if it is below the node's own limit (for ``hard``); ``None`` otherwise."""
        own = self.nodes[node]
        if not hard:
            best = np.inf
        elif phase is None:
            best = np.inf if own.limit_kw is None else own.limit_kw
        else:
            best = own.limit_a[phase]
        found = None
        node_id = own.id
        for k, cap in enumerate(self.caps):
            if cap.node != node_id or cap.hard != hard or not cap.first_step <= step < cap.end_step:
                continue
            value = cap.limit_kw if phase is None else (cap.limit_a or (None,) * 3)[phase]
            if value is not None and value < best - 1e-9:
                best, found = value, k
        return found

    def node_index(self, node_id: str) -> int:
        """Position of a node in ``nodes``.

        Raises:
            KeyError: Unknown node id.
        """
        return self._node_index[node_id]

    def parents(self) -> list[int]:
        """Parent position of every node, -1 for the root."""
        return [-1 if n.parent is None else self._node_index[n.parent] for n in self.nodes]

    def ancestors(self) -> list[list[int]]:
        """For every node, its own position and its ancestors' up to the root."""
        parents = self.parents()
        out = []
        for k in range(len(self.nodes)):
            path = [k]
            while parents[path[-1]] >= 0:
                path.append(parents[path[-1]])
            out.append(path)
        return out

    def root(self) -> int:
        """Position of the root node."""
        return self.parents().index(-1)

    def load_through_a(self) -> np.ndarray:
        """Non-EV current through each node, shape ``(nodes, 3, steps)`` (A).

        A load counts against its own node and every ancestor.
        """
        out = np.zeros((len(self.nodes), 3, self.steps))
        if not self.loads:
            return out
        ancestors = self.ancestors()
        for load in self.loads:
            cur = np.asarray(load.current_a, dtype=float)
            for k in ancestors[self._node_index[load.node]]:
                out[k] += cur
        return out
