"""How a simulated vehicle charges: what it accepts at its SoC, and how fast it follows a limit.

- **DC**: the battery takes its peak power (``max_kw``, else whatever the charger gives) up to
  `DC_TAPER_SOC` and then less, linearly, to `DC_TAPER_FLOOR` of it at 100 % (the
  constant-voltage phase of a Li-ion pack). The charger's limit is on its output (W, as
  sitectl sends it to DC chargers); its AC input is the output over its efficiency, balanced
  on three phases.
- **AC**: the on-board charger takes ``max_a`` per phase on one or three phases (a
  single-phase vehicle, or any vehicle on a single-phase charger, draws on the charger's L1),
  with a mild taper from `AC_TAPER_SOC`. Below 6 A it cannot charge at all (IEC 61851-1): it
  pauses.
- **Ramps**: after plugging in nothing flows for a start delay (cable check, precharge:
  `AC_START_S`, `DC_START_S`); then the draw moves towards its target at a fixed rate up and a
  faster one down (IEC 61851-1 gives a vehicle 5 s to follow a lower limit). A step is
  integrated exactly for that piecewise-linear draw, so a 30 s step loses nothing of a ramp.
- **Energy** into the vehicle is what the charger's register counts (its output for DC, the AC
  energy for AC; on-board losses are not modelled); the SoC follows it, and a full battery
  takes nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AC_DOWN_A_PER_S",
    "AC_START_S",
    "AC_TAPER_SOC",
    "AC_UP_A_PER_S",
    "DC_DOWN_KW_PER_S",
    "DC_START_S",
    "DC_TAPER_SOC",
    "DC_UP_KW_PER_S",
    "IEC_MIN_A",
    "RAMPS",
    "Charge",
    "ChargePoint",
    "Ramps",
    "SimVehicle",
]

DC_TAPER_SOC = 80.0
DC_TAPER_FLOOR = 0.1
AC_TAPER_SOC = 95.0
AC_TAPER_FLOOR = 0.2
FULL_SOC = 99.95
IEC_MIN_A = 6.0
AC_UP_A_PER_S = 4.0  # 0 -> 32 A in 8 s
AC_DOWN_A_PER_S = 10.0
DC_UP_KW_PER_S = 10.0  # 0 -> 150 kW in 15 s
DC_DOWN_KW_PER_S = 50.0
AC_START_S = 5.0
DC_START_S = 30.0


@dataclass(frozen=True, slots=True)
class Ramps:
    """How fast vehicles start and follow a limit (the defaults above; a cross-check against
    another simulator sets its own)."""

    ac_start_s: float = AC_START_S
    dc_start_s: float = DC_START_S
    ac_up_a_per_s: float = AC_UP_A_PER_S
    ac_down_a_per_s: float = AC_DOWN_A_PER_S
    dc_up_kw_per_s: float = DC_UP_KW_PER_S
    dc_down_kw_per_s: float = DC_DOWN_KW_PER_S


#: The defaults, shared.
RAMPS = Ramps()


@dataclass(slots=True)
class SimVehicle:
    """A vehicle's battery and on-board limits."""

    battery_kwh: float
    soc: float  # %
    max_kw: float | None = None  # DC peak acceptance; None: what the charger gives
    phases: int = 3  # its on-board AC charger
    max_a: float = 32.0  # its AC current per phase

    def dc_accept_kw(self, charger_kw: float) -> float:
        """What the battery takes on DC now (kW), at most `charger_kw`."""
        if self.soc >= FULL_SOC:
            return 0.0
        peak = min(charger_kw, self.max_kw) if self.max_kw is not None else charger_kw
        if self.soc <= DC_TAPER_SOC:
            return peak
        share = 1.0 - (1.0 - DC_TAPER_FLOOR) * (self.soc - DC_TAPER_SOC) / (100 - DC_TAPER_SOC)
        return peak * share

    def ac_accept_a(self) -> float:
        """What its on-board charger takes per phase now (A)."""
        if self.soc >= FULL_SOC:
            return 0.0
        if self.soc <= AC_TAPER_SOC:
            return self.max_a
        share = 1.0 - (1.0 - AC_TAPER_FLOOR) * (self.soc - AC_TAPER_SOC) / (100 - AC_TAPER_SOC)
        return self.max_a * share


