"""A simulated depot: chargers with vehicles, and meters that measure what they really draw.

Built from a site configuration, it plays the field side of sitectl: one `SimCharger` per
configured charger (connecting to sitectl's OCPP server, following its limits with a lag), and a
Modbus simulator for every configured TCP device, whose readings are the building load on that
circuit and below plus the chargers' actual draw, mapped through each charger's phase rotation
(an I/O module is a `SimIo` in `io`, its contacts switched by the caller).
Used by the control-loop tests, the benchmarks and ``sitectl demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devices.api import TcpTransport
from devices.digital import resolve_io_profile
from devices.sim import SimIo, SimMeter, SimServer
from sitectl.config import GRID, Config, parse_phase_rotation
from sitectl.sim.charger import SimCharger, SimEv
from sitectl.sim.quirks import Quirks

__all__ = ["SimDepot"]

log = logging.getLogger(__name__)

Phases = tuple[float, float, float]
BuildingLoad = Callable[[float], Phases]  # seconds since start -> A per phase


@dataclass
class SimDepot:
    """The field side of a depot, simulated.

    Args:
        config: the site configuration (chargers, circuits, devices).
        ocpp_url: sitectl's OCPP base URL, e.g. ``ws://127.0.0.1:9000/ocpp``.
        building: non-EV load per circuit (functions of time), counted there and above.
        tick_s: physics step; report_s: MeterValues period; lag_s: vehicle response time.
        energy_factor: simulated energy per real second (a demo runs time faster).
        charger_class: the simulated charger (the demo's really update their firmware).
        quirks: per charger id, how its simulator misbehaves (`Quirks`).
        meter_noise_a: random noise on every simulated meter current (real meters are never
            exactly constant while current flows; a frozen one is).
        frozen: device names whose simulated meter stops updating (a gateway serving cached
            registers); change it at any time.
        seed: for the noise (fixed: runs repeat).
        wiring: per charger id, how it is really wired (a phase rotation such as
            "L2-L3-L1") when that differs from the configuration: the meters see this one.
    """

    config: Config
    ocpp_url: str
    building: dict[str, BuildingLoad] = field(default_factory=dict)
    tick_s: float = 0.1
    report_s: float = 1.0
    lag_s: float = 0.5
    energy_factor: float = 1.0
    monitor_s: float = 0.05
    charger_class: type[SimCharger] = SimCharger
    quirks: dict[str, Quirks] = field(default_factory=dict)
    meter_noise_a: float = 0.05
    frozen: set[str] = field(default_factory=set)
    seed: int = 1
    wiring: dict[str, str] = field(default_factory=dict)
    #: (monotonic, circuit -> actual A per phase): what really flows, for physical judgement.
    physical: list[tuple[float, dict[str, Phases]]] = field(default_factory=list)
    chargers: dict[str, SimCharger] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, Phases]]] = field(default_factory=list)
    meters: dict[str, SimMeter] = field(default_factory=dict)  # device name -> meter
    io: dict[str, SimIo] = field(default_factory=dict)  # device name -> I/O module
    servers: list[SimServer] = field(default_factory=list)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _started: float = 0.0
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    async def start_meters(self) -> None:
        """Serve every configured TCP device (on its configured port); once."""
        if self.servers:
            return
        by_endpoint: dict[tuple[str, int], list[SimMeter | SimIo]] = {}
        for device in self.config.devices:
            if device.host is None:
                continue
            sim: SimMeter | SimIo
            if device.is_io:
                # An I/O module (a §14a contact): its inputs are switched by the test or demo.
                sim = self.io[device.name] = SimIo(
                    resolve_io_profile(device.to_spec()), unit_id=device.unit_id
                )
            else:
                sim = self.meters[device.name] = SimMeter(device.profile, unit_id=device.unit_id)
            by_endpoint.setdefault((device.host, device.port), []).append(sim)
        for (host, port), meters in by_endpoint.items():
            server = SimServer(meters, host=host, port=port)
            await server.start()
            self.servers.append(server)
        self.update_meters()

    async def connect_chargers(self, boot: bool = True) -> None:
        """Connect (and boot) every configured charger."""
        for charger in self.config.chargers:
            sim = self.charger_class(
                charger.id,
                charger.ocpp_version,
                self.ocpp_url,
                password=charger.password.get_secret_value() if charger.password else None,
                max_current_a=charger.max_current_a,
                lag_s=self.lag_s,
                voltage_v=self.config.site.nominal_voltage_v,
                quirks=self.quirks.get(charger.id),
            )
            await sim.connect()
            if boot:
                await sim.boot()
            self.chargers[charger.id] = sim

    async def start(self) -> None:
        """Meters, chargers, and the physics of both."""
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        await self.start_meters()
        await self.connect_chargers()
        for sim in self.chargers.values():
            self._tasks.append(
                asyncio.create_task(
                    sim.run(
                        tick_s=self.tick_s, report_s=self.report_s, energy_factor=self.energy_factor
                    ),
                    name=f"sim {sim.identity}",
                )
            )
        self._tasks.append(asyncio.create_task(self._meter_loop(), name="sim meters"))
        self._tasks.append(asyncio.create_task(self._monitor(), name="sim monitor"))

    async def reconnect_chargers(self, timeout_s: float = 10.0) -> None:
        """Every charger reconnects, as real ones do when sitectl comes back (no reboot: the
        vehicles and transactions carry on)."""
        for sim in self.chargers.values():
            with contextlib.suppress(Exception):
                await sim.close()
        deadline = time.monotonic() + timeout_s
        for sim in self.chargers.values():
            while True:
                try:
                    await sim.connect()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop everything (chargers disconnect, meters go away)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for sim in self.chargers.values():
            with contextlib.suppress(Exception):
                await sim.close()
        for server in self.servers:
            await server.stop()

    async def plug_in(self, charger_id: str, ev: SimEv, connector: int = 1) -> None:
        """A vehicle arrives at a charger."""
        await self.chargers[charger_id].plug_in(connector, ev)

    async def unplug(self, charger_id: str, connector: int = 1) -> None:
        """A vehicle leaves."""
        await self.chargers[charger_id].unplug(connector)

    # Physics of the meters.

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self._started

    def charger_draw(self, charger_id: str) -> Phases:
        """What a charger draws on the site's phases now."""
        charger = self.config.charger(charger_id)
        sim = self.chargers.get(charger_id)
        out = [0.0, 0.0, 0.0]
        if charger is None or sim is None:
            return (0.0, 0.0, 0.0)
        own = sim.total_currents()
        wired = charger.site_phases
        if charger_id in self.wiring:
            wired = parse_phase_rotation(self.wiring[charger_id], charger.phases)
        for k, phase in enumerate(wired):
            out[phase] += own[k]
        return (out[0], out[1], out[2])

    def circuit_current(self, circuit: str) -> Phases:
        """Actual current through a circuit: building loads and chargers at it and below."""
        total = [0.0, 0.0, 0.0]
        t = self.elapsed() if self._started else 0.0
        for node, load in self.building.items():
            if circuit in self.config.circuit_path(node):
                for k, amps in enumerate(load(t)):
                    total[k] += amps
        for charger in self.config.chargers:
            if circuit in self.config.circuit_path(charger.circuit):
                for k, amps in enumerate(self.charger_draw(charger.id)):
                    total[k] += amps
        return (total[0], total[1], total[2])

    def update_meters(self) -> None:
        """Put the current physics into every simulated meter."""
        volts = self.config.site.nominal_voltage_v
        meter_of = {self.config.site.meter: GRID}
        meter_of.update({c.meter: c.id for c in self.config.circuits if c.meter})
        for device, meter in self.meters.items():
            circuit = meter_of.get(device)
            # A frozen gateway serves the registers it had (its counters stop too).
            meter.frozen = device in self.frozen
            if circuit is None or meter.frozen:
                continue
            amps = tuple(
                max(0.0, a + self._random.uniform(-self.meter_noise_a, self.meter_noise_a))
                if a > 0
                else 0.0
                for a in self.circuit_current(circuit)
            )
            kw = [a * volts / 1000 for a in amps]
            meter.update(
                current_l1=amps[0],
                current_l2=amps[1],
                current_l3=amps[2],
                power_l1=kw[0],
                power_l2=kw[1],
                power_l3=kw[2],
                power_total=sum(kw),
                voltage_l1=volts,
                voltage_l2=volts,
                voltage_l3=volts,
            )

    # What the chargers are allowed to draw: the safety invariant.

    def commanded(self) -> dict[str, Phases]:
        """Per circuit and phase: every charger's composite limit now, plus the building load.

        This is what sitectl has *commanded*; the safety model says it never exceeds a limit.
        A limit counts on the phases the vehicle can draw on: every phase of the charger, but
        only the charger's L1 for a single-phase vehicle (it cannot draw elsewhere).
        """
        out: dict[str, list[float]] = {}
        t = self.elapsed() if self._started else 0.0
        for node, load in self.building.items():
            for circuit in self.config.circuit_path(node):
                totals = out.setdefault(circuit, [0.0, 0.0, 0.0])
                for k, amps in enumerate(load(t)):
                    totals[k] += amps
        for charger in self.config.chargers:
            sim = self.chargers.get(charger.id)
            if sim is None:
                continue
            for connector in range(1, charger.connectors + 1):
                limit = sim.limit_a(connector)
                plug = sim.plugs.get(connector)
                phases = charger.site_phases
                if plug is not None and plug.ev.phases == 1:
                    phases = phases[:1]
                for circuit in self.config.circuit_path(charger.circuit):
                    totals = out.setdefault(circuit, [0.0, 0.0, 0.0])
                    for phase in phases:
                        totals[phase] += limit
        return {c: (v[0], v[1], v[2]) for c, v in out.items()}

    def violations(
        self, since: float = 0.0, tolerance_a: float = 0.05, until: float = float("inf")
    ) -> list[str]:
        """Monitor samples (monotonic `since` ≤ time < `until`) where commanded exceeded a limit."""
        limits = self.config.circuit_limits_a()
        found = []
        for stamp, sample in self.samples:
            if not since <= stamp < until:
                continue
            for circuit, phases in sample.items():
                for k in range(3):
                    if phases[k] > limits[circuit][k] + tolerance_a:
                        found.append(
                            f"t={stamp:.2f} {circuit} L{k + 1}: {phases[k]:.1f} A > "
                            f"{limits[circuit][k]:.1f} A"
                        )
        return found

    def actual(self) -> dict[str, Phases]:
        """Per circuit and phase: the current that really flows now (building and vehicles)."""
        circuits = [GRID, *(c.id for c in self.config.circuits)]
        return {circuit: self.circuit_current(circuit) for circuit in circuits}

    def seconds_over(self, since: float = 0.0, tolerance_a: float = 0.5) -> dict[str, float]:
        """Per circuit, the longest stretch (s) the real current stayed above its limit."""
        limits = self.config.circuit_limits_a()
        longest: dict[str, float] = {}
        began: dict[str, float] = {}
        for stamp, sample in self.physical:
            if stamp < since:
                continue
            for circuit, phases in sample.items():
                over = any(phases[k] > limits[circuit][k] + tolerance_a for k in range(3))
                if over:
                    start = began.setdefault(circuit, stamp)
                    longest[circuit] = max(longest.get(circuit, 0.0), stamp - start)
                else:
                    began.pop(circuit, None)
        return longest

    def peak_over(self, since: float = 0.0) -> dict[str, float]:
        """Per circuit, the most (A) the real current went above its limit on any phase."""
        limits = self.config.circuit_limits_a()
        out: dict[str, float] = {}
        for stamp, sample in self.physical:
            if stamp < since:
                continue
            for circuit, phases in sample.items():
                excess = max(phases[k] - limits[circuit][k] for k in range(3))
                out[circuit] = max(out.get(circuit, excess), excess)
        return out

    async def _monitor(self) -> None:
        while True:
            now = time.monotonic()
            self.samples.append((now, self.commanded()))
            self.physical.append((now, self.actual()))
            await asyncio.sleep(self.monitor_s)

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.update_meters()
            except ValueError as exc:  # a value the register type cannot hold
                log.warning("simulated meter update failed: %s", exc)

    @property
    def transports(self) -> list[TcpTransport]:
        return [s.transport for s in self.servers]  # type: ignore[misc]
