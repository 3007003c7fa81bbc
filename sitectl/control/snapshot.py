"""From the site state to the optimizer's problem, conservatively.

Rules of this module (DESIGN.md safety model; issue #7):

- **Non-EV load.** For a circuit whose meter is trusted: measured current minus the *fresh* EV
  draw under it, taken at its lower bound (`sitectl.control.draw`: MeterValues no older than
  ``ev_measurement_max_age_s`` on the monotonic clock). A stale or missing EV measurement counts
  as 0, so the unexplained load is taken as non-EV. Subtracting a commanded limit instead would
  *underestimate* the non-EV load whenever a vehicle draws less than allowed; this rule can
  only waste headroom, never overload.
- **A meter that cannot be right** (it reads less, on some phase, than the fresh EV draw it must
  contain, for longer than ``ev_measurement_max_age_s``) is distrusted like a failed one: a
  frozen gateway serving cached registers looks exactly like that.
- **Failed meter.** Its circuit is budgeted with its worst-case non-EV load (``non_ev_max_a``) or,
  when none is configured, with only the fail-safe currents of its chargers as EV budget.
- **Unmetered circuit.** Its configured worst-case non-EV load, less what its children account for.
- **Chargers sitectl cannot steer** are fixed loads: a disconnected charger at its last commanded
  limit until that limit's validity has lapsed, then at its fail-safe; an uncontrollable one
  (refusing profiles) and a non-compliant one at its maximum; one installing firmware without a
  session at the higher of its measured draw (upper bound) and the limit it still holds.
- **Over-draw.** A steered charger drawing more than its accepted limit (ramping down, or a little
  over its limit) has the excess budgeted as a fixed load, so small excesses of many chargers
  cannot add up unseen on a circuit.
- **Sessions**: phases in use are the charger's, less only those reported low over several
  samples (an unreported phase is in use), mapped through the charger's rotation; the maximum
  is the least of charger, connector, vehicle (2.0.1 charging needs) and the CSMS's own profiles
  (its composite schedule); departure from the session (2.0.1 needs, MQTT/REST), else the fleet
  schedule, else the default. A stated need (the vehicle's or an operator's) bounds the energy;
  an unknown one (the fleet's usual need, or ``default_energy_kwh``) is only a planning
  assumption: the vehicle always wants at least one more step at its maximum, so it charges
  until it stops drawing. A minimum target (``SessionState.energy_min_kwh``) becomes the
  session's ``min_energy_kwh``, bounded by its need, in the same terms (DC: at the AC input).
  A DC fleet vehicle whose SoC the charger reports gets its charging curve
  (``taper_from_soc``, ``taper_share_at_full``) as `Session.taper`, if it can reach it;
  power its depot system reserves for preconditioning is a load on its charger's node.
- **A connector in use without a known transaction** (sitectl restarted mid-session, or a 2.0.1
  charger whose transaction starts only when energy flows) is never held at 0 A: it gets at
  least its charger's minimum (and fail-safe) current as a reserved floor, plus a share as a
  session of unknown need.

The builder is pure: it reads the state and memory it is given and returns plain data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from optimizer.problem import Load, Node, Problem, Session
from sitectl.config import GRID, ChargerConfig, Config
from sitectl.control.draw import Draw, connector_draw, phases_in_use
from sitectl.control.fleet import FleetIndex, dc_taper, precondition_load
from sitectl.control.horizon import Horizon
from sitectl.control.memory import ChargerMemory
from sitectl.control.meters import MeterSupervisor
from sitectl.control.power import MeasuredPower, lowered, trusted_power_kw
from sitectl.control.ramp import relieve_ramps
from sitectl.control.windows import horizon_caps, limits_in_force, step0_limits
from sitectl.limits import GridLimit
from sitectl.ocpp.composite import InstalledProfile, composite_limit_a
from sitectl.ocpp.observe import IN_SESSION_STATUSES
from sitectl.state import ChargerState, ConnectorState, SiteState

__all__ = [
    "FLOOR_STATUSES",
    "Built",
    "ChargerMemory",
    "ProblemBuilder",
    "SessionInfo",
    "charger_node",
    "efficiency",
]

#: Connector statuses that get a floor current while no transaction is known on them.
FLOOR_STATUSES = IN_SESSION_STATUSES | {"Preparing"}
#: Typical AC-to-DC efficiency of a DC fast charger at rated power when none is configured
#: (datasheets of 50–400 kW units state 94–96 %; 0.93 leaves margin for part load).
DEFAULT_DC_EFFICIENCY = 0.93
#: How much a meter may read below the EV draw it contains before it is implausible (A, and a
#: share of that draw): measurement tolerance of chargers' and meters' current transformers.
IMPLAUSIBLE_MARGIN_A = 5.0
IMPLAUSIBLE_MARGIN_SHARE = 0.05
#: An over-draw below this is measurement noise, not budgeted.
OVERDRAW_NOISE_A = 0.5


def efficiency(charger: ChargerConfig) -> float:
    """A DC charger's AC-to-DC efficiency (1 for AC chargers)."""
    if charger.kind != "dc":
        return 1.0
    return float(getattr(charger, "efficiency", None) or DEFAULT_DC_EFFICIENCY)


