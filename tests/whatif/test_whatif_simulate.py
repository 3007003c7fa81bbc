"""A small depot simulated for a few hours on sitectl's own control loop, judged by its physics."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest

from sitectl.config import GRID
from sitectl.whatif.driver import Simulation, simulate
from sitectl.whatif.report import summarize
from sitectl.whatif.sample import write_sample
from sitectl.whatif.scenario import Scenario, prepare, run

#: 17:00 to 23:00 local: the evening's arrivals and the night's first hours.
EVENING = {"start": "17:00", "days": 0.25}


def scenario(files, **changes) -> Scenario:
    return Scenario(
        site=files["site"],
        timetable=files["timetable"],
        building=files.get("building"),
        environ={},
        **{**EVENING, **changes},
    )


@pytest.fixture
def evening(depot):
    """The small depot's evening: (prepared, recording, alarms)."""
    prepared = prepare(scenario(depot()))
    recording, alarms = simulate(
        prepared.config, prepared.visits, prepared.building, prepared.options
    )
    return prepared, recording, alarms


def test_no_circuit_goes_above_its_limit_by_command_or_physically(evening) -> None:
    _, rec, _ = evening
    assert rec.cycles, "the control loop ran"
    assert {c.method for c in rec.cycles} == {"lp"}
    # What flows (mean over each 30 s step) and what was commanded, at every node and phase.
    assert float((rec.currents - rec.limits_a[None, :, :]).max()) <= 0.5
    assert max(c.commanded_over_a for c in rec.cycles) <= 0.05
    # A limit that binds is used: the feeder or the grid is full at times.
    assert any(c.binding for c in rec.cycles)


def test_energy_is_conserved(evening) -> None:
    _, rec, _ = evening
    hours = rec.step_s / 3600
    grid = rec.grid_kw.sum() * hours
    assert grid == pytest.approx((rec.ev_kw.sum() + rec.building_kw.sum()) * hours, rel=1e-6)
    # What the chargers drew is what went into the vehicles (DC: more by its efficiency).
    into = sum(
        r.energy_kwh / (0.93 if r.bay and r.bay.startswith("DC") else 1.0) for r in rec.visits
    )
    assert rec.ev_kw.sum() * hours == pytest.approx(into, rel=0.005)
    for record in rec.visits:
        gained = (record.soc_end - record.arrival_soc) / 100 * record.battery_kwh
        assert gained == pytest.approx(record.energy_kwh, abs=0.01)


def test_every_vehicle_gets_its_need_on_an_ample_connection(evening) -> None:
    prepared, rec, _ = evening
    summary = summarize(rec, prepared.config)
    assert summary["departures"]["total"] == 3
    assert summary["departures"]["short"] == 0
    assert summary["verdict"][0] == "all 3 departures met their need"
    for vehicle in summary["vehicles"]:
        assert vehicle["ready_at"] is not None
        assert vehicle["ready_margin_min"] >= 0


def test_an_undersized_connection_gives_the_shortfall_the_verdict_names(depot) -> None:
    # 45 A per phase at the connection (the least its chargers' fail-safes allow): at most
    # 45 A · 3 · 230 V · 3 h = 93 kWh for the whole depot, where the vehicles need 120.
    timetable = """\
        vehicle,arrival,departure,energy_kwh,battery_kwh,charger
        VAN-1,17:00,20:00,40,75,AC-1
        BUS-1,17:00,20:00,80,200,DC-1
        """
    files = depot(phase_a=45, limit_kw=200, timetable=timetable, building=None)
    summary = run(prepare(scenario(files)))
    most = 45 * 3 * 230 * 3 / 1000
    delivered = summary["departures"]["delivered_kwh"]
    assert delivered <= most
    short = summary["departures"]["short_kwh"]
    assert short == pytest.approx(120 - delivered, abs=0.1)
    assert short >= 120 - most
    assert summary["departures"]["short"] == 2
    assert summary["verdict"][0].startswith(f"2 of 2 departures short by {short:,.0f} kWh")
    assert any(line.startswith("the grid connection binds") for line in summary["verdict"])
    assert summary["circuits"][GRID]["binds_h"] >= 2.5
    assert summary["circuits"][GRID]["max_over_a"] <= 0.5


def test_the_event_driven_run_matches_a_cycle_every_step(depot) -> None:
    """The cycles skipped (nothing could change) change the outcome by little: a cycle every
    30 s hands a finishing vehicle's margin to the others sooner (≈ 1.5 % here)."""
    files = depot(feeder_a=50)
    event = run(prepare(scenario(files, days=1 / 6)))
    every = run(prepare(scenario(files, days=1 / 6, every_step=True)))
    assert event["run"]["cycles"] < every["run"]["cycles"] / 3
    a, b = event["energy"]["to_vehicles_kwh"], every["energy"]["to_vehicles_kwh"]
    assert a == pytest.approx(b, rel=0.03)


def test_the_run_drives_the_production_loop_in_simulated_time(depot) -> None:
    prepared = prepare(scenario(depot(), days=1 / 24))
    simulation = Simulation(prepared.config, prepared.visits, prepared.building, prepared.options)

    rec = asyncio.run(simulation.run())
    loop = simulation.loop
    # Its own clocks moved with the simulation, and every charger took its fail-safe.
    assert loop.wall_clock() == prepared.options.start + timedelta(hours=1)
    assert all(m.failsafe_installed for m in loop.memory.values())
    assert simulation.state.control.cycles == len(rec.cycles) + 1  # + the commissioning cycle
    # The sessions it planned are the simulated ones, bound to their fleet vehicles.
    assert {s.vehicle_id for s in simulation.state.ended_sessions} <= {"VAN-1", "CAR-1", "BUS-1"}


def test_the_generated_200_connector_depot_loads_and_simulates_an_evening_hour(tmp_path) -> None:
    sample = write_sample(tmp_path / "depot", 200, seed=1)
    prepared = prepare(
        Scenario(
            site=sample.site,
            timetable=sample.timetable,
            building=sample.building,
            tariff=sample.tariff,
            start="19:00",
            days=1 / 24,
            environ={},
        )
    )
    assert sum(c.connectors for c in prepared.config.chargers) == 200
    recording, _ = simulate(prepared.config, prepared.visits, prepared.building, prepared.options)
    assert recording.bays == 200
    assert len(recording.cycles) >= 2
    assert float((recording.currents - recording.limits_a[None]).max()) <= 0.5
    assert np.all(recording.grid_kw >= 0)
    assert sum(1 for r in recording.visits if r.bay is not None) >= 100
