"""A small depot to simulate: its YAML, a timetable and a building load, written per test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

SITE = """\
site: {{id: small-depot, name: Small depot, limit_kw: {limit_kw}, phase_limit_a: {phase_a},
       meter: grid-meter, non_ev_max_a: 20, timezone: Europe/Berlin}}
circuits:
  - {{id: feeder, limit_a: {feeder_a}, chargers_only: true}}
charger_defaults: {{circuit: feeder, max_current_a: 32, failsafe_current_a: 6,
                   password: small-depot-password}}
chargers:
  - {{id: AC-1}}
  - {{id: AC-2, phases: 1, phase_rotation: L2, ocpp_version: "2.0.1"}}
  - {{id: DC-1, kind: dc, max_power_kw: 50, max_current_a: 80, failsafe_current_a: 10}}
devices:
  - {{name: grid-meter, profile: eastron-sdm630, host: 127.0.0.1, port: 15020}}
ocpp: {{listen_host: 127.0.0.1}}
mqtt: {{enabled: false}}
http: {{enabled: false}}
"""

TIMETABLE = """\
vehicle,arrival,departure,energy_kwh,arrival_soc,target_soc,battery_kwh,charger,phases
VAN-1,17:10,21:00,30,,,75,AC-1,3
CAR-1,17:20,22:00,15,,,50,AC-2,1
BUS-1,17:30,22:30,,20,80,200,DC-1,
"""

BUILDING = """\
time,kw
00:00,5
07:00,12
17:30,10
20:00,6
"""


@pytest.fixture
def depot(tmp_path: Path):
    """Write the small depot's files; returns a function (keyword changes) -> their paths."""

    def write(
        limit_kw: float = 60,
        phase_a: float = 100,
        feeder_a: float = 80,
        timetable: str = TIMETABLE,
        building: str | None = BUILDING,
        name: str = "site.yaml",
    ) -> dict[str, Path]:
        site = tmp_path / name
        site.write_text(SITE.format(limit_kw=limit_kw, phase_a=phase_a, feeder_a=feeder_a))
        files = {"site": site}
        table = tmp_path / "timetable.csv"
        table.write_text(textwrap.dedent(timetable))
        files["timetable"] = table
        if building is not None:
            load = tmp_path / "building.csv"
            load.write_text(building)
            files["building"] = load
        return files

    return write