Phases = tuple[float, float, float]
ZERO: Phases = (0.0, 0.0, 0.0)


def charger_node(charger_id: str) -> str:
    """The optimizer node of a charger (its own max current is a node limit)."""
    return f"charger:{charger_id}"


def _add(a: Phases, b: Phases) -> Phases:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _sub_floor(a: Phases, b: Phases) -> Phases:
    return (max(0.0, a[0] - b[0]), max(0.0, a[1] - b[1]), max(0.0, a[2] - b[2]))


def _on_phases(amps: float, phases: Iterable[int]) -> Phases:
    out = [0.0, 0.0, 0.0]
    for phase in phases:
        out[phase] += amps
    return (out[0], out[1], out[2])


class PeakHold:
    """Per circuit, the highest non-EV estimate of the last `hold_s` seconds, per phase.

    A meter and the chargers' MeterValues are sampled at different moments; while vehicles ramp
    down, their last report exceeds what they draw and the measured-minus-EV estimate dips below
    the true non-EV load. Holding the peak for longer than a report interval plus the vehicles'
    lag removes those dips: a rise counts at once, a fall only after the window.
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._history: dict[str, deque[tuple[float, Phases]]] = {}

    def __call__(self, node: str, phases: Phases, now: float) -> Phases:
        history = self._history.setdefault(node, deque())
        history.append((now, phases))
        while history and now - history[0][0] > self.hold_s:
            history.popleft()
        return (
            max(p[0] for _, p in history),
            max(p[1] for _, p in history),
            max(p[2] for _, p in history),
        )


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the builder assumed for one session (for the API, the dashboard and tests)."""

    departure: datetime
    departure_source: str  # vehicle | command | fleet | default
    need_kwh: float | None  # the stated or assumed total need; None: a floor-only connector
    need_source: str  # vehicle | command | fleet | default | unknown
    capped: bool  # whether the need bounds the energy (stated) or only guides the plan
    #: What set its maximum, lowest last: (source, A) from "connector" (charger or connector
    #: hardware), "vehicle" (2.0.1 needs), "ev_cap" (learnt), "csms", "applied" (closed loop).
    max_by: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Built:
    """The problem for one cycle and what is needed to turn its answer into limits."""

    problem: Problem
    sessions: dict[str, tuple[str, int]]  # session id -> (charger id, connector id)
    steerable: tuple[str, ...]  # chargers that get a dynamic limit this cycle
    fixed: dict[str, Phases]  # chargers budgeted as fixed loads, site phases
    non_ev: dict[str, Phases]  # circuit -> non-EV load placed there (step 0)
    measured: dict[str, Phases]  # circuit -> measured current, where trusted
    #: Session id -> a current reserved below the LP's share (a connector in use without a
    #: known transaction); the dispatched limit is the floor plus the LP's current.
    floors: dict[str, float] = field(default_factory=dict)
    info: dict[str, SessionInfo] = field(default_factory=dict)
    overdraw: dict[str, Phases] = field(default_factory=dict)  # charger -> excess, site phases
    #: Circuit -> why its meter was found implausible this cycle (the loop alarms on it).
    implausible: dict[str, str] = field(default_factory=dict)
    voltage_v: float = 230.0  # the lowest measured phase voltage (or nominal): DC conversion
    #: Node -> kW taken off its kW limit: measured non-EV power above U · Σ I (control/power.py).
    kw_cuts: dict[str, float] = field(default_factory=dict)
    #: The limit window behind each of ``problem.caps`` (same order; `control/windows.py`).
    caps: tuple[GridLimit, ...] = ()