@dataclass(frozen=True, slots=True)
class ChargePoint:
    """What a connector can give, from the charger's configuration."""

    dc: bool
    phases: int  # the charger's (1 or 3)
    max_a: float  # per phase, AC (for DC: its AC input)
    max_kw: float | None  # DC output
    efficiency: float  # AC to DC (1 for AC)
    voltage_v: float


@dataclass(slots=True)
class Charge:
    """A vehicle on a connector: its draw and the energy it was given.

    ``level`` is the draw now in the connector's own unit: A per phase for AC, kW of output
    for DC. ``limit`` is the limit in force in the same unit (``None``: the charger's own
    maximum, as a charger holding no profile would give).
    """

    vehicle: SimVehicle
    point: ChargePoint
    ramps: Ramps = RAMPS
    level: float = 0.0
    start_left_s: float = 0.0
    energy_kwh: float = 0.0  # into the vehicle (the charger's register)

    def __post_init__(self) -> None:
        self.start_left_s = self.ramps.dc_start_s if self.point.dc else self.ramps.ac_start_s

    @property
    def phases(self) -> int:
        """How many phases it draws on (AC); 3 for DC (the charger's input)."""
        if self.point.dc:
            return 3
        return 1 if self.point.phases == 1 or self.vehicle.phases == 1 else 3

    def target(self, limit: float | None) -> float:
        """Where its draw goes under `limit` (the connector's unit)."""
        point, vehicle = self.point, self.vehicle
        if point.dc:
            top = point.max_kw if point.max_kw is not None else point.max_a * 3 * point.voltage_v
            wanted = vehicle.dc_accept_kw(top)
            return wanted if limit is None else max(0.0, min(wanted, limit))
        allowed = point.max_a if limit is None else min(limit, point.max_a)
        if allowed < IEC_MIN_A:
            return 0.0
        return min(allowed, vehicle.ac_accept_a())

    def ac_amps(self, level: float) -> float:
        """The AC input current per phase at a draw `level`."""
        point = self.point
        if point.dc:
            return level * 1000 / (point.efficiency * 3 * point.voltage_v)
        return level

    def step(self, dt_s: float, limit: float | None) -> float:
        """Advance by `dt_s` under `limit`; returns the mean AC current per phase (A)."""
        if dt_s <= 0:
            return self.ac_amps(self.level)
        goal = self.target(limit)
        wait = min(self.start_left_s, dt_s)
        self.start_left_s -= wait
        free = dt_s - wait
        start = self.level
        area = 0.0
        if wait > 0 and start > 0:  # cannot be (it starts at 0), but keep it exact
            area += start * wait
        if free > 0:
            ramps = self.ramps
            up, down = (
                (ramps.dc_up_kw_per_s, ramps.dc_down_kw_per_s)
                if self.point.dc
                else (ramps.ac_up_a_per_s, ramps.ac_down_a_per_s)
            )
            rate = up if goal > start else down
            ramp_s = abs(goal - start) / rate
            if ramp_s >= free:
                end = start + (rate if goal > start else -rate) * free
                area += (start + end) / 2 * free
            else:
                end = goal
                area += (start + goal) / 2 * ramp_s + goal * (free - ramp_s)
            self.level = end
        energy = self._energy(area)
        room = max(0.0, (100.0 - self.vehicle.soc) / 100 * self.vehicle.battery_kwh)
        if energy >= room:
            # Full within the step: it stops (the rest of the step at 0).
            area *= room / energy if energy > 0 else 0.0
            energy, self.level = room, 0.0
        self.energy_kwh += energy
        self.vehicle.soc = min(100.0, self.vehicle.soc + 100 * energy / self.vehicle.battery_kwh)
        return self.ac_amps(area / dt_s)

    def _energy(self, area: float) -> float:
        """Energy into the vehicle (kWh) for an integral of its draw over time (unit · s)."""
        if self.point.dc:
            return area / 3600
        return area * self.phases * self.point.voltage_v / 3.6e6
