"""Cross-check: what ``sitectl simulate`` predicts against what the live simulated depot delivers.

The same small depot (four 32 A chargers on a 70 A connection, `sitectl.sim.site`'s scenario
settings: 0.5 s control period, 5-minute plan steps) and the same timetable (four vehicles
plugged in together, each with an energy need and a departure within five minutes, more in
all than the connection can carry) run twice:

- **live**: sitectl as ``sitectl run`` wires it (`sitectl.sim.site.start_site`: OCPP server on
  real WebSockets, Modbus meter, control loop in wall time) around simulated chargers; the
  needs go to its fleet as the depot system's requests; each vehicle leaves at its departure
  and its energy is read off its charger's register;
- **what-if**: `sitectl.whatif` on the same configuration in simulated time, 1 s steps, with
  the live simulator's vehicles (no start delay, near-instant ramps), event-driven and, for
  reference, with a cycle every step.

Target (issue #21): the predicted shortfall in total within 5 % of the live one (and within
0.05 kWh, for the rounding of a short run). Takes about six minutes (the live run is wall
time). Exits 1 on a miss.

    python bench/whatif_live.py [--seed-free; no options]
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table

from sitectl.config import GRID
from sitectl.control.fleet import Fleet, VehicleRequest
from sitectl.sim.charger import SimEv
from sitectl.sim.site import scenario_config, start_site
from sitectl.whatif.driver import SimOptions, simulate
from sitectl.whatif.inputs import BuildingLoad, with_vehicles
from sitectl.whatif.physics import Ramps
from sitectl.whatif.timetable import Trip, Visit

#: (vehicle, charger, need kWh, leaves after s)
TIMETABLE = (
    ("V1", "CP1", 1.4, 240),
    ("V2", "CP2", 1.2, 240),
    ("V3", "CP3", 0.9, 180),
    ("V4", "CP4", 1.6, 300),
)
PHASE_LIMIT_A = 70
RUN_S = 310
#: The live simulator's vehicles follow a limit with a 0.2 s lag and start at once.
LIVE_LIKE = Ramps(0.0, 0.0, 1000.0, 1000.0, 1e5, 1e5)
TOLERANCE = 0.05
#: The live loop's non-EV estimate (A) below which it is taken as settled (no building here).
SETTLED_A = 0.5
TOLERANCE_KWH = 0.05


def depot(tmp: Path):
    config = scenario_config(
        tmp,
        [{"id": charger} for _, charger, _, _ in TIMETABLE],
        phase_limit_a=PHASE_LIMIT_A,
    )
    trips = [
        Trip(vehicle, "00:00", "00:00", energy_kwh=need, battery_kwh=60, charger=charger)
        for vehicle, charger, need, _ in TIMETABLE
    ]
    return with_vehicles(config, trips), trips


async def settled(site, timeout_s: float = 30.0) -> None:
    """Wait until the live loop plans as a running depot's does (what the what-if's
    commissioning reaches): the grid meter trusted and its non-EV estimate the measured one
    (none here), the worst case it held while the meter was not yet trusted let go."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        last = site.loop.last
        built = last[0] if last is not None else None
        if built is not None and GRID in built.measured and max(built.non_ev[GRID]) < SETTLED_A:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"the live depot did not settle within {timeout_s:g} s")
        site.loop.cycle_done.clear()
        await asyncio.wait_for(site.loop.cycle_done.wait(), timeout_s)


async def live(config) -> tuple[datetime, dict[str, float]]:
    """Run the timetable on the live depot; returns its start and each vehicle's energy (kWh)."""
    site = await start_site(config)
    try:
        await settled(site)
        fleet = Fleet(config, site.state)
        t0 = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for vehicle, charger, need, leaves in TIMETABLE:
            await site.depot.plug_in(charger, SimEv(phases=3, max_a=32, energy_wanted_kwh=100))
            fleet.request(
                VehicleRequest(
                    vehicle,
                    f"urn:bench:{vehicle}",
                    departure=t0 + timedelta(seconds=leaves),
                    energy_kwh=need,
                    charging_point=f"{charger}/1",
                    received_at=datetime.now(UTC),
                )
            )
        energy: dict[str, float] = {}
        for vehicle, charger, _, leaves in sorted(TIMETABLE, key=lambda t: t[3]):
            # A departure on the timetable (wall time): not a condition to wait for.
            await asyncio.sleep(max(0.0, start + leaves - loop.time()))
            energy[vehicle] = site.energy_kwh(charger)
            await site.depot.unplug(charger)
        return t0, energy
    finally:
        await site.stop()


def whatif(config, trips, start: datetime, every_step: bool) -> dict[str, float]:
    """The same timetable in simulated time from the live run's start (the same plan steps
    on the wall-clock grid); returns each vehicle's energy (kWh)."""
    visits = [
        Visit(f"{t.vehicle}#1", t, start, start + timedelta(seconds=leaves))
        for t, (_, _, _, leaves) in zip(trips, TIMETABLE, strict=True)
    ]
    options = SimOptions(start, RUN_S / 86400, 1.0, every_step, LIVE_LIKE)
    recording, _ = simulate(config, visits, BuildingLoad(), options)
    return {r.visit.trip.vehicle: r.energy_kwh for r in recording.visits}


def shortfall(energy: dict[str, float]) -> float:
    return sum(max(0.0, need - energy[v]) for v, _, need, _ in TIMETABLE)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-whatif-live-") as tmp:
        config, trips = depot(Path(tmp))
        print(f"live run: {RUN_S} s of wall time …", flush=True)
        t0, got_live = asyncio.run(live(config))
        got_sim = whatif(config, trips, t0, every_step=False)
        got_every = whatif(config, trips, t0, every_step=True)
    print(f"\n{'vehicle':8} {'need':>6} {'live':>7} {'what-if':>8} {'every':>7}  kWh")
    for vehicle, _, need, _ in TIMETABLE:
        print(
            f"{vehicle:8} {need:6.2f} {got_live[vehicle]:7.3f} {got_sim[vehicle]:8.3f} "
            f"{got_every[vehicle]:7.3f}"
        )
    live_short, sim_short, every_short = (
        shortfall(got_live),
        shortfall(got_sim),
        shortfall(got_every),
    )
    allowed = max(TOLERANCE * live_short, TOLERANCE_KWH)
    rows = [
        ("live shortfall kWh", f"{live_short:.3f}", "", True),
        (
            "what-if shortfall kWh",
            f"{sim_short:.3f}",
            f"{live_short:.3f} ± {allowed:.3f}",
            abs(sim_short - live_short) <= allowed,
        ),
        (
            "what-if, cycle every step, kWh",
            f"{every_short:.3f}",
            f"{live_short:.3f} ± {allowed:.3f}",
            abs(every_short - live_short) <= allowed,
        ),
    ]
    return print_table(rows)


if __name__ == "__main__":
    sys.exit(main())
