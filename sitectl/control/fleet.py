"""Fleet vehicles: which vehicle a session charges, and its need in energy (issue #19.1).

Rules of this module:

- **Binding.** A session is bound to a configured vehicle by its id tag (compared as the hash
  sitectl keeps, `hash_id_tag`), by a VDV 463 request naming a charging point, or by
  `Fleet.bind` (a command or the CSV import). The binding is ``SessionState.vehicle_id``;
  the snapshot reads the vehicle through `FleetIndex`.
- **A SoC target becomes energy** with the battery: ``need = (target − SoC) / 100 ·
  battery_kwh``. The SoC is the charger's latest ``SoC`` measurand (1.6 MeterValues, 2.0.1
  TransactionEvent/MeterValues, parsed by the OCPP observer) — then the session's total need is
  what it delivered plus that — else the SoC at arrival a VDV 463 request gave — then the total
  is that need itself, from the start of the session. Without a SoC or a battery, the
  vehicle's usual ``energy_kwh`` stays a planning assumption, as before.
- **Targets**: the final target is the request's ``maxTargetSoc``, else the vehicle's
  ``max_target_soc``; the minimum likewise. The final target is the session's need
  (``energy_wanted_kwh``), the minimum its ``energy_min_kwh``, which the LP meets first
  (`Session.min_energy_kwh`); the minimum's time is read off the same plan (`predicted`).
- **Who wins**: an operator's ``session_needs`` command (``need_source == "command"``) is
  never overwritten; a need worked out here replaces the vehicle's own (2.0.1) estimate,
  because the depot system and the fleet configuration know the target, the EV only its
  request. A written need is announced as ``session_needs``, as the command does, so the
  control loop plans it at once; a SoC-driven update only when it moves by `RENOTIFY_KWH`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from optimizer.problem import Load, soc_taper
from sitectl.config import Config, VehicleConfig
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import Change, PlanForecast, SessionState, SiteState

__all__ = [
    "RENOTIFY_KWH",
    "Fleet",
    "FleetIndex",
    "VehicleRequest",
    "VehicleTerms",
    "dc_taper",
    "precondition_load",
    "predicted",
]

log = logging.getLogger(__name__)

#: A SoC-driven need that moves less than this (kWh) is written but not announced: a SoC
#: report every minute must not trigger a control cycle every minute.
RENOTIFY_KWH = 1.0


@dataclass(frozen=True, slots=True)
class VehicleTerms:
    """What the snapshot plans a vehicle with (its configuration, its depot system's priority)."""

    id: str
    priority: int
    energy_kwh: float | None
    departure: str | None


class FleetIndex:
    """Finds a session's vehicle for the problem builder (pure lookups).

    Args:
        config: the validated configuration.
    """

    def __init__(self, config: Config) -> None:
        self.by_id = {v.id: v for v in config.fleet.vehicles}
        self.by_tag = {
            hash_id_tag(config.site.id, tag): v for v in config.fleet.vehicles for tag in v.id_tags
        }

    def config_of(self, session: SessionState | None) -> VehicleConfig | None:
        """The configured vehicle of a session: its binding, else its id tag."""
        if session is None:
            return None
        if session.vehicle_id is not None and session.vehicle_id in self.by_id:
            return self.by_id[session.vehicle_id]
        return self.by_tag.get(session.id_tag_hash or "")

    def vehicle(self, session: SessionState | None) -> VehicleTerms | None:
        """The terms the snapshot plans the session's vehicle with, or ``None``."""
        found = self.config_of(session)
        if found is None or session is None:
            return None
        priority = found.priority if session.vehicle_priority is None else session.vehicle_priority
        return VehicleTerms(found.id, priority, found.energy_kwh, found.departure)


@dataclass(slots=True)
class VehicleRequest:
    """What the depot system asked for one vehicle (a VDV 463 ChargingRequest)."""

    vehicle_id: str
    charging_request_id: str
    instruction: str = "Normal"  # Normal | Changed | Terminate
    min_target_soc: float | None = None
    max_target_soc: float | None = None
    arrival_soc: float | None = None
    departure: datetime | None = None
    expected_arrival: datetime | None = None
    priority: int | None = None
    charging_point: str | None = None  # "charger/connector", when the request names one
    charging_process_id: str | None = None
    presystem_id: str | None = None
    received_at: datetime | None = None
    #: An energy target instead of a SoC one (the CSV timetable's "250 kWh"): the session's need.
    energy_kwh: float | None = None
    #: (start, end, kW) to reserve on its connector for preconditioning (`vdv.protocol`).
    preconditioning: tuple[tuple[datetime, datetime, float], ...] = ()
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Targets:
    """A bound vehicle's SoC targets as energy for its session (``None``: not known)."""

    min_kwh: float | None  # total session energy at which the minimum target is reached
    max_kwh: float | None  # ... the final target
    min_soc: float | None
    max_soc: float | None


class Fleet:
    """Binds sessions to vehicles and keeps their needs; subscribes to the state.

    Args:
        config: the validated configuration.
        state: the site state (sessions are changed in place, on the event loop's thread).
    """

    def __init__(self, config: Config, state: SiteState) -> None:
        self.config = config
        self.state = state
        self.index = FleetIndex(config)
        self.by_vdv = {v.vdv_vehicle_id: v for v in config.fleet.vehicles if v.vdv_vehicle_id}
        #: Vehicle id -> the depot system's latest request for it.
        self.requests: dict[str, VehicleRequest] = {}
        self._announced: dict[str, float] = {}  # session id -> the need last announced
        self.unsubscribe = state.subscribe(self._on_change)

    # Public.

    def vehicle_for_vdv(self, vdv_vehicle_id: str) -> VehicleConfig | None:
        """The configured vehicle of a VDV 463 vehicleId (its own id also matches)."""
        return self.by_vdv.get(vdv_vehicle_id) or self.index.by_id.get(vdv_vehicle_id)

    def session_of(self, vehicle_id: str) -> tuple[str, int, SessionState] | None:
        """The running session bound to a vehicle: (charger id, connector id, session)."""
        for charger in self.state.chargers.values():
            for connector in charger.connectors.values():
                found = self.index.config_of(connector.session)
                if found is not None and found.id == vehicle_id and connector.session is not None:
                    return charger.charger_id, connector.connector_id, connector.session
        return None

    def bind(self, vehicle_id: str, charger_id: str, connector_id: int) -> SessionState:
        """Bind the session on a connector to a vehicle and plan it with the vehicle's need.

        Raises:
            KeyError: no such vehicle, charger, connector or session (the message says which).
        """
        if vehicle_id not in self.index.by_id:
            raise KeyError(f"unknown vehicle '{vehicle_id}'")
        charger = self.state.chargers.get(charger_id)
        if charger is None:
            raise KeyError(f"unknown charger '{charger_id}'")
        connector = charger.connectors.get(connector_id)
        if connector is None or connector.session is None:
            raise KeyError(f"no session on charger '{charger_id}' connector {connector_id}")
        previous = self.session_of(vehicle_id)
        if previous is not None and previous[2] is not connector.session:
            previous[2].vehicle_id = None  # one vehicle charges on one connector
        connector.session.vehicle_id = vehicle_id
        log.info("session %s bound to vehicle %s", connector.session.session_id, vehicle_id)
        self.refresh(charger_id, connector_id, force=True)
        return connector.session

    def request(self, request: VehicleRequest) -> None:
        """Take a depot system's request for a vehicle (already validated and resolved)."""
        vehicle = self.index.by_id[request.vehicle_id]
        # A Terminate is kept (until the session ends) so that no SoC report revives the need.
        self.requests[vehicle.id] = request
        if request.charging_point is not None:
            charger_id, _, connector_id = request.charging_point.partition("/")
            connector = self._connector(charger_id, int(connector_id or 0))
            session = connector.session if connector is not None else None
            if session is not None and session.vehicle_id != vehicle.id:
                self.bind(vehicle.id, charger_id, int(connector_id))
        bound = self.session_of(vehicle.id)
        if bound is None:
            return  # applied when it plugs in
        charger_id, connector_id, session = bound
        if request.instruction == "Terminate":
            # The request is withdrawn: nothing more is to be charged for it.
            session.energy_wanted_kwh = session.energy_wh / 1000
            session.energy_min_kwh = None
            session.preconditioning = ()
            session.need_source = "fleet"
            session.vehicle_priority = None
            log.info("vehicle %s: charging request terminated", vehicle.id)
            self.state.notify("session_needs", f"{charger_id}/{connector_id}")
            return
        self.refresh(charger_id, connector_id, force=True)

    def targets(self, session: SessionState, soc: float | None) -> Targets:
        """A session's SoC targets as session energy (what it must have delivered)."""
        vehicle = self.index.config_of(session)
        request = self.requests.get(vehicle.id) if vehicle is not None else None
        if request is not None and request.instruction == "Terminate":
            return Targets(None, None, None, None)
        if request is not None and request.energy_kwh is not None:
            return Targets(None, request.energy_kwh, None, None)
        if vehicle is None or vehicle.battery_kwh is None:
            return Targets(None, None, None, None)
        low = request.min_target_soc if request and request.min_target_soc is not None else None
        high = request.max_target_soc if request and request.max_target_soc is not None else None
        low = vehicle.min_target_soc if low is None else low
        high = vehicle.max_target_soc if high is None else high
        delivered = session.energy_wh / 1000
        if soc is not None:
            base, start = delivered, soc
        elif request is not None and request.arrival_soc is not None:
            base, start = 0.0, request.arrival_soc
        else:
            return Targets(None, None, low, high)

        def energy(target: float | None) -> float | None:
            if target is None:
                return None
            return base + max(0.0, (target - start) / 100 * vehicle.battery_kwh)  # type: ignore[operator]

        return Targets(energy(low), energy(high), low, high)

    def refresh(self, charger_id: str, connector_id: int, force: bool = False) -> None:
        """Work out the bound vehicle's need, departure and priority on one connector."""
        connector = self._connector(charger_id, connector_id)
        session = connector.session if connector is not None else None
        if connector is None or session is None:
            return
        vehicle = self.index.config_of(session)
        if vehicle is None:
            return
        request = self.requests.get(vehicle.id)
        if request is not None and request.instruction == "Terminate":
            return  # withdrawn: its need stays at what was delivered
        changed = force
        if request is not None:
            if request.priority is not None and session.vehicle_priority != request.priority:
                session.vehicle_priority = max(0, min(10, request.priority))
                changed = True
            now = self.state.clock()
            departure = request.departure
            if (
                departure is not None
                and departure > now
                and session.departure != departure
                and session.departure_source != "command"
            ):
                session.departure = departure
                session.departure_source = "fleet"
                changed = True
        if request is not None and session.preconditioning != request.preconditioning:
            session.preconditioning = request.preconditioning
            changed = True
        targets = self.targets(session, connector.soc_percent)
        need = targets.max_kwh
        # The minimum is kept beside an operator's need too (the builder bounds it by the need).
        old_min, session.energy_min_kwh = session.energy_min_kwh, targets.min_kwh
        if (old_min is None) != (targets.min_kwh is None) or (
            old_min is not None
            and targets.min_kwh is not None
            and abs(old_min - targets.min_kwh) >= RENOTIFY_KWH
        ):
            changed = True
        if need is not None and session.need_source != "command":
            last = self._announced.get(session.session_id)
            session.energy_wanted_kwh = need
            session.need_source = "fleet"
            if last is None or abs(last - need) >= RENOTIFY_KWH:
                changed = True
        if changed:
            if session.energy_wanted_kwh is not None:
                self._announced[session.session_id] = session.energy_wanted_kwh
            self.state.notify("session_needs", f"{charger_id}/{connector_id}")

    # State changes.

    def _on_change(self, change: Change) -> None:
        if change.kind in ("session_started", "session_restored"):
            for charger in self.state.chargers.values():
                for connector in charger.connectors.values():
                    session = connector.session
                    if session is not None and session.session_id == change.subject:
                        self._bind_by_tag(charger.charger_id, connector.connector_id, session)
        elif change.kind == "measurement":
            charger_id, _, connector_id = change.subject.partition("/")
            connector = self._connector(charger_id, int(connector_id or 0))
            session = connector.session if connector is not None else None
            known = session is not None and self.index.config_of(session) is not None
            if known and connector.soc_percent is not None:
                self.refresh(charger_id, connector.connector_id)
        elif change.kind == "vehicle_bound":  # the session_needs command named a vehicle
            charger_id, _, connector_id = change.subject.partition("/")
            self.refresh(charger_id, int(connector_id or 0), force=True)
        elif change.kind == "session_ended":
            self._announced.pop(change.subject, None)
            for vehicle_id, request in list(self.requests.items()):
                if request.instruction == "Terminate" and self.session_of(vehicle_id) is None:
                    del self.requests[vehicle_id]  # the next charging process starts afresh

    def _bind_by_tag(self, charger_id: str, connector_id: int, session: SessionState) -> None:
        vehicle = self.index.by_tag.get(session.id_tag_hash or "")
        if vehicle is not None and session.vehicle_id is None:
            session.vehicle_id = vehicle.id
            log.info("session %s is vehicle %s (id tag)", session.session_id, vehicle.id)
        if self.index.config_of(session) is not None:
            self.refresh(charger_id, connector_id, force=True)

    def _connector(self, charger_id: str, connector_id: int):  # type: ignore[no-untyped-def]
        charger = self.state.chargers.get(charger_id)
        return charger.connectors.get(connector_id) if charger is not None else None


def predicted(
    forecast: PlanForecast | None, now: datetime, delivered_kwh: float, target_kwh: float | None
) -> datetime | None:
    """When the plan brings the session's energy to `target_kwh` (linear within a step).

    Beyond the plan (or an unreached target): the forecast's own ready time when it has one
    (a short plan's, at its rate), else ``None``.
    """
    if forecast is None or target_kwh is None:
        return None
    left = target_kwh - delivered_kwh
    if left <= 0:
        return now
    done = 0.0
    for step in forecast.steps:
        energy = step.power_kw * step.duration_s / 3600
        if energy > 0 and done + energy >= left:
            return step.start + timedelta(seconds=step.duration_s * (left - done) / energy)
        done += energy
    return forecast.ready_at


def dc_taper(
    vehicle: VehicleConfig | None,
    soc: float | None,
    full_a: float,
    kwh_per_ah: float,
    within_s: float,
) -> tuple[tuple[float, float], ...]:
    """A DC vehicle's charging curve as LP rows (`optimizer.problem.Session.taper`, issue #21).

    Only where its battery and SoC are known, and only if at ``full_a`` it can reach
    ``taper_from_soc`` within ``within_s`` (the horizon, or its departure if sooner): rows
    that cannot bind are left out, so the loop at hundreds of chargers stays small.

    Args:
        vehicle: its configuration (``battery_kwh``, ``taper_from_soc``, ``taper_share_at_full``).
        soc: its SoC now (%), from the charger.
        full_a: the AC input current per phase at the charger's full output (A).
        kwh_per_ah: battery energy per A·h per phase of that input (kWh, losses taken off).
        within_s: how long the plan can charge it (s).
    """
    if (
        vehicle is None
        or vehicle.battery_kwh is None
        or vehicle.taper_from_soc is None
        or soc is None
        or full_a <= 0
    ):
        return ()
    to_taper_kwh = max(0.0, vehicle.taper_from_soc - soc) / 100 * vehicle.battery_kwh
    if full_a * kwh_per_ah * within_s / 3600 <= to_taper_kwh:
        return ()
    return soc_taper(
        full_a,
        soc,
        vehicle.battery_kwh,
        kwh_per_ah,
        vehicle.taper_from_soc,
        vehicle.taper_share_at_full,
    )


def precondition_load(
    load_id: str,
    session: SessionState | None,
    node: str,
    grid: tuple[datetime, list[float]],
    amps_per_kw: float,
    site_phases: tuple[int, ...],
) -> Load | None:
    """The power a vehicle's depot system reserves for preconditioning, as a load on its
    charger's node (A per phase on the charger's phases, per plan step), or ``None``.

    A step that overlaps a window at all gets its whole power (as limit windows do,
    `control/windows.py`: the reservation errs on the breaker's side); windows add up.

    Args:
        load_id: the session's id (the load is ``precondition:<id>``).
        session: its state (``preconditioning``: (start, end, kW) windows).
        node: its charger's node.
        grid: the plan's start and the end of every step (s from it).
        amps_per_kw: A per phase per kW at the vehicle (the charger's input, its phases).
        site_phases: the charger's site phases.
    """
    windows = session.preconditioning if session is not None else ()
    if not windows:
        return None
    now, ends_s = grid
    amps = [0.0] * len(ends_s)
    start_s = 0.0
    for k, end_s in enumerate(ends_s):
        step_start, step_end = now + timedelta(seconds=start_s), now + timedelta(seconds=end_s)
        for begin, end, kw in windows:
            if begin < step_end and end > step_start and kw > 0:
                amps[k] += kw * amps_per_kw
        start_s = end_s
    if not any(amps):
        return None
    row, zero = tuple(amps), (0.0,) * len(amps)
    return Load(
        f"precondition:{load_id}",
        node,
        tuple(row if p in site_phases else zero for p in range(3)),  # type: ignore[arg-type]
    )
