"""A generated depot run through sitectl's real `ProblemBuilder`: the problem the loop solves.

`Depot.generate(n_chargers, seed)` writes a site config (N chargers on feeders under a
transformer under the grid connection; AC three-phase with one or two connectors, AC
single-phase, DC; rotated wiring), fills a `SiteState` the way the OCPP observer does (sessions
with departures, needs, vehicle limits and fleet tags; fresh per-phase or power-only
measurements; a few single-phase cars on three-phase chargers, disconnected or uncontrollable
chargers, over-drawing ones, connectors in use without a transaction) and feeds the grid and
transformer meters readings that contain what the chargers draw plus a building load.

`Depot.cycle(event)` moves both clocks by one control period and applies one of the small
changes a real cycle brings (`EVENTS`): a new measurement, one arrival, one departure, a limit
change. `Depot.build()` is the loop's own `ProblemBuilder.build` call.

Deterministic for a seed: every draw comes from one `numpy` generator, the wall clock starts at
a fixed moment in the past (`START`), the monotonic clock at `START_MONO`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from sitectl.config import GRID, Config
from sitectl.control.meters import MeterSupervisor
from sitectl.control.snapshot import Built, ChargerMemory, ProblemBuilder
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import LimitOverride, SessionState, SiteState

__all__ = ["EVENTS", "START", "Depot", "site_config"]

#: 18:14 UTC (19:14 in Berlin, the site's zone): evening, when buses come in.
START = datetime(2025, 3, 4, 18, 14, tzinfo=UTC)
START_MONO = 10_000.0
SITE = "bench"
VOLT = 230.0
#: The small changes a real cycle brings, applied in this rotation.
EVENTS = ("measurement", "arrival", "departure", "limit")
ROTATIONS = ("L1-L2-L3", "L2-L3-L1", "L3-L1-L2")
CHARGERS_PER_FEEDER = 25
#: Share of connectors with a car, at the start.
OCCUPANCY = 0.75


def _kinds(n: int, rng: np.random.Generator) -> list[str]:
    """Charger kinds in a fixed mix: 45 % AC 3-phase, 15 % AC 3-phase twin, 20 % AC 1-phase,
    20 % DC."""
    kinds = ["ac3"] * 45 + ["ac3x2"] * 15 + ["ac1"] * 20 + ["dc"] * 20
    return [kinds[k] for k in rng.integers(0, len(kinds), size=n)]


def site_config(
    n_chargers: int,
    seed: int = 1,
    *,
    step_s: int = 900,
    steps: int = 96,
    far_step_s: int | None = None,
) -> Config:
    """The config of a generated depot with `n_chargers` chargers (see the module docstring).

    Feeders carry 25 chargers each with a limit of 55–75 % of their chargers' maxima; the
    transformer and the grid contract are sized so that all three levels bind at times.
    """
    rng = np.random.default_rng(seed)
    kinds = _kinds(n_chargers, rng)
    n_feeders = max(1, -(-n_chargers // CHARGERS_PER_FEEDER))
    chargers: list[dict] = []
    feeder_max = np.zeros((n_feeders, 3))
    fleet: list[dict] = []
    for k, kind in enumerate(kinds):
        feeder = k % n_feeders
        c: dict = {"id": f"C{k:04d}", "circuit": f"feeder-{feeder:03d}"}
        rotation = ROTATIONS[int(rng.integers(0, 3))]
        if kind == "ac3":
            c.update(max_current_a=float(rng.choice([16.0, 32.0, 32.0])), phase_rotation=rotation)
        elif kind == "ac3x2":
            c.update(
                connectors=2,
                max_current_a=63.0,
                connector_max_current_a=32.0,
                ocpp_version="2.0.1",
                phase_rotation=rotation,
                failsafe_current_a=16.0,
            )
        elif kind == "ac1":
            c.update(phases=1, phase_rotation=rotation[:2], max_current_a=32.0)
        else:
            kw = float(rng.choice([50.0, 150.0, 150.0]))
            c.update(
                kind="dc",
                max_power_kw=kw,
                max_current_a=round(kw * 1000 / (0.93 * 3 * VOLT)) + 2.0,
                failsafe_current_a=10.0,
                ocpp_version=str(rng.choice(["1.6", "2.0.1"])),
            )
        chargers.append(c)
        phases = (0, 1, 2) if c.get("phases", 3) == 3 else ("L1", "L2", "L3").index(rotation[:2])
        amps = c["max_current_a"]
        if kind == "ac3x2":
            amps = 63.0
        feeder_max[feeder, phases] += amps
    for v in range(max(1, n_chargers // 4)):
        fleet.append(
            {
                "id": f"bus-{v:04d}",
                "id_tags": [f"BUS{v:04d}"],
                "departure": f"{int(rng.integers(4, 8)):02d}:{int(rng.choice([0, 30])):02d}",
                "energy_kwh": float(rng.integers(60, 320)),
                "priority": int(rng.choice([0, 0, 1, 2])),
            }
        )
    share = rng.uniform(0.55, 0.75, size=n_feeders)
    feeder_limits = np.ceil(feeder_max.max(axis=1) * share)
    transformer_a = float(np.ceil(0.55 * feeder_limits.sum()))
    circuits = [
        {
            "id": "transformer",
            "kind": "transformer",
            "parent": GRID,
            "limit_a": transformer_a,
            "meter": "tx-meter",
            "non_ev_max_a": 80.0,
        }
    ]
    circuits += [
        {
            "id": f"feeder-{f:03d}",
            "parent": "transformer",
            "limit_a": float(feeder_limits[f]),
            "chargers_only": True,
        }
        for f in range(n_feeders)
    ]
    data = {
        "site": {
            "id": SITE,
            "limit_kw": round(0.8 * transformer_a * 3 * VOLT / 1000),
            "phase_limit_a": transformer_a + 200.0,
            "meter": "grid-meter",
            "non_ev_max_a": 150.0,
            "timezone": "Europe/Berlin",
            "nominal_voltage_v": VOLT,
        },
        "circuits": circuits,
        "charger_defaults": {
            "max_current_a": 32,
            "failsafe_current_a": 6,
            "password": "bench-password-0001",
        },
        "chargers": chargers,
        "devices": [
            {"name": "grid-meter", "profile": "eastron-sdm630", "host": "127.0.0.1"},
            {"name": "tx-meter", "profile": "eastron-sdm630", "host": "127.0.0.1", "unit_id": 2},
        ],
        "control": {
            "step_s": step_s,
            "horizon_steps": steps,
            **({} if far_step_s is None else {"far_step_s": far_step_s}),
            "default_departure": "06:00",
            "default_energy_kwh": 80,
            "min_pause_s": 0,
        },
        "tariff": {
            "periods": [
                {"start": "00:00", "eur_per_kwh": 0.21},
                {"start": "06:00", "eur_per_kwh": 0.31},
                {"start": "18:15", "eur_per_kwh": 0.38},
                {"start": "21:00", "eur_per_kwh": 0.24},
            ],
            "demand_charge_eur_per_kw": 0.0,
        },
        "fleet": {"vehicles": fleet},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
    }
    return Config.model_validate(data)


@dataclass
class Depot:
    """A generated site and its live state, as the control loop would see it."""

    config: Config
    state: SiteState
    meters: MeterSupervisor
    memory: dict[str, ChargerMemory]
    builder: ProblemBuilder
    rng: np.random.Generator
    now: datetime = START
    mono: float = START_MONO
    #: Non-EV load of the grid connection and of the transformer (site phases, A).
    building_a: dict[str, np.ndarray] = field(default_factory=dict)
    cycles: int = 0
    _sessions: int = 0
    _uniform: ProblemBuilder | None = None

    @classmethod
    def generate(cls, n_chargers: int, seed: int = 1, **config_kw: int) -> Depot:
        """A depot with `n_chargers` chargers, filled with sessions and fresh measurements."""
        config = site_config(n_chargers, seed, **config_kw)
        rng = np.random.default_rng(seed + 1000)
        control = config.control
        meters = MeterSupervisor(control.meter_grace_s, 0.0, 1)
        for circuit in (GRID, "transformer"):
            meters.watch(circuit)
        depot = cls(
            config=config,
            state=SiteState(config, clock=lambda: START, monotonic=lambda: START_MONO),
            meters=meters,
            memory={},
            builder=ProblemBuilder(config),
            rng=rng,
            building_a={
                GRID: rng.uniform(20, 60, size=3),
                "transformer": rng.uniform(10, 40, size=3),
            },
        )
        for charger in config.chargers:
            mem = ChargerMemory(failsafe_installed=True, failsafe_ever=True)
            depot.memory[charger.id] = mem
            cs = depot.state.chargers[charger.id]
            cs.connected = True
            roll = rng.random()
            if roll < 0.01:
                cs.connected = False  # dropped out: budgeted as a fixed load
                mem.disconnected_at = depot.mono - 20
                mem.commanded_a, mem.commanded_at = charger.max_current_a / 2, depot.mono - 20
                continue
            if roll < 0.015:
                mem.uncontrollable = True  # refuses profiles: a fixed load at its maximum
            for connector in cs.connectors.values():
                r = rng.random()
                if r < OCCUPANCY:
                    depot._plug(charger.id, connector.connector_id)
                elif r < OCCUPANCY + 0.01:
                    connector.status = "Preparing"  # in use without a transaction: a floor
                else:
                    connector.status = "Available"
        depot._refresh()
        return depot

    # What the loop does each cycle.

    def build(self) -> Built:
        """The loop's own call: `ProblemBuilder.build` on the state, meters and memory."""
        return self.builder.build(self.state, self.meters, self.memory, self.now, self.mono)

    def build_uniform(self) -> Built:
        """The same state on a uniform grid of ``step_s`` over the whole horizon (no coarse
        far steps): the yardstick for what the coarse grid costs in energy. Call it every
        cycle, so its non-EV hold sees the same history as the loop's builder."""
        if self._uniform is None:
            control = self.config.control
            control = control.model_copy(update={"far_step_s": control.step_s})
            self._uniform = ProblemBuilder(self.config.model_copy(update={"control": control}))
        return self._uniform.build(self.state, self.meters, self.memory, self.now, self.mono)

    def slots(self) -> dict[str, str]:
        """`ProblemBuilder.slots()`, what the loop gives its `Allocator`."""
        return self.builder.slots()

    def cycle(self, event: str | None = None) -> str:
        """One control period later, with one small change; returns what changed.

        Args:
            event: one of `EVENTS`; by default the next in the rotation.
        """
        event = event or EVENTS[self.cycles % len(EVENTS)]
        self.cycles += 1
        self.now += timedelta(seconds=self.config.control.period_s)
        self.mono += self.config.control.period_s
        if event == "measurement":
            self._new_measurement()
        elif event == "arrival":
            self._arrival()
        elif event == "departure":
            self._departure()
        elif event == "limit":
            self._limit_change()
        else:
            raise ValueError(f"unknown event {event!r}")
        self._refresh()
        return event

    # Changes.

    def _plug(self, charger_id: str, connector_id: int) -> None:
        """A car arrives: a session with a departure, maybe a need and a fleet tag."""
        rng = self.rng
        charger = self.builder.chargers[charger_id]
        connector = self.state.chargers[charger_id].connectors[connector_id]
        self._sessions += 1
        tag = None
        if rng.random() < 0.4 and self.config.fleet.vehicles:
            vehicle = self.config.fleet.vehicles[int(rng.integers(len(self.config.fleet.vehicles)))]
            tag = vehicle.id_tags[0]
        session = SessionState(
            f"S{self._sessions:06d}",
            connector_id,
            self.now - timedelta(minutes=float(rng.uniform(1, 120))),
            transaction_id=str(self._sessions),
            id_tag_hash=hash_id_tag(SITE, tag or f"CARD{self._sessions}"),
            energy_wh=float(rng.uniform(0, 30_000)),
            charger_id=charger_id,
        )
        if rng.random() < 0.5:
            hours = float(rng.uniform(0.5, 14.0))
            session.departure = self.now + timedelta(hours=hours)
            session.departure_source = "vehicle"
        if rng.random() < 0.4:
            top = 300.0 if charger.kind == "dc" else 90.0
            session.energy_wanted_kwh = float(rng.uniform(10, top))
            session.need_source = "vehicle"
        if charger.kind != "dc" and rng.random() < 0.2:
            session.ev_max_current_a = float(rng.choice([10.0, 16.0, 20.0]))
        connector.session = session
        connector.status = "Charging"
        connector.phase_low_samples = [0, 0, 0]
        if charger.kind == "ac" and charger.phases == 3 and rng.random() < 0.2:
            connector.phase_low_samples = [0, 3, 3]  # a single-phase car: L2, L3 seen low
        mem = self.memory.setdefault(charger_id, ChargerMemory())
        # The charger-wide limit is its connectors' sum (`ControlLoop._limits`).
        top_a = charger.max_current_a if charger.kind == "dc" else 32.0 * charger.connectors
        mem.record_limit(float(rng.uniform(6.0 * charger.connectors, top_a)), self.mono)
        self._measure(charger_id, connector_id)

    def _measure(self, charger_id: str, connector_id: int) -> None:
        """A fresh MeterValues sample: a little under the limit, now and then a little over."""
        rng = self.rng
        charger = self.builder.chargers[charger_id]
        connector = self.state.chargers[charger_id].connectors[connector_id]
        limit = (self.memory[charger_id].commanded_a or charger.min_current_a) / charger.connectors
        if charger.connector_max_current_a is not None:
            limit = min(limit, charger.connector_max_current_a)
        over = rng.random() < 0.03
        amps = max(0.0, limit + (rng.uniform(0.8, 2.0) if over else -rng.uniform(0.0, 1.5)))
        if connector.session and connector.session.ev_max_current_a:
            amps = min(amps, connector.session.ev_max_current_a)
        if charger.kind == "dc":
            connector.power_kw = amps * 3 * VOLT * 0.93 / 1000
            connector.power_mono = self.mono - 1.0
            connector.current_a = None
            connector.current_mono = None
        else:
            used = [k for k in range(3) if connector.phase_low_samples[k] < 3]
            connector.current_a = tuple(amps if k in used else 0.0 for k in range(3))
            connector.current_mono = self.mono - 1.0
        connector.measured_at = self.now - timedelta(seconds=1)

    def _occupied(self) -> list[tuple[str, int]]:
        return [
            (c.charger_id, n)
            for c in self.state.chargers.values()
            if c.connected
            for n, conn in c.connectors.items()
            if conn.session is not None
        ]

    def _new_measurement(self) -> None:
        occupied = self._occupied()
        if occupied:
            charger_id, connector_id = occupied[int(self.rng.integers(len(occupied)))]
            n = self.builder.chargers[charger_id].connectors
            self.memory[charger_id].record_limit(
                float(self.rng.uniform(6.0 * n, 32.0 * n)), self.mono
            )
            self._measure(charger_id, connector_id)
        self.building_a[GRID] = np.maximum(self.building_a[GRID] + self.rng.normal(0, 3, 3), 0)

    def _arrival(self) -> None:
        free = [
            (c.charger_id, n)
            for c in self.state.chargers.values()
            if c.connected
            for n, conn in c.connectors.items()
            if conn.session is None and conn.status == "Available"
        ]
        if free:
            self._plug(*free[int(self.rng.integers(len(free)))])

    def _departure(self) -> None:
        occupied = self._occupied()
        if occupied:
            charger_id, connector_id = occupied[int(self.rng.integers(len(occupied)))]
            connector = self.state.chargers[charger_id].connectors[connector_id]
            connector.session = None
            connector.status = "Available"
            connector.current_a = (0.0, 0.0, 0.0)
            connector.power_kw = 0.0 if connector.power_kw is not None else None

    def _limit_change(self) -> None:
        """An operator lowers a feeder (or the transformer) by 5–15 % for an hour."""
        circuits = [c.id for c in self.config.circuits]
        node = circuits[int(self.rng.integers(len(circuits)))]
        base = self.builder.limits[node]
        factor = float(self.rng.uniform(0.85, 0.95))
        self.state.overrides[node] = LimitOverride(
            node, tuple(a * factor for a in base), self.now + timedelta(hours=1)
        )

    def _refresh(self) -> None:
        """Every active connector reports again, and both meters read what flows."""
        ev = np.zeros(3)
        for charger in self.config.chargers:
            cs = self.state.chargers[charger.id]
            if not cs.connected:
                continue
            for connector in cs.connectors.values():
                if connector.session is None:
                    continue
                if connector.current_mono is not None:
                    connector.current_mono = self.mono - 1.0
                if connector.power_mono is not None:
                    connector.power_mono = self.mono - 1.0
                ev += self._site_draw(charger, connector)
        tx = ev + self.building_a["transformer"]
        grid = tx + self.building_a[GRID]
        for circuit, amps in ((GRID, grid), ("transformer", tx)):
            reading = SimpleNamespace(
                ok=True, current_a=tuple(float(a) for a in amps), voltage_v=None, error=None
            )
            self.meters.reading(circuit, reading, self.mono)

    @staticmethod
    def _site_draw(charger, connector) -> np.ndarray:
        out = np.zeros(3)
        rotation = charger.site_phases
        if charger.kind == "dc":
            per = (connector.power_kw or 0.0) * 1000 / (0.93 * 3 * VOLT)
            out[list(rotation)] += per
            return out
        for k, amps in enumerate(connector.current_a or ()):
            if k < len(rotation) and amps:
                out[rotation[k]] += amps
        return out