class ProblemBuilder:
    """Builds the optimizer problem of each cycle for one site.

    Args:
        config: the validated configuration.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.control = config.control
        self.chargers = {c.id: c for c in config.chargers}
        self.parents = config.circuit_parent()
        self.limits = config.circuit_limits_a()
        self.children: dict[str, list[str]] = {}
        for circuit in config.circuits:
            self.children.setdefault(circuit.parent, []).append(circuit.id)
        self.meters = {GRID: config.site.meter}
        self.meters.update({c.id: c.meter for c in config.circuits})
        self.non_ev_max = {GRID: config.site.non_ev_max_a}
        self.non_ev_max.update({c.id: c.non_ev_max_a for c in config.circuits})
        self.kw_limits = {GRID: config.site.limit_kw}
        self.kw_limits.update({c.id: c.limit_kw for c in config.circuits})
        #: The least a charger that refuses 0 A must be held at (the loop sets the
        #: dispatcher's `Dispatcher.held_minimum_a`); ``None``: it can be paused.
        self.held_minimum_a: Callable[[str], float | None] = lambda charger_id: None
        #: How long a lowered charger's previous limit is held (s): ``control.ramp_down_s``,
        #: or longer for a charger measured slower (`sitectl.control.response`).
        self.ramp_hold_s: Callable[[str], float] = lambda charger_id: self.control.ramp_down_s
        self._node_parents: dict[str, str | None] = dict(self.parents)
        for charger in config.chargers:
            self._node_parents[charger_node(charger.id)] = charger.circuit
        self.fleet = FleetIndex(config)  # by binding, else id tag (control/fleet.py)
        self.hold = PeakHold(config.control.effective_non_ev_hold_s)
        self.power = MeasuredPower(config, config.control.effective_non_ev_hold_s)
        self.horizon = Horizon(config)
        self._implausible_since: dict[str, float] = {}
        self.failsafe_under: dict[str, Phases] = {node: ZERO for node in self.parents}
        #: Each charger's path up to the grid (the tree does not change while it runs; asked
        #: for every charger twice a cycle).
        self._paths = {c.id: config.circuit_path(c.circuit) for c in config.chargers}
        for charger in config.chargers:
            share = _on_phases(charger.failsafe_current_a, charger.site_phases)
            for node in self._paths[charger.id]:
                self.failsafe_under[node] = _add(self.failsafe_under[node], share)

    # Public.

    def slots(self) -> dict[str, str]:
        """Every connector of the site and its node, so the LP is built once for all."""
        return {
            f"{c.id}/{n}": charger_node(c.id)
            for c in self.config.chargers
            for n in range(1, c.connectors + 1)
        }

    def draws(self, state: SiteState, now_mono: float) -> dict[str, dict[int, Draw]]:
        """Every charger's fresh connector draws (charger phases); stale ones are absent."""
        out: dict[str, dict[int, Draw]] = {}
        max_age = self.control.ev_measurement_max_age_s
        volts = self.config.site.nominal_voltage_v
        for charger in self.config.chargers:
            found: dict[int, Draw] = {}
            for connector in state.chargers[charger.id].connectors.values():
                draw = connector_draw(
                    connector,
                    charger_phases=charger.phases,
                    dc=charger.kind == "dc",
                    efficiency=efficiency(charger),
                    now_mono=now_mono,
                    max_age_s=max_age,
                    nominal_voltage_v=volts,
                    max_current_a=charger.max_current_a,
                )
                if draw is not None:
                    found[connector.connector_id] = draw
            out[charger.id] = found
        return out

    def build(
        self,
        state: SiteState,
        meters: MeterSupervisor,
        memory: dict[str, ChargerMemory],
        now: datetime,
        now_mono: float,
        draws: dict[str, dict[int, Draw]] | None = None,
    ) -> Built:
        """The problem for this cycle (`draws` from `draws()`, computed here when omitted)."""
        durations = self.horizon.durations_s
        steps = len(durations)
        draws = draws if draws is not None else self.draws(state, now_mono)
        ev_lo, fixed, steerable, overdraw, ramping = self._chargers(state, memory, draws, now_mono)
        measured, voltages = self._measured(meters)
        implausible = self._plausibility(measured, ev_lo, meters, now_mono)
        non_ev = {
            node: self.hold(node, phases, now_mono)
            for node, phases in self._non_ev(measured, ev_lo).items()
        }
        limits = self.limits  # the ratings; limit windows are caps over their steps
        state.overrides.expire(now)
        horizon_end = now + timedelta(seconds=self.horizon.ends_s[-1])
        windows = state.limits.windows(now, horizon_end, now)
        # kW rows: U · Σ I at the highest measured voltage, and no less than the measured active
        # power (control/power.py); DC power limits use the lowest (most current per watt).
        nominal = self.config.site.nominal_voltage_v
        volts_high, volts_low = max([nominal, *voltages]), min([nominal, *voltages])
        power = trusted_power_kw((node, meters.measured(node)) for node in measured)
        non_ev_kw = self.power.non_ev_kw(power, ev_lo, volts_low, now_mono)
        cuts = self.power.kw_cuts(non_ev, non_ev_kw, volts_high)
        kw = {node: lowered(limit, cuts.get(node, 0.0)) for node, limit in self.kw_limits.items()}
        caps, behind = horizon_caps(windows, now, self.horizon.ends_s, self.limits, cuts)
        nodes = [Node(GRID, None, limits[GRID], kw[GRID])]
        for circuit in self.config.circuits:
            nodes.append(Node(circuit.id, circuit.parent, limits[circuit.id], kw[circuit.id]))
        for charger in self.config.chargers:
            cap = charger.max_current_a
            limit_kw = None
            if charger.kind == "dc" and charger.max_power_kw is not None:
                # Its AC input at full output power (what the kW rows of the tree see).
                limit_kw = charger.max_power_kw / efficiency(charger)
            nodes.append(Node(charger_node(charger.id), charger.circuit, (cap, cap, cap), limit_kw))
        loads = [
            Load(f"non-ev:{node}", node, tuple((amps,) * steps for amps in phases))
            for node, phases in non_ev.items()
            if any(phases)
        ]
        for prefix, table in (("fixed", fixed), ("overdraw", overdraw)):
            loads += [
                Load(
                    f"{prefix}:{charger_id}",
                    charger_node(charger_id),
                    tuple((amps,) * steps for amps in phases),
                )
                for charger_id, phases in table.items()
                if any(phases)
            ]
        sessions: list[Session] = []
        index: dict[str, tuple[str, int]] = {}
        floors: dict[str, float] = {}
        info: dict[str, SessionInfo] = {}
        for charger_id in steerable:
            charger = self.chargers[charger_id]
            charger_state = state.chargers[charger_id]
            for connector in charger_state.connectors.values():
                made = self._session(
                    charger, charger_state, connector, memory[charger_id], now, now_mono
                )
                if made is None:
                    continue
                session, floor, session_info = made
                reserved = precondition_load(  # VDV 463 preconditioning before departure
                    session.id,
                    connector.session,
                    charger_node(charger_id),
                    (now, self.horizon.ends_s),
                    # kW at the vehicle to A per phase at the charger's input (DC: over η).
                    1000 / (efficiency(charger) * volts_low * len(charger.site_phases)),
                    charger.site_phases,
                )
                if reserved is not None:
                    loads.append(reserved)
                sessions.append(session)
                index[session.id] = (charger_id, connector.connector_id)
                info[session.id] = session_info
                if floor > 0:
                    floors[session.id] = floor
                    loads.append(
                        Load(
                            f"floor:{session.id}",
                            charger_node(charger_id),
                            tuple(
                                (floor if p in charger.site_phases else 0.0,) * steps
                                for p in range(3)
                            ),
                        )
                    )
        if ramping:
            # Ramp excess alone must not pause vehicles (sitectl.control.ramp).
            amps_now, kw_now = step0_limits(caps, limits, kw)
            loads = relieve_ramps(
                loads,
                sessions,
                amps_now,
                self._node_parents,
                {f"overdraw:{charger_id}" for charger_id in ramping},
                set(floors),
                kw_now,
                volts_high,
            )
        problem = Problem(
            nodes=tuple(nodes),
            sessions=tuple(sessions),
            steps=steps,
            step_s=durations if len(set(durations)) > 1 else durations[0],
            loads=tuple(loads),
            # External prices (OpenADR PRICE events) replace the configured ones they cover.
            tariff=self.horizon.tariff(now, state.prices.windows(now, self.horizon.end(now))),
            voltage_ln_v=volts_high,
            caps=tuple(caps),
            soft_penalty=self.control.soft_limit_penalty,
        )
        return Built(
            problem,
            index,
            tuple(steerable),
            fixed,
            non_ev,
            measured,
            floors=floors,
            info=info,
            overdraw=overdraw,
            implausible=implausible,
            voltage_v=volts_low,
            kw_cuts=cuts,
            caps=tuple(behind),
        )

    def effective_limits(self, state: SiteState, now: datetime) -> dict[str, Phases]:
        """Configured limits, lowered by the hard windows in force at `now` (operator
        overrides among them; never raised)."""
        return limits_in_force(self.limits, state.limits.in_force(now), now)

    # Chargers.

    def _site(self, charger: ChargerConfig, phases: Phases) -> Phases:
        """Charger phases to site phases through the rotation."""
        site = [0.0, 0.0, 0.0]
        for k, phase in enumerate(charger.site_phases):
            site[phase] += phases[k]
        return (site[0], site[1], site[2])

    def _chargers(
        self,
        state: SiteState,
        memory: dict[str, ChargerMemory],
        draws: dict[str, dict[int, Draw]],
        now_mono: float,
    ) -> tuple[dict[str, Phases], dict[str, Phases], list[str], dict[str, Phases], set[str]]:
        """EV draw per charger (lower bound), fixed loads, chargers to steer, over-draws, and
        the chargers whose over-draw is a ramp-down under way."""
        ev_lo: dict[str, Phases] = {}
        fixed: dict[str, Phases] = {}
        steerable: list[str] = []
        overdraw: dict[str, Phases] = {}
        ramping: set[str] = set()
        for charger in self.config.chargers:
            charger_state = state.chargers[charger.id]
            mem = memory.setdefault(charger.id, ChargerMemory())
            lo, est, hi = ZERO, ZERO, ZERO
            for draw in draws.get(charger.id, {}).values():
                lo, est, hi = _add(lo, draw.lo), _add(est, draw.est), _add(hi, draw.hi)
            ev_lo[charger.id] = self._site(charger, lo)
            maximum = _on_phases(charger.max_current_a, charger.site_phases)
            if not charger_state.connected or not mem.failsafe_installed:
                # Gone, or not (yet) holding sitectl's fail-safe on this connection: not
                # steered (if sitectl died it would fall back to whatever it holds), budgeted
                # at the limit it still holds, its maximum when that is unknown.
                held = self._held_budget(charger, mem, now_mono)
                upper = self._site(charger, hi)
                fixed[charger.id] = tuple(max(a, b) for a, b in zip(held, upper, strict=True))
            elif mem.unavailable:
                held = self._held_budget(charger, mem, now_mono)
                upper = self._site(charger, hi)
                fixed[charger.id] = tuple(max(a, b) for a, b in zip(held, upper, strict=True))
            elif mem.uncontrollable or mem.noncompliant:
                fixed[charger.id] = maximum
            elif mem.applied_above_a is not None:
                # It applies more than sitectl's limit (its own composite schedule says so):
                # budgeted at what it applies, or at what it draws if that is more (#17).
                applied = _on_phases(
                    min(mem.applied_above_a, charger.max_current_a), charger.site_phases
                )
                upper = self._site(charger, hi)
                fixed[charger.id] = tuple(max(a, b) for a, b in zip(applied, upper, strict=True))
            else:
                steerable.append(charger.id)
                if mem.commanded_a is not None:
                    excess = [
                        e - mem.commanded_a if e - mem.commanded_a > OVERDRAW_NOISE_A else 0.0
                        for e in est
                    ]
                    ramp = self._ramping(charger, charger_state, mem, est, now_mono)
                    if ramp > 0:
                        # Lowered, not yet seen lower: the headroom is not free yet (#17.5).
                        for k in range(len(charger.site_phases)):
                            excess[k] = max(excess[k], ramp)
                    if any(excess):
                        overdraw[charger.id] = self._site(charger, tuple(excess))  # type: ignore[arg-type]
                        if self._lowered_within_hold(charger.id, mem, now_mono):
                            ramping.add(charger.id)
        return ev_lo, fixed, steerable, overdraw, ramping

    def _lowered_within_hold(self, charger_id: str, mem: ChargerMemory, now_mono: float) -> bool:
        """Lowered less than its ramp hold ago: what it draws above its limit is a ramp."""
        if not mem.limit_history or mem.commanded_a is None:
            return False
        hold_s = self.ramp_hold_s(charger_id)
        if now_mono - mem.limit_history[-1][0] >= hold_s:
            return False
        return mem.highest_limit_since(now_mono - hold_s) - mem.commanded_a > OVERDRAW_NOISE_A

    def _ramping(
        self,
        charger: ChargerConfig,
        charger_state: ChargerState,
        mem: ChargerMemory,
        est: Phases,
        now_mono: float,
    ) -> float:
        """How much above its limit a charger that was just lowered may still draw (A).

        "Decreases first" orders acknowledgements, not currents: a charger applies a lower
        limit within seconds. Until ``ramp_down_s`` (or the charger's own measured ramp-down
        time, when longer) has passed, or a measurement taken after
        the change says what it draws (then its excess over the limit counts), its previous
        limit still counts.
        """
        if not mem.limit_history or mem.commanded_a is None:
            return 0.0
        changed_at = mem.limit_history[-1][0]
        hold_s = self.ramp_hold_s(charger.id)
        if now_mono - changed_at >= hold_s:
            return 0.0
        before = mem.highest_limit_since(now_mono - hold_s)
        ramp = before - mem.commanded_a
        if ramp <= OVERDRAW_NOISE_A:
            return 0.0
        seen_after = any(
            (c.current_mono is not None and c.current_mono > changed_at)
            or (c.power_mono is not None and c.power_mono > changed_at)
            for c in charger_state.connectors.values()
        )
        if seen_after:
            # Measured since: after a decrease its draw only falls, so what it drew then is
            # the most it still draws — budgeted as its over-draw (`est` above its limit), not
            # the whole previous limit: holding that would pause neighbours one after another
            # while nothing draws it (a lowered charger's ramp freeing nothing for a cycle).
            return 0.0
        return ramp

    def _held_budget(self, charger: ChargerConfig, mem: ChargerMemory, now_mono: float) -> Phases:
        """What a charger sitectl does not steer now may draw: the limit it still holds.

        Its last dynamic limit stays in force until its validity ends (plus a period of margin
        for the charger's clock); after that the charger holds its fail-safe (installed by this
        or an earlier run of sitectl), or its maximum when it never took the fail-safe.
        """
        amps = (
            charger.failsafe_current_a
            if mem.failsafe_installed or mem.failsafe_ever
            else (charger.max_current_a)
        )
        if (
            mem.commanded_a is not None
            and mem.commanded_at is not None
            and now_mono - mem.commanded_at
            < self.control.profile_validity_s + self.control.period_s
        ):
            amps = max(amps, mem.commanded_a)
        return _on_phases(amps, charger.site_phases)

    def _session(
        self,
        charger: ChargerConfig,
        charger_state: ChargerState,
        connector: ConnectorState,
        mem: ChargerMemory,
        now: datetime,
        now_mono: float,
    ) -> tuple[Session, float, SessionInfo] | None:
        session = connector.session
        floor = 0.0
        if session is None:
            if connector.status not in FLOOR_STATUSES:
                return None
            # In use without a known transaction: never 0 A (a charger whose transaction starts
            # only when energy flows would never start one), and whatever more it can take.
            floor = min(
                max(charger.min_current_a, charger.failsafe_current_a), self._connector_max(charger)
            )
        elif (held := self.held_minimum_a(charger.id)) is not None:
            # It rejects 0 A (a quirk): it cannot be paused, only held at its minimum, which
            # is reserved like a floor (issue #17).
            floor = min(held, self._connector_max(charger))
        in_use = phases_in_use(connector, charger.phases) if charger.kind != "dc" else (0, 1, 2)
        rotation = charger.site_phases
        phases = tuple(sorted(rotation[k] for k in in_use if k < len(rotation)))
        if session is None:
            phases = tuple(sorted(rotation))
        max_a = self._connector_max(charger)
        max_by = [("connector", max_a)]
        if session is not None and session.ev_max_current_a:
            max_by.append(("vehicle", session.ev_max_current_a))
        if (
            session is not None
            and mem.ev_session == session.session_id
            and mem.ev_cap_a is not None
        ):
            max_by.append(("ev_cap", mem.ev_cap_a))
        csms = self._csms_bound(charger, charger_state, connector, now)
        if csms is not None:
            max_by.append(("csms", csms))
        applied = mem.applied_cap_a(now_mono)  # it applies less than sent (closed loop, #17)
        if applied is not None:
            max_by.append(("applied", applied))
        max_a = min(amps for _, amps in max_by)
        min_a = charger.min_current_a
        if session is not None and session.ev_min_current_a:
            min_a = max(min_a, session.ev_min_current_a)
        vehicle = self.fleet.vehicle(session)
        departure, departure_source = self._departure(session, vehicle, now)
        step_kwh = (
            max_a * len(phases) * self.config.site.nominal_voltage_v * self.control.step_s / 3.6e6
        )
        delivered = session.energy_wh / 1000 if session is not None else 0.0
        if session is not None and session.energy_wanted_kwh is not None:
            need, need_source, capped = session.energy_wanted_kwh, session.need_source, True
            remaining = max(0.0, need - delivered)
        else:
            if vehicle is not None and vehicle.energy_kwh is not None:
                need, need_source = vehicle.energy_kwh, "fleet"
            else:
                need, need_source = self.control.default_energy_kwh, "default"
            if session is None:
                need_source = "unknown"
            capped = False
            # Not a cap: whatever it is assumed to need, it wants at least one more step at its
            # maximum, so it charges until the vehicle itself stops drawing.
            remaining = max(need - delivered, step_kwh)
        # The minimum target (fleet, VDV 463), met first by the LP; never above the need.
        minimum = getattr(session, "energy_min_kwh", None)
        remaining_min = 0.0 if minimum is None else min(remaining, max(0.0, minimum - delivered))
        if charger.kind == "dc":
            # A DC vehicle's need (and its charger's energy register) is what reaches the
            # vehicle; the LP plans the AC input, more by 1/η (issue #19: ready times were 7 %
            # optimistic and the vehicle left 7 % short).
            remaining /= efficiency(charger)
            remaining_min /= efficiency(charger)
        seconds_left = (departure - now).total_seconds()
        departure_step, share = self.horizon.departure_step(seconds_left)
        if 0 < seconds_left < self.control.step_s:
            # Leaving within the first step: the LP sees the whole step, so ask for as much
            # more as the step is longer than the time left (the current then delivers the
            # need by the departure, not by the end of the step).
            remaining *= self.control.step_s / max(seconds_left, 1.0)
            remaining_min *= self.control.step_s / max(seconds_left, 1.0)
        paused_at = mem.paused_since.get(connector.connector_id)
        if paused_at is not None and now_mono - paused_at < self.control.min_pause_s:
            remaining = remaining_min = 0.0  # minimum pause dwell: it stays paused this cycle
        if floor > 0:
            # The floor is reserved as a load; the LP shares out only what is above it, and
            # the minimum-current rule is already met by the floor.
            max_a, min_a = max(0.0, max_a - floor), 0.0
        elif max_a < min_a:
            min_a = max_a = 0.0  # cannot charge within its bounds: blocked
        priority = min(4, vehicle.priority) if vehicle else 0
        slot = f"{charger.id}/{connector.connector_id}"
        taper: tuple[tuple[float, float], ...] = ()
        if charger.kind == "dc" and floor == 0:  # its curve, as battery energy per input A·h
            kwh_per_ah = 3 * self.config.site.nominal_voltage_v * efficiency(charger) / 1000
            within_s = min(max(seconds_left, 0.0), self.horizon.ends_s[-1])
            taper = dc_taper(
                self.fleet.config_of(session),
                connector.soc_percent,
                self._connector_max(charger),
                kwh_per_ah,
                within_s,
            )
        problem_session = Session(
            id=slot,
            node=charger_node(charger.id),
            slot=slot,
            phases=phases or tuple(sorted(rotation)),
            min_a=min_a,
            max_a=max_a,
            energy_kwh=remaining,
            departure_step=departure_step,
            priority=priority,
            last_step_share=share,
            min_energy_kwh=min(remaining_min, remaining),
            taper=taper,
        )
        info = SessionInfo(
            departure, departure_source, need, need_source or "unknown", capped, tuple(max_by)
        )
        return problem_session, floor, info

    def _connector_max(self, charger: ChargerConfig) -> float:
        max_a = charger.max_current_a
        if charger.connector_max_current_a is not None:
            max_a = min(max_a, charger.connector_max_current_a)
        if charger.kind == "dc" and charger.max_power_kw is not None:
            # AC input current at full output: P / (η · 3 · U).
            max_a = min(
                max_a,
                charger.max_power_kw
                * 1000
                / (efficiency(charger) * 3 * self.config.site.nominal_voltage_v),
            )
        return max_a

    def _departure(
        self, session: object | None, vehicle: object | None, now: datetime
    ) -> tuple[datetime, str]:
        explicit = getattr(session, "departure", None)
        if explicit is not None:
            return explicit, getattr(session, "departure_source", None) or "command"
        usual = getattr(vehicle, "departure", None)
        if usual:
            return self.horizon.next_time(usual, now), "fleet"
        return self.horizon.next_time(self.control.default_departure, now), "default"

    def _csms_bound(
        self,
        charger: ChargerConfig,
        charger_state: ChargerState,
        connector: ConnectorState,
        now: datetime,
    ) -> float | None:
        if not charger_state.csms_profiles:
            return None
        installed = [
            InstalledProfile(p.connector_id, p.profile, p.received_at)
            for p in charger_state.csms_profiles.values()
        ]
        session = connector.session
        return composite_limit_a(
            installed,
            connector.connector_id,
            now,
            transaction_id=session.transaction_id if session else None,
            transaction_start=session.started_at if session else None,
            voltage_v=self.config.site.nominal_voltage_v,
            phases=len(charger.site_phases),
        )

    # Circuits.

    def _measured(self, meters: MeterSupervisor) -> tuple[dict[str, Phases], list[float]]:
        """Trusted currents per metered circuit, and every trusted phase voltage seen."""
        out: dict[str, Phases] = {}
        voltages: list[float] = []
        for node, device in self.meters.items():
            if device is None:
                continue
            reading = meters.measured(node)
            currents = getattr(reading, "current_a", None)
            if reading is None or currents is None or any(a is None for a in currents):
                continue
            out[node] = (float(currents[0]), float(currents[1]), float(currents[2]))
            for volts in getattr(reading, "voltage_v", None) or ():
                if volts is not None and volts > 50:  # 0 V: a phase without a voltage input
                    voltages.append(float(volts))
        return out, voltages

    def _plausibility(
        self,
        measured: dict[str, Phases],
        ev_lo: dict[str, Phases],
        meters: MeterSupervisor,
        now_mono: float,
    ) -> dict[str, str]:
        """Distrust meters that read less than the EV draw they must contain (removed here)."""
        under: dict[str, Phases] = dict.fromkeys(self.parents, ZERO)
        for charger in self.config.chargers:
            for node in self._paths[charger.id]:
                under[node] = _add(under[node], ev_lo.get(charger.id, ZERO))
        found: dict[str, str] = {}
        for node in list(measured):
            reading, ev = measured[node], under[node]
            short = [
                (k, ev[k], reading[k])
                for k in range(3)
                if reading[k] < ev[k] - max(IMPLAUSIBLE_MARGIN_A, IMPLAUSIBLE_MARGIN_SHARE * ev[k])
            ]
            total_ev, total_read = sum(ev), sum(reading)
            total_short = total_read < total_ev - max(
                IMPLAUSIBLE_MARGIN_A, IMPLAUSIBLE_MARGIN_SHARE * total_ev
            )
            if not short or not total_short:
                # Short on a phase but not in total: the draw is on other phases than believed
                # (a charger wired unlike its configuration), which the phase watch judges;
                # the meter itself is consistent.
                self._implausible_since.pop(node, None)
                continue
            # Chargers report up to a max age later than the meter: a vehicle that just stopped
            # still counts. Only a mismatch that outlasts that age is the meter's fault.
            since = self._implausible_since.setdefault(node, now_mono)
            if now_mono - since < self.control.ev_measurement_max_age_s:
                continue
            k, contained, read = short[0]
            why = (
                f"reads {read:.1f} A on L{k + 1} while the chargers under it report at least "
                f"{contained:.1f} A (frozen meter or gateway?)"
            )
            found[node] = why
            meters.distrust(node, now_mono, why)
            del measured[node]
            self._implausible_since.pop(node, None)
        return found

    def _non_ev(
        self, measured: dict[str, Phases], ev_fresh: dict[str, Phases]
    ) -> dict[str, Phases]:
        """Non-EV load to place at each circuit (step 0), bottom-up."""
        ev_under: dict[str, Phases] = dict.fromkeys(self.parents, ZERO)
        for charger in self.config.chargers:
            for node in self._paths[charger.id]:
                ev_under[node] = _add(ev_under[node], ev_fresh.get(charger.id, ZERO))
        placed: dict[str, Phases] = {}

        def visit(node: str) -> Phases:
            """Place the node's own non-EV load; return the total placed in its subtree."""
            below = ZERO
            for child in self.children.get(node, []):
                below = _add(below, visit(child))
            if node in measured:
                # Every charger's fresh draw is EV, fixed-load chargers included (their budget
                # is added separately; a stale one is counted twice, which errs safe).
                total = _sub_floor(measured[node], ev_under[node])
            elif self.meters.get(node) is not None:
                total = self._failed_budget(node)
            else:
                total = self.non_ev_max[node]
            own = _sub_floor(total, below)
            placed[node] = own
            return _add(below, own)

        visit(GRID)
        return placed

    def _failed_budget(self, node: str) -> Phases:
        """Worst-case non-EV load assumed while a circuit's meter cannot be trusted."""
        if any(self.non_ev_max[node]):
            return self.non_ev_max[node]
        # No worst case configured: leave the chargers only their fail-safe currents.
        return _sub_floor(self.limits[node], self.failsafe_under[node])
