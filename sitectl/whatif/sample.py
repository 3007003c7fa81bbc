"""A generated bus and van depot for trying ``sitectl simulate`` and for its benchmark and tests.

`write_sample(directory, connectors, seed)` writes, for a fixed seed always the same:

- ``site.yaml``: a depot the way an installer describes one — per 10 connectors four DC
  chargers (100 or 150 kW, one connector) and three twin AC chargers (2 × 22 kW); feeders of
  about 25 connectors, half under each of two transformers, under the grid connection, with
  a metered connection and transformers. The limits are sized from the timetable: the grid
  contract a little above the fleet's mean overnight power, so the transformers bind in the
  evening peak and the night is tight but mostly enough.
- ``timetable.csv``: one vehicle per connector; buses (300–450 kWh, SoC targets) on the DC
  chargers, vans (energy needs, some single-phase) on the AC ones; most on their own bay, the
  rest on ``any``.
- ``building.csv``: the workshop and offices, a daily profile in 15-minute points.
- ``tariff.yaml``: time-of-use prices and a demand charge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from sitectl.whatif.timetable import COLUMNS, OPTIONAL

__all__ = ["Sample", "write_sample"]

VOLTS = 230.0
DC_EFFICIENCY = 0.94
CONNECTORS_PER_FEEDER = 25


@dataclass(frozen=True, slots=True)
class Sample:
    """The files of a generated depot."""

    site: Path
    timetable: Path
    building: Path
    tariff: Path
    connectors: int


def _hhmm(minutes: float) -> str:
    minutes = round(minutes) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def write_sample(directory: Path, connectors: int = 200, seed: int = 1) -> Sample:
    """Write a generated depot of about `connectors` connectors (a multiple of 10) into
    `directory` and return its files."""
    rng = random.Random(seed)
    groups = max(1, round(connectors / 10))
    chargers: list[dict] = []
    rows: list[dict] = []
    feeders = max(2, round(groups * 10 / CONNECTORS_PER_FEEDER))
    feeder_max = [0.0] * feeders
    placed = 0
    for g in range(groups):
        for k in range(7):
            feeder = (placed * feeders) // (groups * 10)
            if k < 4:
                kw = rng.choice([100.0, 150.0, 150.0])
                amps = kw * 1000 / (DC_EFFICIENCY * 3 * VOLTS)
                cid = f"DC-{g * 4 + k + 1:03d}"
                chargers.append(
                    {
                        "id": cid,
                        "circuit": f"feeder-{feeder + 1}",
                        "kind": "dc",
                        "max_power_kw": kw,
                        "max_current_a": float(round(amps + 2)),
                        "failsafe_current_a": 10,
                        "efficiency": DC_EFFICIENCY,
                        "ocpp_version": rng.choice(["1.6", "2.0.1"]),
                    }
                )
                feeder_max[feeder] += amps
                placed += 1
                battery = rng.choice([300, 350, 400, 450])
                arrival = rng.uniform(17 * 60, 22.5 * 60)
                departure = rng.uniform(4.5 * 60, 7.5 * 60)
                soc = rng.randint(15, 40)
                rows.append(
                    {
                        "vehicle": f"BUS-{len(rows) + 1:03d}",
                        "arrival": _hhmm(arrival),
                        "departure": _hhmm(departure),
                        "arrival_soc": soc,
                        "target_soc": rng.choice([90, 90, 95]),
                        "battery_kwh": battery,
                        "charger": cid if rng.random() < 0.7 else "dc",
                        "max_kw": rng.choice([150, 200, ""]),
                    }
                )
            else:
                cid = f"AC-{g * 3 + k - 3:03d}"
                chargers.append(
                    {
                        "id": cid,
                        "circuit": f"feeder-{feeder + 1}",
                        "connectors": 2,
                        "max_current_a": 64,
                        "connector_max_current_a": 32,
                        "failsafe_current_a": 12,
                        "ocpp_version": rng.choice(["1.6", "2.0.1"]),
                        "phase_rotation": rng.choice(["L1-L2-L3", "L2-L3-L1", "L3-L1-L2"]),
                    }
                )
                feeder_max[feeder] += 64
                placed += 2
                for connector in (1, 2):
                    single = rng.random() < 0.2
                    rows.append(
                        {
                            "vehicle": f"VAN-{len(rows) + 1:03d}",
                            "arrival": _hhmm(rng.uniform(16 * 60, 21 * 60)),
                            "departure": _hhmm(rng.uniform(5.5 * 60, 8 * 60)),
                            "energy_kwh": rng.randint(25, 70),
                            "battery_kwh": rng.choice([75, 90, 110]),
                            "charger": f"{cid}/{connector}" if rng.random() < 0.6 else "ac",
                            "phases": 1 if single else 3,
                            "max_a": 32 if single else rng.choice([16, 32]),
                        }
                    )
    need = sum(
        (r["target_soc"] - r["arrival_soc"]) / 100 * r["battery_kwh"]
        if "target_soc" in r
        else r["energy_kwh"]
        for r in rows
    )
    overnight_kw = need / 8.0  # about 21:30 to 05:30
    building_peak_kw = 60.0 + 2.0 * connectors
    grid_kw = round(overnight_kw + 0.5 * building_peak_kw, -1)
    grid_a = round(grid_kw * 1000 / (3 * VOLTS) * 1.05)
    transformer_a = round(0.6 * grid_a)
    circuits = [
        {
            "id": f"transformer-{t}",
            "kind": "transformer",
            "limit_a": transformer_a,
            "meter": f"tx-{t}-meter",
            "non_ev_max_a": 0,
        }
        for t in (1, 2)
    ]
    circuits += [
        {
            "id": f"feeder-{f + 1}",
            "parent": f"transformer-{1 if f < (feeders + 1) // 2 else 2}",
            "limit_a": float(round(0.7 * feeder_max[f])),
            "chargers_only": True,
        }
        for f in range(feeders)
    ]
    devices = [
        {"name": "grid-meter", "profile": "eastron-sdm630", "host": "10.0.0.10", "unit_id": 1}
    ] + [
        {
            "name": f"tx-{t}-meter",
            "profile": "eastron-sdm630",
            "host": "10.0.0.10",
            "unit_id": 1 + t,
        }
        for t in (1, 2)
    ]
    site = {
        "site": {
            "id": f"sample-{connectors}",
            "name": f"Generated depot, {connectors} connectors",
            "limit_kw": grid_kw,
            "phase_limit_a": grid_a,
            "meter": "grid-meter",
            "non_ev_max_a": round(building_peak_kw * 1000 / (3 * VOLTS)),
            "timezone": "Europe/Berlin",
            "nominal_voltage_v": VOLTS,
        },
        "circuits": circuits,
        "charger_defaults": {"password": "sample-charger-password"},
        "chargers": chargers,
        "devices": devices,
        "control": {"step_s": 900},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
    }
    directory.mkdir(parents=True, exist_ok=True)
    site_path = directory / "site.yaml"
    site_path.write_text(
        "# Generated by sitectl.whatif.sample: a depot to try `sitectl simulate` on.\n"
        + yaml.safe_dump(site, sort_keys=False)
    )
    columns = [*COLUMNS, *OPTIONAL]  # the timetable reader's own column names
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(row.get(c, "")) for c in columns))
    timetable = directory / "timetable.csv"
    timetable.write_text("\n".join(lines) + "\n")
    points = ["time,kw,circuit"]
    for quarter in range(96):
        hour = quarter / 4
        if 6 <= hour < 18:
            share = 0.8 + 0.2 * rng.random()  # workshop and offices
        elif 18 <= hour < 22:
            share = 0.5 + 0.1 * rng.random()
        else:
            share = 0.25 + 0.05 * rng.random()
        for t in (1, 2):
            kw = building_peak_kw / 2 * share
            points.append(f"{_hhmm(quarter * 15)},{kw:.1f},transformer-{t}")
    building = directory / "building.csv"
    # One series per circuit: rows sorted by circuit, then time.
    body = sorted(points[1:], key=lambda line: (line.split(",")[2], line.split(",")[0]))
    building.write_text("\n".join([points[0], *body]) + "\n")
    tariff = directory / "tariff.yaml"
    tariff.write_text(
        yaml.safe_dump(
            {
                "tariff": {
                    "periods": [
                        {"start": "00:00", "eur_per_kwh": 0.18},
                        {"start": "06:00", "eur_per_kwh": 0.28},
                        {"start": "17:00", "eur_per_kwh": 0.34},
                        {"start": "21:00", "eur_per_kwh": 0.22},
                    ],
                    "demand_charge_eur_per_kw": 9.0,
                }
            },
            sort_keys=False,
        )
    )
    return Sample(site_path, timetable, building, tariff, placed)
