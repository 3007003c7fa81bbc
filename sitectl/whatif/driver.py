"""The what-if driver: sitectl's own control loop, cycled in simulated time.

The production parts, wired as ``sitectl run`` wires them (`sitectl.app`): a `SiteState` with
injected clocks, the `StateObserver` the chargers' messages go to, the `Fleet` that binds
sessions to vehicles and turns SoC targets into needs, and the `ControlLoop` — whose
`ControlLoop.turn` (what `run` calls every period) is called here directly: snapshot
(`ProblemBuilder`), HiGHS allocator with its budget, fallback, verifier, the dispatcher's
rules (minimum current, rounding, deadband, decreases first) and the profiles it builds for
each charger's OCPP version. Nothing of the control path is re-implemented; the field around
it is simulated (`sitectl.whatif.depot`, `sitectl.whatif.physics`).

Time moves in steps of ``step_s`` (30 s): each step's arrivals and departures happen, the
meters read, a cycle runs if one is due, then the vehicles charge through the step under the
limits in force. The running loop cycles every ``control.period_s``; most of those cycles
re-send what the last one sent, so a cycle runs here only when it can change something
(event-driven):

- ``event``: the loop's own triggers — a session started or ended, a need changed, a meter
  read above a limit (`ControlLoop.triggered`);
- ``plan``: every plan step (``control.step_s``) on the wall-clock grid, so tariff
  boundaries and the receding horizon move on as they do live;
- ``building``: the building load rose since the last cycle and a circuit reads within 1 A
  of its limit (the running loop would lower the limits within a period);
- follow-ups the loop's own timers ask for: ``deferred`` (a large decrease held the cycle's
  increases back: one control period later, inside the step; after ``ramp_down_s`` when the
  lowered chargers' vehicles left, as their old limits stay budgeted), ``pause`` (sessions paused
  for their minimum dwell are planned again when it ends), ``learn`` (a vehicle drawing well
  below its limit has its cap learnt after ``ev_learn_s``), ``hold`` (the non-EV peak hold
  lets a fallen building load go after ``non_ev_hold_s``). Increases held back and pauses
  count from `DEFERRED_A` (or `DEFERRED_SHARE` of the connection): a few 6 A shares the plan
  shuffles go out with the next cycle. A follow-up but a deferral's waits for an arrival or
  departure due within `SOON_S`.

``every_step`` runs a cycle every step instead (slower; for cross-checks).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from optimizer.allocation import Allocation
from optimizer.binding import KW, PEAK, PHASE, step0_binding
from sitectl.config import Config
from sitectl.control.fleet import Fleet
from sitectl.control.loop import ControlLoop
from sitectl.control.plans import READY_TOL_KWH
from sitectl.control.snapshot import Built
from sitectl.ocpp.observe import StateObserver
from sitectl.state import Change, SiteState
from sitectl.whatif.depot import SimField
from sitectl.whatif.inputs import BuildingLoad
from sitectl.whatif.physics import RAMPS, Ramps
from sitectl.whatif.record import CycleNote, Recording, VisitRecord
from sitectl.whatif.timetable import Visit

__all__ = ["SimOptions", "Simulation", "simulate"]

log = logging.getLogger(__name__)

#: The monotonic clock at the start of the run (any value; never compared with the real one).
MONO_START = 1_000_000.0
#: Commissioning before the run: chargers connect and take their fail-safe, meters are trusted.
COMMISSION_S = 60.0
#: A circuit this close to its limit (A) after the building load rose gets a cycle at once.
BUILDING_MARGIN_A = 1.0
#: A building load that fell by this much (A per phase, or this share of the limit) is
#: planned with again once the non-EV hold lets it go.
BUILDING_FALL_A = 2.0
BUILDING_FALL_SHARE = 0.02
#: Increases a large decrease held back (and pauses) get a cycle of their own from this size
#: (A per phase, summed: more than one vehicle's minimum; or this share of the grid
#: connection's limit, so a big depot's plan shuffling a few 6 A shares does not).
DEFERRED_A = 6.5
DEFERRED_SHARE = 0.01
#: Cycles a control period apart inside one step while increases stay held back.
MAX_CHAINED = 3
#: A follow-up (but a deferral's) waits for an arrival or departure due within this (s).
SOON_S = 120.0
#: What learn_ev (`ChargerMemory.learn_ev`) needs to see to learn a vehicle's cap (A).
LEARN_GAP_A = 4.0


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How a run is simulated.

    Args:
        start: when it starts (UTC-aware).
        days: how long it runs.
        step_s: the simulation step (the vehicles, meters and events move on by it).
        every_step: a control cycle every step instead of when one can change something.
        ramps: how fast the vehicles start and follow their limits.
        follow_ups: which follow-up cycles run (see the module docstring).
    """

    start: datetime
    days: float = 1.0
    step_s: float = 30.0
    every_step: bool = False
    ramps: Ramps = RAMPS
    follow_ups: frozenset[str] = frozenset({"deferred", "pause", "learn", "hold"})

    @property
    def steps(self) -> int:
        return max(1, round(self.days * 86400 / self.step_s))


