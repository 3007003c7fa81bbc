"""The simulated field of a what-if: bays (connectors) with vehicles, meters, and what sitectl
hears of them.

No sockets: what the chargers would send goes to sitectl's own `StateObserver` as the OCPP 1.6
messages it reads from a charger link (BootNotification, StatusNotification,
Start/StopTransaction, MeterValues with per-phase currents, power, the energy register and, on
DC, the vehicle's SoC), and the meters' readings go into the state as the Modbus pool puts
them there. What sitectl sends (SetChargingProfile, built by its dispatcher for each charger's
OCPP version) is read back the way a charger reads it: per connector, the highest stack level
wins, a charger-wide limit bounds every connector. A dynamic limit is held until it is
replaced: the running loop refreshes it every period, which the simulation does not repeat
between its cycles (it would send the same limit again).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from devices.meter import Quality, Reading
from sitectl.config import GRID, ChargerConfig, Config
from sitectl.control.fleet import Fleet, VehicleRequest
from sitectl.control.snapshot import efficiency
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.router import Origin, RequestSeen, ResponseSeen
from sitectl.whatif.inputs import sim_tag
from sitectl.whatif.physics import RAMPS, Charge, ChargePoint, Ramps, SimVehicle
from sitectl.whatif.timetable import Visit

__all__ = ["Bay", "SimField"]

#: A vehicle's AC current per phase when the timetable does not say.
DEFAULT_VEHICLE_MAX_A = 32.0


@dataclass(frozen=True, slots=True)
class _Link:
    """What the observer reads of a charger link."""

    identity: str
    version: str


@dataclass
class Bay:
    """One connector and the vehicle on it, if any."""

    charger: ChargerConfig
    connector_id: int
    point: ChargePoint
    index: int  # the charger's position in the configuration
    charge: Charge | None = None
    visit: Visit | None = None
    transaction_id: str | None = None
    register_wh: float = 0.0
    #: The limit it applies (A per phase for AC, kW of output for DC); None: no profile.
    limit: float | None = None
    own_limit: float | None = None  # its connector's own profile (without the charger's)
    amps: float = 0.0  # the mean AC current per phase over the last step
    plugged_at: datetime | None = None
    reported_mono: float | None = None  # its last MeterValues (monotonic)
    reported_level: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.charger.id}/{self.connector_id}"


@dataclass
class SimField:
    """Every bay of the depot, the meters over them, and sitectl's observer in front.

    Args:
        config: the site (with the timetable's vehicles in ``fleet.vehicles``).
        observer: sitectl's observer of the same state the control loop reads.
        fleet: sitectl's fleet (binds sessions, keeps their needs).
    """

    config: Config
    observer: StateObserver
    fleet: Fleet
    bays: list[Bay] = field(default_factory=list)
    #: Chargers and connectors ("ID", "ID/2") that timetable rows name.
    reserved: set[str] = field(default_factory=set)
    ramps: Ramps = RAMPS
    #: Per charger: (connector, stack level) -> (limit, unit) of the profiles it holds.
    profiles: dict[str, dict[tuple[int, int], tuple[float, str]]] = field(default_factory=dict)
    _ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        volts = self.config.site.nominal_voltage_v
        self.by_charger: dict[str, list[Bay]] = {}
        for index, charger in enumerate(self.config.chargers):
            max_a = charger.max_current_a
            if charger.connector_max_current_a is not None:
                max_a = min(max_a, charger.connector_max_current_a)
            point = ChargePoint(
                dc=charger.kind == "dc",
                phases=charger.phases,
                max_a=max_a,
                max_kw=charger.max_power_kw,
                efficiency=efficiency(charger),
                voltage_v=volts,
            )
            bays = [Bay(charger, n, point, index) for n in range(1, charger.connectors + 1)]
            self.bays += bays
            self.by_charger[charger.id] = bays
            self.profiles[charger.id] = {}
        #: Multi-connector chargers: (id, index of their first bay, their bays).
        self.multi: list[tuple[str, int, list[Bay]]] = []
        first = 0
        for charger in self.config.chargers:
            bays = self.by_charger[charger.id]
            if len(bays) > 1:
                self.multi.append((charger.id, first, bays))
            first += len(bays)
        self.caps: dict[str, float | None] = {}
        self.links = {c.id: _Link(c.id, c.ocpp_version) for c in self.config.chargers}
        # Nodes (grid, then circuits) and which bays draw through each, per site phase.
        self.nodes = [GRID, *(c.id for c in self.config.circuits)]
        self.node_index = {node: k for k, node in enumerate(self.nodes)}
        # phase_map[b] is (3 x 3): bay b's charger phases -> site phases.
        self.through = np.zeros((len(self.nodes), len(self.bays)))
        self.rotation = np.zeros((len(self.bays), 3, 3))
        for b, bay in enumerate(self.bays):
            for node in self.config.circuit_path(bay.charger.circuit):
                self.through[self.node_index[node], b] = 1.0
            for k, phase in enumerate(bay.charger.site_phases):
                self.rotation[b, k, phase] = 1.0
        self.building_under = np.zeros((len(self.nodes), len(self.nodes)))
        for node in self.nodes:
            for above in self.config.circuit_path(node):
                self.building_under[self.node_index[above], self.node_index[node]] = 1.0
        self.meter_of: dict[str, str] = {}
        if self.config.site.meter:
            self.meter_of[GRID] = self.config.site.meter
        for circuit in self.config.circuits:
            if circuit.meter:
                self.meter_of[circuit.id] = circuit.meter
        self.phase_maps = {d.name: d.site_phases for d in self.config.devices}

    # What the chargers say.

    def _send(self, charger_id: str, events: list[Any]) -> None:
        self.observer.link_events(self.links[charger_id], events)  # type: ignore[arg-type]

    def _msg(self) -> str:
        return f"sim-{next(self._ids)}"  # type: ignore[call-overload]

    def connect(self, now: datetime) -> None:
        """Every charger connects, boots and reports its connectors available."""
        stamp = now.isoformat()
        for charger in self.config.chargers:
            self.observer.link_charger(self.links[charger.id], True)  # type: ignore[arg-type]
            boot = ResponseSeen(
                Origin.CHARGER,
                self._msg(),
                "BootNotification",
                {
                    "chargePointVendor": "sitectl-whatif",
                    "chargePointModel": "SimCharger",
                    "firmwareVersion": "1.0",
                },
                {"status": "Accepted", "interval": 300, "currentTime": stamp},
            )
            events: list[Any] = [boot]
            for bay in self.by_charger[charger.id]:
                events.append(self._status(bay, "Available", stamp))
            self._send(charger.id, events)

    def _status(self, bay: Bay, status: str, stamp: str) -> RequestSeen:
        return RequestSeen(
            Origin.CHARGER,
            self._msg(),
            "StatusNotification",
            {
                "connectorId": bay.connector_id,
                "status": status,
                "errorCode": "NoError",
                "timestamp": stamp,
            },
        )

    def free_bay(self, visit: Visit) -> Bay | None:
        """Where a vehicle arriving now plugs in: its named charger, else the first free."""
        wanted = visit.trip.charger
        if wanted is None or wanted in ("ac", "dc"):
            # Bays no timetable row names first: those are kept for their own vehicles.
            free = [
                b
                for b in self.bays
                if b.charge is None and (wanted is None or b.point.dc == (wanted == "dc"))
            ]
            free.sort(key=lambda b: b.key in self.reserved or b.charger.id in self.reserved)
            return free[0] if free else None
        charger_id, _, connector = wanted.partition("/")
        for bay in self.by_charger[charger_id]:
            if bay.charge is None and (not connector or bay.connector_id == int(connector)):
                return bay
        return None

    def plug_in(self, bay: Bay, visit: Visit, now: datetime) -> None:
        """A vehicle arrives: its depot system's request, then Preparing, a transaction,
        Charging — as a charger and a VDV 463 presystem would tell sitectl."""
        trip = visit.trip
        vehicle = SimVehicle(
            battery_kwh=trip.battery,
            soc=trip.start_soc,
            max_kw=trip.max_kw,
            phases=trip.phases,
            max_a=trip.max_a or DEFAULT_VEHICLE_MAX_A,
        )
        if trip.max_kw is not None and not bay.point.dc:
            ac_a = trip.max_kw * 1000 / (trip.phases * bay.point.voltage_v)
            vehicle.max_a = min(vehicle.max_a, ac_a)
        bay.charge = Charge(vehicle, bay.point, self.ramps)
        bay.visit = visit
        bay.plugged_at = now
        request = VehicleRequest(
            trip.vehicle,
            f"urn:sitectl:whatif:{visit.id}",
            departure=visit.departure,
            received_at=now,
            charging_point=None,
        )
        if trip.energy_kwh is not None:
            request.energy_kwh = trip.energy_kwh
        else:
            request.arrival_soc = trip.start_soc
            request.max_target_soc = trip.target_soc
        self.fleet.request(request)
        stamp = now.isoformat()
        bay.transaction_id = str(next(self._ids))  # type: ignore[call-overload]
        start = ResponseSeen(
            Origin.CHARGER,
            self._msg(),
            "StartTransaction",
            {
                "connectorId": bay.connector_id,
                "idTag": sim_tag(trip.vehicle),
                "meterStart": round(bay.register_wh),
                "timestamp": stamp,
            },
            {"transactionId": bay.transaction_id, "idTagInfo": {"status": "Accepted"}},
        )
        charger_id = bay.charger.id
        self._send(charger_id, [self._status(bay, "Preparing", stamp)])
        self._send(charger_id, [start])
        self._send(charger_id, [self._status(bay, "Charging", stamp)])

    def unplug(self, bay: Bay, now: datetime) -> None:
        """The vehicle leaves: StopTransaction, Available."""
        stamp = now.isoformat()
        stop = RequestSeen(
            Origin.CHARGER,
            self._msg(),
            "StopTransaction",
            {
                "transactionId": bay.transaction_id,
                "meterStop": round(bay.register_wh),
                "timestamp": stamp,
                "reason": "EVDisconnected",
            },
        )
        self._send(bay.charger.id, [stop, self._status(bay, "Available", stamp)])
        bay.charge = bay.visit = bay.transaction_id = bay.plugged_at = None
        bay.amps, bay.reported_mono = 0.0, None

    def report(self, now: datetime, mono: float) -> None:
        """MeterValues from every bay with a vehicle (what it draws now); a bay that reported
        less than the MeterValues interval ago, drawing the same, has nothing new to say."""
        stamp = now.isoformat()
        interval = self.config.ocpp.meter_values_interval_s or 10
        for bay in self.bays:
            charge = bay.charge
            if charge is None:
                continue
            if (
                bay.reported_mono is not None
                and mono - bay.reported_mono < interval
                and abs(charge.level - bay.reported_level) < 0.05
            ):
                continue
            bay.reported_mono, bay.reported_level = mono, charge.level
            values: list[dict[str, Any]] = [
                {
                    "value": f"{bay.register_wh:.0f}",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                }
            ]
            if bay.point.dc:
                values.append(
                    {
                        "value": f"{charge.level * 1000:.0f}",
                        "measurand": "Power.Active.Import",
                        "unit": "W",
                    }
                )
                values.append(
                    {"value": f"{charge.vehicle.soc:.1f}", "measurand": "SoC", "unit": "Percent"}
                )
            else:
                amps = charge.level
                phases = charge.phases
                shown = ("L1",) if bay.point.phases == 1 else ("L1", "L2", "L3")
                for k, phase in enumerate(shown):
                    value = amps if k < phases else 0.0
                    values.append(
                        {
                            "value": f"{value:.1f}",
                            "measurand": "Current.Import",
                            "phase": phase,
                            "unit": "A",
                        }
                    )
                watts = amps * phases * bay.point.voltage_v
                values.append(
                    {"value": f"{watts:.0f}", "measurand": "Power.Active.Import", "unit": "W"}
                )
            payload = {
                "connectorId": bay.connector_id,
                "transactionId": bay.transaction_id,
                "meterValue": [{"timestamp": stamp, "sampledValue": values}],
            }
            self._send(
                bay.charger.id, [RequestSeen(Origin.CHARGER, self._msg(), "MeterValues", payload)]
            )

    # What sitectl sends.

    async def set_profile(self, charger_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """SetChargingProfile as a charger takes it (always Accepted)."""
        if "csChargingProfiles" in payload:
            connector = int(payload["connectorId"])
            profile = payload["csChargingProfiles"]
            schedule = profile["chargingSchedule"]
        else:
            connector = int(payload["evseId"])
            profile = payload["chargingProfile"]
            schedule = profile["chargingSchedule"][0]
        limit = float(schedule["chargingSchedulePeriod"][0]["limit"])
        held = self.profiles[charger_id]
        held[(connector, int(profile["stackLevel"]))] = (limit, schedule["chargingRateUnit"])
        bays = self.by_charger[charger_id]
        cap = self._highest(held, 0, bays[0])
        self.caps[charger_id] = cap
        for bay in bays:
            bay.own_limit = self._highest(held, bay.connector_id, bay)
            found = [v for v in (bay.own_limit, cap) if v is not None]
            bay.limit = min(found) if found else None
        return {"status": "Accepted"}

    def _highest(
        self, held: dict[tuple[int, int], tuple[float, str]], connector: int, bay: Bay
    ) -> float | None:
        """The limit at a connector's highest stack level, in the bay's unit (``None``: no
        profile there)."""
        levels = [level for (c, level) in held if c == connector]
        if not levels:
            return None
        limit, unit = held[(connector, max(levels))]
        point = bay.point
        if point.dc:  # kW of output
            if unit == "W":
                return limit / 1000
            return limit * 3 * point.voltage_v * point.efficiency / 1000
        return limit if unit == "A" else limit / (point.phases * point.voltage_v)

    # Physics and meters.

    def step(self, dt_s: float, until: dict[int, float] | None = None) -> np.ndarray:
        """Advance every vehicle by `dt_s`; returns each bay's mean AC current per charger
        phase over it (bays x 3). `until` cuts a bay's step short (a departure inside it)."""
        amps = np.zeros((len(self.bays), 3))
        limits = self.shared_limits()
        for b, bay in enumerate(self.bays):
            charge = bay.charge
            if charge is None:
                bay.amps = 0.0
                continue
            run = dt_s if until is None else min(dt_s, until.get(b, dt_s))
            before = charge.energy_kwh
            limit = limits.get(b, bay.limit)
            mean = charge.step(run, limit) * run / dt_s if dt_s > 0 else 0.0
            bay.register_wh += (charge.energy_kwh - before) * 1000
            bay.amps = mean
            if charge.phases == 1:
                amps[b, 0] = mean
            else:
                amps[b, :] = mean
        return amps

    def shared_limits(self) -> dict[int, float | None]:
        """The limits of the bays of multi-connector chargers, with the charger-wide limit
        shared: connectors in order take what their vehicle would, until it is used up (a
        charger never gives its connectors more than its ChargePointMaxProfile together)."""
        out: dict[int, float | None] = {}
        for charger_id, first, bays in self.multi:
            cap = self.caps.get(charger_id)
            if cap is None or all(bay.charge is None for bay in bays):
                continue
            left = cap
            for k, bay in enumerate(bays):
                own = bay.own_limit
                limit = left if own is None else min(own, left)
                out[first + k] = limit
                if bay.charge is not None:
                    left = max(0.0, left - bay.charge.target(limit))
        return out

    def levels(self) -> np.ndarray:
        """Each bay's AC current per charger phase now (bays x 3)."""
        amps = np.zeros((len(self.bays), 3))
        for b, bay in enumerate(self.bays):
            charge = bay.charge
            if charge is None:
                continue
            level = charge.ac_amps(charge.level)
            if charge.phases == 1:
                amps[b, 0] = level
            else:
                amps[b, :] = level
        return amps

    def node_currents(self, bay_amps: np.ndarray, building_a: np.ndarray) -> np.ndarray:
        """Per node and site phase (nodes x 3): the bays under it and the building loads on
        it and below (`building_a`: nodes x 3, each node's own)."""
        site = np.einsum("bk,bkp->bp", bay_amps, self.rotation)
        return self.through @ site + self.building_under @ building_a

    def read_meters(self, state: Any, currents: np.ndarray, now: datetime, mono: float) -> None:
        """Every configured meter reads its node now (site phases in the device's order)."""
        volts = self.config.site.nominal_voltage_v
        for node, device in self.meter_of.items():
            site = currents[self.node_index[node]]
            order = self.phase_maps.get(device, (0, 1, 2))
            amps = tuple(float(site[order[k]]) for k in range(3))
            kw = tuple(a * volts / 1000 for a in amps)
            state.set_reading(
                device,
                Reading(
                    device=device,
                    ts=now,
                    mono=mono,
                    quality=Quality.OK,
                    voltage_v=(volts, volts, volts),
                    current_a=amps,  # type: ignore[arg-type]
                    power_kw=kw,  # type: ignore[arg-type]
                    power_total_kw=sum(kw),
                ),
            )
