"""From the site state to the optimizer's problem, conservatively.

Rules of this module (DESIGN.md safety model; issue #7):

- **Non-EV load.** For a circuit whose meter is trusted: measured current minus the *fresh* EV
  measurements under it (MeterValues no older than ``ev_measurement_max_age_s``). A stale or
  missing EV measurement counts as 0, so the unexplained load is taken as non-EV. Subtracting a
  commanded limit instead would *underestimate* the non-EV load whenever a vehicle draws less
  than allowed, and the circuit could overload by that gap once the vehicle ramps up; this rule
  can only waste headroom, never overload.
- **Failed meter.** Its circuit is budgeted with its worst-case non-EV load (``non_ev_max_a``) or,
  when none is configured, with only the fail-safe currents of its chargers as EV budget.
- **Unmetered circuit.** Its configured worst-case non-EV load, less what its children account for.
- **Chargers sitectl cannot steer** are fixed loads: a disconnected charger at its last commanded
  limit until that limit's validity has lapsed, then at its fail-safe; an uncontrollable one
  (refusing profiles) at its maximum; a non-compliant one, or one installing firmware without a
  session (a local rollout's, or the CSMS's), at its measured draw.
- **Sessions**: phases from per-phase MeterValues where reported (else the charger's), mapped
  through the charger's rotation; the maximum is the least of charger, connector, vehicle
  (2.0.1 charging needs) and the CSMS's own profiles (its composite schedule); energy and
  departure from the session (2.0.1 needs, MQTT/REST), else the fleet schedule, else defaults.

The builder is pure: it reads the state and memory it is given and returns plain data.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from optimizer.problem import Load, Node, Problem, Session, Tariff
from sitectl.config import GRID, ChargerConfig, Config
from sitectl.control.meters import MeterSupervisor
from sitectl.ocpp.composite import InstalledProfile, composite_limit_a
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import ChargerState, ConnectorState, SiteState

__all__ = ["Built", "ChargerMemory", "ProblemBuilder", "charger_node"]

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


@dataclass
class ChargerMemory:
    """What the control loop remembers of one charger between cycles."""

    commanded_a: float | None = None  # the dynamic limit the charger last accepted
    commanded_at: float | None = None  # monotonic time it was last accepted (or refreshed)
    #: (monotonic time, limit) of every accepted change, oldest first (compliance window).
    limit_history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=512))
    disconnected_at: float | None = None
    uncontrollable: bool = False
    noncompliant: bool = False
    #: Installing firmware without a session: sitectl sends it no limit and budgets its draw.
    unavailable: bool = False
    over_limit_since: float | None = None
    paused_since: dict[int, float] = field(default_factory=dict)  # connector -> monotonic
    resumed_at: dict[int, float] = field(default_factory=dict)
    failsafe_installed: bool = False
    #: What the vehicle on a single-connector charger has shown it can draw (see `learn_ev`).
    ev_session: str | None = None
    ev_peak_a: float = 0.0
    ev_cap_a: float | None = None
    ev_unused_since: float | None = None

    def learn_ev(
        self,
        session_id: str,
        draw_a: float,
        now: float,
        learn_s: float,
        charger_max_a: float,
        min_a: float,
    ) -> None:
        """Learn a vehicle's own maximum current from what it draws (OCPP 1.6 never says).

        A vehicle that draws at least 4 A less than its limit for `learn_s` is capped at its
        peak plus 2 A, so the rest of the budget goes to others; when it comes within 1 A of
        that cap the cap rises by 4 A, so a vehicle that can take more is never held back
        for long. Lowering one session's maximum is always safe.
        """
        if session_id != self.ev_session:
            self.ev_session, self.ev_peak_a, self.ev_cap_a = session_id, 0.0, None
            self.ev_unused_since = None
        self.ev_peak_a = max(self.ev_peak_a, draw_a)
        if self.ev_cap_a is not None and draw_a >= self.ev_cap_a - 1.0:
            self.ev_cap_a = self.ev_cap_a + 4.0 if self.ev_cap_a + 4.0 < charger_max_a else None
            self.ev_unused_since = None
            return
        limit = self.commanded_a
        if learn_s <= 0 or limit is None or limit - draw_a < 4.0:
            self.ev_unused_since = None
            return
        if self.ev_unused_since is None:
            self.ev_unused_since = now
        elif now - self.ev_unused_since >= learn_s:
            cap = max(min_a, math.ceil(self.ev_peak_a + 2.0))
            if self.ev_cap_a is None or cap < self.ev_cap_a:
                self.ev_cap_a = float(cap)

    def record_limit(self, amps: float, now: float) -> None:
        """A limit the charger accepted (a refresh of the same value adds nothing)."""
        if self.commanded_a != amps or not self.limit_history:
            self.limit_history.append((now, amps))
        self.commanded_a = amps
        self.commanded_at = now

    def highest_limit_since(self, start: float) -> float:
        """The highest limit in force at any time since `start` (monotonic)."""
        in_force = [amps for at, amps in self.limit_history if at >= start]
        before = [amps for at, amps in self.limit_history if at < start]
        if before:
            in_force.append(before[-1])  # the one in force when the window began
        if not in_force and self.commanded_a is not None:
            in_force.append(self.commanded_a)
        return max(in_force, default=0.0)


@dataclass(frozen=True)
class Built:
    """The problem for one cycle and what is needed to turn its answer into limits."""

    problem: Problem
    sessions: dict[str, tuple[str, int]]  # session id -> (charger id, connector id)
    steerable: tuple[str, ...]  # chargers that get a dynamic limit this cycle
    fixed: dict[str, Phases]  # chargers budgeted as fixed loads, site phases
    non_ev: dict[str, Phases]  # circuit -> non-EV load placed there (step 0)
    measured: dict[str, Phases]  # circuit -> measured current, where trusted


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
        self.zone = ZoneInfo(config.site.timezone)
        self.fleet = {
            hash_id_tag(config.site.id, tag): vehicle
            for vehicle in config.fleet.vehicles
            for tag in vehicle.id_tags
        }
        self.hold = PeakHold(config.control.non_ev_hold_s)
        self.failsafe_under: dict[str, Phases] = {node: ZERO for node in self.parents}
        for charger in config.chargers:
            share = _on_phases(charger.failsafe_current_a, charger.site_phases)
            for node in config.circuit_path(charger.circuit):
                self.failsafe_under[node] = _add(self.failsafe_under[node], share)

    # Public.

    def slots(self) -> dict[str, str]:
        """Every connector of the site and its node, so the LP is built once for all."""
        return {
            f"{c.id}/{n}": charger_node(c.id)
            for c in self.config.chargers
            for n in range(1, c.connectors + 1)
        }

    def build(
        self,
        state: SiteState,
        meters: MeterSupervisor,
        memory: dict[str, ChargerMemory],
        now: datetime,
        now_mono: float,
    ) -> Built:
        """The problem for this cycle."""
        steps = self.control.horizon_steps
        ev_fresh, fixed, steerable = self._chargers(state, memory, now)
        measured = self._measured(meters)
        non_ev = {
            node: self.hold(node, phases, now_mono)
            for node, phases in self._non_ev(measured, ev_fresh).items()
        }
        limits = self.effective_limits(state, now)
        nodes = [Node(GRID, None, limits[GRID], self.kw_limits[GRID])]
        for circuit in self.config.circuits:
            nodes.append(Node(circuit.id, circuit.parent, limits[circuit.id], circuit.limit_kw))
        for charger in self.config.chargers:
            cap = charger.max_current_a
            limit_kw = None
            if charger.kind == "dc" and charger.max_power_kw is not None:
                limit_kw = charger.max_power_kw
            nodes.append(Node(charger_node(charger.id), charger.circuit, (cap, cap, cap), limit_kw))
        loads = [
            Load(f"non-ev:{node}", node, tuple((amps,) * steps for amps in phases))
            for node, phases in non_ev.items()
            if any(phases)
        ]
        loads += [
            Load(
                f"fixed:{charger_id}",
                charger_node(charger_id),
                tuple((amps,) * steps for amps in phases),
            )
            for charger_id, phases in fixed.items()
            if any(phases)
        ]
        sessions: list[Session] = []
        index: dict[str, tuple[str, int]] = {}
        for charger_id in steerable:
            charger = self.chargers[charger_id]
            charger_state = state.chargers[charger_id]
            for connector in charger_state.connectors.values():
                session = self._session(
                    charger, charger_state, connector, memory[charger_id], now, now_mono
                )
                if session is not None:
                    sessions.append(session)
                    index[session.id] = (charger_id, connector.connector_id)
        problem = Problem(
            nodes=tuple(nodes),
            sessions=tuple(sessions),
            steps=steps,
            step_s=float(self.control.step_s),
            loads=tuple(loads),
            tariff=self._tariff(now, steps),
            voltage_ln_v=self.config.site.nominal_voltage_v,
        )
        return Built(problem, index, tuple(steerable), fixed, non_ev, measured)

    def effective_limits(self, state: SiteState, now: datetime) -> dict[str, Phases]:
        """Configured limits, lowered by unexpired operator overrides (never raised)."""
        limits = dict(self.limits)
        for node, override in list(state.overrides.items()):
            if override.expires_at <= now:
                del state.overrides[node]
                continue
            if node in limits:
                base = limits[node]
                limits[node] = (
                    min(base[0], override.limit_a[0]),
                    min(base[1], override.limit_a[1]),
                    min(base[2], override.limit_a[2]),
                )
        return limits

    # Chargers.

    def _chargers(
        self, state: SiteState, memory: dict[str, ChargerMemory], now: datetime
    ) -> tuple[dict[str, Phases], dict[str, Phases], list[str]]:
        """Fresh EV draw per charger, fixed-load chargers, and the chargers to steer."""
        ev_fresh: dict[str, Phases] = {}
        fixed: dict[str, Phases] = {}
        steerable: list[str] = []
        max_age = timedelta(seconds=self.control.ev_measurement_max_age_s)
        for charger in self.config.chargers:
            charger_state = state.chargers[charger.id]
            mem = memory.setdefault(charger.id, ChargerMemory())
            draw = ZERO
            for connector in charger_state.connectors.values():
                fresh = (
                    connector.current_a is not None
                    and connector.measured_at is not None
                    and now - connector.measured_at <= max_age
                )
                if fresh:
                    per_phase = [a or 0.0 for a in connector.current_a]
                    site = [0.0, 0.0, 0.0]
                    for k, phase in enumerate(charger.site_phases):
                        site[phase] += per_phase[k] if k < len(per_phase) else 0.0
                    draw = _add(draw, (site[0], site[1], site[2]))
            ev_fresh[charger.id] = draw
            if not charger_state.connected:
                fixed[charger.id] = self._disconnected_budget(charger, mem)
            elif mem.unavailable:
                fixed[charger.id] = draw
            elif mem.uncontrollable:
                fixed[charger.id] = _on_phases(charger.max_current_a, charger.site_phases)
            elif mem.noncompliant:
                fixed[charger.id] = draw
            else:
                steerable.append(charger.id)
        return ev_fresh, fixed, steerable

    def _disconnected_budget(self, charger: ChargerConfig, mem: ChargerMemory) -> Phases:
        # Its last dynamic limit may still be in force until its validity ends; after that the
        # charger holds its fail-safe (installed by this or an earlier run of sitectl).
        amps = charger.failsafe_current_a
        if (
            mem.commanded_a is not None
            and mem.disconnected_at is not None
            and mem.commanded_at is not None
            and mem.disconnected_at - mem.commanded_at < self.control.profile_validity_s
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
    ) -> Session | None:
        session = connector.session
        if session is None:
            return None
        phases = self._phases_in_use(charger, connector, now)
        max_a = charger.max_current_a
        if charger.connector_max_current_a is not None:
            max_a = min(max_a, charger.connector_max_current_a)
        if charger.kind == "dc" and charger.max_power_kw is not None:
            max_a = min(
                max_a, charger.max_power_kw * 1000 / (3 * self.config.site.nominal_voltage_v)
            )
        if session.ev_max_current_a:
            max_a = min(max_a, session.ev_max_current_a)
        if mem.ev_session == session.session_id and mem.ev_cap_a is not None:
            max_a = min(max_a, mem.ev_cap_a)
        csms = self._csms_bound(charger, charger_state, connector, now)
        if csms is not None:
            max_a = min(max_a, csms)
        min_a = charger.min_current_a
        if session.ev_min_current_a:
            min_a = max(min_a, session.ev_min_current_a)
        vehicle = self.fleet.get(session.id_tag_hash or "")
        wanted = session.energy_wanted_kwh
        if wanted is None:
            wanted = (
                vehicle.energy_kwh
                if vehicle and vehicle.energy_kwh is not None
                else self.control.default_energy_kwh
            )
        remaining = max(0.0, wanted - session.energy_wh / 1000)
        departure = session.departure or self._next_time(
            vehicle.departure if vehicle and vehicle.departure else self.control.default_departure,
            now,
        )
        seconds_left = (departure - now).total_seconds()
        departure_step = max(1, math.ceil(seconds_left / self.control.step_s))
        if 0 < seconds_left < self.control.step_s:
            # Leaving within the first step: the LP sees the whole step, so ask for as much
            # more as the step is longer than the time left (the current then delivers the
            # need by the departure, not by the end of the step).
            remaining *= self.control.step_s / max(seconds_left, 1.0)
        paused_at = mem.paused_since.get(connector.connector_id)
        if paused_at is not None and now_mono - paused_at < self.control.min_pause_s:
            remaining = 0.0  # minimum pause dwell: it stays paused this cycle
        if max_a < min_a:
            min_a = max_a = 0.0  # cannot charge within its bounds: blocked
        priority = min(4, vehicle.priority) if vehicle else 0
        slot = f"{charger.id}/{connector.connector_id}"
        return Session(
            id=slot,
            node=charger_node(charger.id),
            slot=slot,
            phases=phases,
            min_a=min_a,
            max_a=max_a,
            energy_kwh=remaining,
            departure_step=departure_step,
            priority=priority,
        )

    def _phases_in_use(
        self, charger: ChargerConfig, connector: ConnectorState, now: datetime
    ) -> tuple[int, ...]:
        rotation = charger.site_phases
        currents = connector.current_a
        fresh = (
            currents is not None
            and connector.measured_at is not None
            and now - connector.measured_at
            <= timedelta(seconds=self.control.ev_measurement_max_age_s)
        )
        if fresh and len(rotation) == 3:
            amps = [a or 0.0 for a in currents]
            peak = max(amps)
            # A vehicle drawing on one phase only is single-phase (its charger L1).
            if peak > 3.0:
                used = [k for k in range(3) if amps[k] > max(1.0, 0.2 * peak)]
                return tuple(rotation[k] for k in used)
        return tuple(rotation)

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

    def _measured(self, meters: MeterSupervisor) -> dict[str, Phases]:
        out: dict[str, Phases] = {}
        for node, device in self.meters.items():
            if device is None:
                continue
            reading = meters.measured(node)
            currents = getattr(reading, "current_a", None)
            if reading is None or currents is None or any(a is None for a in currents):
                continue
            out[node] = (float(currents[0]), float(currents[1]), float(currents[2]))
        return out

    def _non_ev(
        self, measured: dict[str, Phases], ev_fresh: dict[str, Phases]
    ) -> dict[str, Phases]:
        """Non-EV load to place at each circuit (step 0), bottom-up."""
        ev_under: dict[str, Phases] = dict.fromkeys(self.parents, ZERO)
        for charger in self.config.chargers:
            for node in self.config.circuit_path(charger.circuit):
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

    # Time.

    def _next_time(self, hhmm: str, now: datetime) -> datetime:
        hours, minutes = (int(x) for x in hhmm.split(":"))
        local = now.astimezone(self.zone)
        candidate = datetime.combine(local.date(), time(hours, minutes), self.zone)
        if candidate <= local:
            candidate += timedelta(days=1)
        return candidate

    def _tariff(self, now: datetime, steps: int) -> Tariff:
        tariff = self.config.tariff
        if not tariff.periods:
            return Tariff(demand_charge_per_kw=tariff.demand_charge_eur_per_kw)
        starts = sorted(
            ((int(p.start[:2]) * 60 + int(p.start[3:5])), p.eur_per_kwh) for p in tariff.periods
        )
        prices = []
        for step in range(steps):
            local = (now + timedelta(seconds=step * self.control.step_s)).astimezone(self.zone)
            minute = local.hour * 60 + local.minute
            price = starts[-1][1]  # before the first start of the day: yesterday's last
            for start, value in starts:
                if start <= minute:
                    price = value
            prices.append(price)
        return Tariff(tuple(prices), tariff.demand_charge_eur_per_kw)