class Simulation:
    """One what-if run of a configuration over a timetable.

    Args:
        config: the site (its fleet holding every timetable vehicle, `inputs.with_vehicles`).
        visits: the stays to simulate (`timetable.visits`).
        building: the non-EV load per circuit.
        options: start, length, step.
    """

    def __init__(
        self, config: Config, visits: list[Visit], building: BuildingLoad, options: SimOptions
    ) -> None:
        self.config = config
        self.options = options
        self.start = options.start
        self.dt = float(options.step_s)
        self.now = options.start - timedelta(seconds=COMMISSION_S)
        self.mono = MONO_START - COMMISSION_S
        self.state = SiteState(config, clock=lambda: self.now, monotonic=lambda: self.mono)
        self.observer = StateObserver(
            self.state, config.ocpp.profile_stack_levels, config.ocpp.profile_id_base
        )
        # The fleet subscribes before the loop, as in `sitectl.app`: a need it works out on a
        # session's start is in place when the loop is triggered.
        self.fleet = Fleet(config, self.state)
        self.field = SimField(config, self.observer, self.fleet, ramps=options.ramps)
        self.field.reserved = {
            v.trip.charger for v in visits if v.trip.charger not in (None, "ac", "dc")
        }  # type: ignore[misc]
        self.loop = ControlLoop(
            config,
            self.state,
            self.field.set_profile,
            wall_clock=lambda: self.now,
            monotonic=lambda: self.mono,
        )
        self.building = building
        self.volts = config.site.nominal_voltage_v
        nodes = self.field.nodes
        limits = config.circuit_limits_a()
        kw_limits = {"grid": config.site.limit_kw, **{c.id: c.limit_kw for c in config.circuits}}
        steps = options.steps
        self.rec = Recording(
            start=options.start,
            step_s=self.dt,
            nodes=nodes,
            limits_a=np.array([limits[n] for n in nodes], dtype=float),
            kw_limits=[kw_limits[n] for n in nodes],
            currents=np.zeros((steps, len(nodes), 3)),
            building_kw=np.zeros(steps),
            ev_kw=np.zeros(steps),
            grid_kw=np.zeros(steps),
            bays=len(self.field.bays),
        )
        self.pending = sorted(visits, key=lambda v: (v.arrival, v.id))
        self.waiting: list[VisitRecord] = []
        self.records: dict[str, VisitRecord] = {}
        self.on_bay: dict[int, VisitRecord] = {}  # bay index -> its visit's record
        self.follow_ups: list[tuple[datetime, str]] = []
        self.learning: set[str] = set()
        self.building_at_cycle = np.zeros((len(nodes), 3))
        self.alarms: dict[str, int] = {}
        self.state.subscribe(self._count_alarm)
        #: Called after every completed cycle with the simulation (its state, loop and field
        #: as the cycle left them): for judges that sample plans and reasons (bench/bus_depot.py).
        self.observers: list[Callable[[Simulation], None]] = []

    def _count_alarm(self, change: Change) -> None:
        if change.kind == "alarm":
            code = change.subject.partition(":")[0]
            self.alarms[code] = self.alarms.get(code, 0) + 1

    def _set_time(self, at: datetime) -> None:
        self.now = at
        self.mono = MONO_START + (at - self.start).total_seconds()

    # The run.

    async def run(self) -> Recording:
        """Simulate the whole run; returns what it recorded (with its wall time)."""
        wall = time.perf_counter()
        await self._commission()
        steps = self.options.steps
        for k in range(steps):
            at = self.start + timedelta(seconds=k * self.dt)
            self._set_time(at)
            self._departures(at)
            self._arrivals(at)
            building = self._building_a(at)
            currents = self.field.node_currents(self.field.levels(), building)
            self.field.read_meters(self.state, currents, at, self.mono)
            reason = self._due(at, building, currents)
            self._begin_step()
            offset, chained = 0.0, 0
            while True:
                delay = None
                if reason is not None:
                    delay = await self._cycle(reason, building)
                # Increases a decrease held back go out when the live loop's next cycles can
                # send them: inside the step while it lasts, else at a later step's start.
                end = self.dt
                if delay is not None and chained < MAX_CHAINED and offset + delay < self.dt:
                    end, chained = offset + delay, chained + 1
                elif delay is not None:
                    later = self.now + timedelta(seconds=delay)
                    heapq.heappush(self.follow_ups, (later, "deferred"))
                self._advance(at, offset, end, building)
                if end >= self.dt:
                    break
                offset, reason = end, "deferred"
                self._set_time(at + timedelta(seconds=offset))
                currents = self.field.node_currents(self.field.levels(), building)
                self.field.read_meters(self.state, currents, self.now, self.mono)
            self._end_step(k, at, building)
        end = self.start + timedelta(seconds=steps * self.dt)
        self._set_time(end)
        self._departures(end)
        for record in [*self.on_bay.values(), *self.waiting]:
            record.soc_end = self._soc(record)
        self.rec.visits = sorted(self.records.values(), key=lambda r: (r.visit.arrival, r.visit.id))
        self.rec.wall_s = time.perf_counter() - wall
        return self.rec

    async def _commission(self) -> None:
        """Chargers connect and boot, meters read until trusted, fail-safes go in."""
        self.field.connect(self.now)
        building = self._building_a(self.start)
        currents = self.field.node_currents(self.field.levels(), building)
        for _ in range(self.config.control.good_readings_to_recover):
            self.field.read_meters(self.state, currents, self.now, self.mono)
        await self.loop.turn()
        for _ in range(1000):  # the installs run as tasks on this event loop
            if all(m.failsafe_installed for m in self.loop.memory.values()):
                break
            await asyncio.sleep(0)
        else:
            raise RuntimeError("the simulated chargers did not take their fail-safe profiles")
        self._set_time(self.start)

    def _building_a(self, at: datetime) -> np.ndarray:
        """Each node's own building load now (nodes x 3, A per phase, balanced)."""
        out = np.zeros((len(self.field.nodes), 3))
        for circuit in self.building.circuits:
            amps = self.building.kw(circuit, at) * 1000 / (3 * self.volts)
            out[self.field.node_index[circuit], :] = amps
        return out

    def _due(self, at: datetime, building: np.ndarray, currents: np.ndarray) -> str | None:
        """Why a cycle runs now, or ``None``."""
        if self.options.every_step:
            return "step"
        if self.loop.triggered:
            return "event"
        plan = float(self.config.control.step_s)
        stamp = at.timestamp()
        if math.floor(stamp / plan) != math.floor((stamp - self.dt) / plan):
            return "plan"
        while self.follow_ups and self.follow_ups[0][0] <= at:
            _, reason = heapq.heappop(self.follow_ups)
            self.follow_ups = [f for f in self.follow_ups if f[0] > at]
            heapq.heapify(self.follow_ups)
            if reason not in self.options.follow_ups:
                continue
            if reason != "deferred" and self._event_within(at, SOON_S):
                # An arrival or departure is due in a moment: its cycle serves as well.
                continue
            return reason
        risen = (self.field.building_under @ (building - self.building_at_cycle)) > 0.05
        close = currents > self.rec.limits_a - BUILDING_MARGIN_A
        if bool((risen & close).any()):
            return "building"
        return None

    def _event_within(self, at: datetime, seconds: float) -> bool:
        """Whether an arrival or a departure is scheduled within `seconds` after `at`."""
        until = at + timedelta(seconds=seconds)
        if self.pending and self.pending[0].arrival <= until:
            return True
        return any(r.visit.departure <= until for r in self.on_bay.values())

    async def _cycle(self, reason: str, building: np.ndarray) -> float | None:
        """Run one control cycle now; returns, when it held increases back, how long until
        the live loop would send them (s)."""
        self.field.report(self.now, self.mono)
        self.learning.clear()
        # Each connector's share before the cycle (A per phase): what a pause takes away.
        self._before = {
            (charger_id, connector): amps
            for charger_id, mem in self.loop.memory.items()
            for connector, amps in (
                mem.commanded_connectors.items()
                if mem.commanded_connectors
                else [(1, mem.commanded_a or 0.0)]
            )
        }
        completed = await self.loop.turn()
        self.rec.reasons[reason] += 1
        last = self.loop.last
        if not completed or last is None:
            self.rec.reasons["failed"] += 1
            return None
        built, allocation, report = last
        found = allocation.binding or step0_binding(built.problem, allocation)
        binding: set[tuple[str, str, int | None]] = set()
        for holds in found.holds.values():
            for hold in holds:
                if hold.kind in (PHASE, KW) and hold.node and not hold.node.startswith("charger:"):
                    binding.add((hold.node, hold.kind, hold.phase))
                elif hold.kind == PEAK:
                    binding.add(("demand charge", PEAK, None))
        self.rec.cycles.append(
            CycleNote(
                self.now,
                reason,
                allocation.method,
                allocation.solve_s,
                len(built.problem.sessions),
                tuple(sorted(binding, key=lambda b: (b[0], b[1], -1 if b[2] is None else b[2]))),
                self._commanded_over(building),
            )
        )
        for observe in self.observers:
            observe(self)
        deferred = self._deferred_a(built, allocation) if report.deferred_increases else 0.0
        self._plan_follow_ups(building)
        self.building_at_cycle = building
        # Resumes at the minimum current held back while the plan shuffles a few 6 A shares
        # are not worth a cycle each (they go out with the next one); real increases are.
        if deferred < self._worth_a():
            return None
        period = self.config.control.period_s
        # A charger lowered because its vehicle left sends no more measurements: its old limit
        # stays budgeted for ramp_down_s (`ProblemBuilder._ramping`), and only after it can
        # the loop raise the others. One lowered under a vehicle is seen lower a period later.
        freed = vacated = 0.0
        for command in report.sent:
            if command.kind != "decrease" or command.previous_a is None:
                continue
            amps = command.previous_a - command.limit_a
            freed += amps
            if all(bay.charge is None for bay in self.field.by_charger[command.charger_id]):
                vacated += amps
        if freed > 0 and vacated >= freed / 2:
            return self.config.control.ramp_down_s + period
        return period

    def _worth_a(self) -> float:
        """Held-back current that is worth a cycle of its own (A per phase, summed)."""
        return max(DEFERRED_A, DEFERRED_SHARE * float(self.rec.limits_a[0].min()))

    def _commanded_over(self, building: np.ndarray) -> float:
        """How far any node's commanded limits (on the phases a vehicle there can draw) plus
        its building load exceed its limit (A; ≤ 0 when they do not)."""
        amps = np.zeros((len(self.field.bays), 3))
        shared = self.field.shared_limits()
        for b, bay in enumerate(self.field.bays):
            charge = bay.charge
            if charge is None:
                continue
            point = bay.point
            limit = shared.get(b, bay.limit)
            limit = point.max_a if limit is None else limit
            limit_a = charge.ac_amps(limit) if point.dc else min(limit, point.max_a)
            if charge.phases == 1:
                amps[b, 0] = limit_a
            else:
                amps[b, :] = limit_a
        total = self.field.node_currents(amps, building)
        return float((total - self.rec.limits_a).max())

    def _deferred_a(self, built: Built, allocation: Allocation) -> float:
        """How much the cycle wanted to raise limits by and held back (A per phase, summed)."""
        wanted: dict[str, float] = {}
        for session_id, amps in allocation.dispatch_a.items():
            charger_id, _ = built.sessions[session_id]
            wanted[charger_id] = (
                wanted.get(charger_id, 0.0) + amps + built.floors.get(session_id, 0.0)
            )
        memory = self.loop.memory
        return sum(max(0.0, a - (memory[c].commanded_a or 0.0)) for c, a in wanted.items())

    def _plan_follow_ups(self, building: np.ndarray) -> None:
        """The cycles the loop's own timers will want (see the module docstring)."""
        control = self.config.control
        step = timedelta(seconds=self.dt)
        paused_a = 0.0
        for charger_id, mem in self.loop.memory.items():
            for connector, since in mem.paused_since.items():
                if since == self.mono:  # paused by this cycle
                    paused_a += self._before.get((charger_id, connector), 0.0)
            if control.ev_learn_s <= 0 or mem.ev_cap_a is not None or mem.commanded_a is None:
                continue
            bays = self.field.by_charger[charger_id]
            charge = bays[0].charge if len(bays) == 1 else None
            if charge is None:
                continue
            # What it would take at its limit once ramped: a vehicle still starting or
            # ramping is not one whose cap can be learnt.
            steady = charge.ac_amps(charge.target(bays[0].limit))
            if mem.commanded_a - steady < LEARN_GAP_A:
                continue
            if mem.ev_unused_since is None:
                at = self.now + step
            else:
                at = self.now + timedelta(
                    seconds=mem.ev_unused_since + control.ev_learn_s - self.mono
                )
                at = max(at, self.now + step)
            if charger_id not in self.learning:
                self.learning.add(charger_id)
                heapq.heappush(self.follow_ups, (at, "learn"))
        if control.min_pause_s > 0 and paused_a >= self._worth_a():
            # Sessions paused for their minimum dwell are planned again when it ends (the
            # live loop's next cycle after it); a few 6 A shares shuffled are not worth it.
            pause = timedelta(seconds=control.min_pause_s)
            heapq.heappush(self.follow_ups, (self.now + pause, "pause"))
        fell = self.building_at_cycle - building
        limits = self.rec.limits_a
        if bool((fell >= np.maximum(BUILDING_FALL_A, BUILDING_FALL_SHARE * limits)).any()):
            hold = timedelta(seconds=control.effective_non_ev_hold_s) + step
            heapq.heappush(self.follow_ups, (self.now + hold, "hold"))

    # The field.

    def _record(self, visit: Visit) -> VisitRecord:
        trip = visit.trip
        record = VisitRecord(visit, trip.need_kwh, trip.battery, trip.start_soc)
        self.records[visit.id] = record
        return record

    def _arrivals(self, at: datetime) -> None:
        while self.pending and self.pending[0].arrival <= at:
            self.waiting.append(self._record(self.pending.pop(0)))
        still: list[VisitRecord] = []
        for record in self.waiting:
            bay = self.field.free_bay(record.visit)
            if bay is None:
                still.append(record)
                continue
            self.field.plug_in(bay, record.visit, at)
            record.bay, record.plugged_at = bay.key, at
            self.on_bay[self.field.bays.index(bay)] = record
        self.waiting = still

    def _departures(self, at: datetime) -> None:
        for b, record in list(self.on_bay.items()):
            if record.visit.departure <= at:
                bay = self.field.bays[b]
                record.soc_end = self._soc(record)
                record.left_at = record.visit.departure
                self.field.unplug(bay, at)
                del self.on_bay[b]
        for record in list(self.waiting):
            if record.visit.departure <= at:
                record.left_at = record.visit.departure  # it never got a charger
                record.soc_end = record.arrival_soc
                self.waiting.remove(record)

    def _soc(self, record: VisitRecord) -> float:
        for b, found in self.on_bay.items():
            if found is record and self.field.bays[b].charge is not None:
                return self.field.bays[b].charge.vehicle.soc  # type: ignore[union-attr]
        return record.soc_end if record.soc_end is not None else record.arrival_soc

    def _begin_step(self) -> None:
        self._sum = np.zeros((len(self.field.nodes), 3))
        self._ev_sum = 0.0
        self._step_start = {
            b: (bay.charge.energy_kwh if bay.charge is not None else 0.0)
            for b, bay in enumerate(self.field.bays)
            if b in self.on_bay
        }

    def _advance(self, at: datetime, offset: float, end: float, building: np.ndarray) -> None:
        """The vehicles charge from `offset` to `end` (s into the step at `at`)."""
        span = end - offset
        if span <= 0:
            return
        until: dict[int, float] = {}
        before: dict[int, float] = {}
        for b, record in self.on_bay.items():
            left = (record.visit.departure - at).total_seconds() - offset
            if left < span:
                until[b] = max(0.0, left)
            charge = self.field.bays[b].charge
            before[b] = charge.energy_kwh if charge is not None else 0.0
        bay_amps = self.field.step(span, until)
        self._sum += self.field.node_currents(bay_amps, building) * span
        self._ev_sum += float(bay_amps.sum()) * span
        for b, record in self.on_bay.items():
            charge = self.field.bays[b].charge
            if charge is None:
                continue
            got = charge.energy_kwh - before[b]
            record.energy_kwh = charge.energy_kwh
            target = record.need_kwh - max(READY_TOL_KWH, record.tolerance_kwh)
            if record.ready_at is None and charge.energy_kwh >= target:
                run = until.get(b, span)
                share = (target - before[b]) / got if got > 0 else 0.0
                moment = offset + max(0.0, min(1.0, share)) * run
                record.ready_at = at + timedelta(seconds=moment)

    def _end_step(self, k: int, at: datetime, building: np.ndarray) -> None:
        """Record step `k`: the mean currents over it, each vehicle's SoC and power."""
        rec = self.rec
        currents = self._sum / self.dt
        rec.currents[k] = currents
        rec.ev_kw[k] = self._ev_sum / self.dt * self.volts / 1000
        rec.building_kw[k] = float(building.sum()) * self.volts / 1000
        rec.grid_kw[k] = float(currents[0].sum()) * self.volts / 1000
        for b, record in self.on_bay.items():
            charge = self.field.bays[b].charge
            if charge is None:
                continue
            got = charge.energy_kwh - self._step_start.get(b, 0.0)
            record.trace.append((k, charge.vehicle.soc, got * 3600 / self.dt))


def simulate(
    config: Config, visits: list[Visit], building: BuildingLoad, options: SimOptions
) -> tuple[Recording, dict[str, int]]:
    """Run one simulation to its end (its own event loop); returns the recording and the
    alarms the controller raised (code -> how often)."""
    simulation = Simulation(config, visits, building, options)
    recording = asyncio.run(simulation.run())
    return recording, simulation.alarms
