"""Benchmark: the bus depot that judges issue #19 (plan, late alarm, "why this limit").

A night at a bus depot (fixed seed): 40 buses of 350–560 kWh arriving 20:00–01:00 (site
time, today), leaving 04:30–06:30, arrival SoC 15–40 %, target 90–95 %, each on its own
150 kW DC charger, on a grid connection too small to fill them all (a cheaper tariff from
22:00). It goes the way ``sitectl simulate`` takes a depot (YAML and CSV through
`sitectl.whatif.scenario.prepare`) and runs through `sitectl.whatif.driver.Simulation`,
sitectl's production control loop in simulated time, with an observer that samples, after
every cycle, what production reports: each session's `PlanForecast` (``PlanWatch``, the
numbers ``/api/sessions/{id}/plan`` serves), the ``departure_short`` alarms and every
session's ``limited_by``. Judged:

- **(a) ready time**: the prediction in force 1 h, 2 h and 3 h before the moment the
  simulation delivers the need (to `SHORT_KWH`, interpolated within its 30 s step),
  against that moment: median absolute error ≤ 5 min at each horizon. A prediction that
  the vehicle will be short while it is ready in time counts with its predicted (late)
  ready time; one that predicts nothing (held, beyond the horizon) is counted apart.
- **(b) late alarm**: every bus short at its departure (0.5 kWh and 1 % of its need, as
  the alarm counts) had ``departure_short`` in force, without a break, from ≥ 1 h before
  its departure; buses not short that were named at some point are false alarms
  (≤ `FALSE_SHARE` of the buses not short).
- **(c) explained**: every session on every cycle dispatched (floor included) more than
  `LIMITED_TOL_A` below what the charger and the vehicle could take now (the simulated
  vehicle's acceptance at its SoC, taper included) carries a ``limited_by`` reason, none
  ``unexplained``: 100 %.

Two cases run: ``dc`` (the judged one: the battery tapers above 80 % SoC) and ``flat`` (the
same night with the taper switched off in the simulated vehicles): the LP plans at the
charger's maximum to the end (it knows no taper), so the gap between the two is what the
taper costs the prediction, and ``flat`` is the plan's own accuracy.

    python bench/bus_depot.py [--buses 40] [--seed 19] [--limit-kw 1500]
        [--case dc|flat|both] [--quick]

Only the ``dc`` case decides the exit code. ``--quick``: 12 buses on 450 kW, ``dc`` only
(for iterating; a few buses make a noisy median). The whole run takes ~15 s.

Figures (seed 19, 40 buses, 1.5 MW; 11.6 MWh needed, 10.9 delivered), median |error| of the
ready time 1 / 2 / 3 h ahead; short buses named ≥ 1 h ahead; false alarms; explained:

    dc    6.0 / 7.2 / 5.7 min   6 of 21   0 of 19   100 % of 7,666   (misses: LP has no taper)
    flat  2.0 / 2.2 / 1.5 min   6 of 11   5 of 29   100 % of 7,344

After the LP learnt the DC curve (the fleet's ``taper_from_soc``; the what-if gives its
vehicles the simulated curve, none in ``flat``) and the what-if's departure handling
(both merged later):

    dc    27.3 / 7.1 / 7.2 min  8 of 23   3 of 17   99.9 % of 7,881 (4: 0.5 A under the curve)
    flat  2.2 / 1.3 / 1.4 min   6 of 12   8 of 28   100 % of 9,617

The taper rows move where the LP's arbitrary bursts among equal buses land (BUS-13 planned
[43, 0, 0, 0, 0, 0, 130] kW per quarter hour, delivered a steady 40): fairness on later
steps, not only step 0, is the fix this asks for.

Before the alarm's shared reading (`sitectl.control.plans.shared_shortfalls`) the false
alarms were 11 of 19 and 20 of 29. See docs/DESIGN.md ("The plan, per vehicle").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table

from sitectl.control.plans import ALARM_CODE
from sitectl.whatif import physics
from sitectl.whatif.driver import Simulation
from sitectl.whatif.record import SHORT_KWH, Recording
from sitectl.whatif.scenario import Scenario, prepare

VOLTS = 230.0
EFFICIENCY = 0.95
CHARGER_KW = 150.0
HORIZONS_H = (1, 2, 3)
READY_TARGET_MIN = 5.0
LEAD_TARGET_H = 1.0
#: Buses named by the alarm that then left with their need: at most this share of those
#: not short.
FALSE_SHARE = 0.10
#: A dispatch this far below what the charger and vehicle could take is "limited" (A): the
#: dispatcher rounds (0.1 A) and a DC limit goes out in W.
LIMITED_TOL_A = 0.5


def write_depot(directory: Path, buses: int, seed: int, limit_kw: float) -> tuple[Path, Path]:
    """The depot's YAML and timetable CSV (fixed for a seed); returns (site, timetable)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    amps = CHARGER_KW * 1000 / (EFFICIENCY * 3 * VOLTS)
    feeders = 2
    chargers = []
    rows = ["vehicle,arrival,departure,arrival_soc,target_soc,battery_kwh,charger,max_kw"]
    for n in range(buses):
        cid = f"DC-{n + 1:02d}"
        chargers.append(
            {
                "id": cid,
                "circuit": f"feeder-{n * feeders // buses + 1}",
                "kind": "dc",
                "max_power_kw": CHARGER_KW,
                "max_current_a": float(round(amps + 2)),
                "failsafe_current_a": 10,
                "efficiency": EFFICIENCY,
                "ocpp_version": rng.choice(["1.6", "2.0.1"]),
            }
        )
        arrival = rng.uniform(20 * 60, 25 * 60) % 1440
        departure = rng.uniform(4.5 * 60, 6.5 * 60)
        battery = rng.randrange(350, 561, 10)
        soc = rng.randint(15, 40)
        target = rng.choice([90, 90, 95])
        max_kw = rng.choice([150, 200, ""])
        rows.append(
            f"BUS-{n + 1:02d},{_hhmm(arrival)},{_hhmm(departure)},{soc},{target},{battery},"
            f"{cid},{max_kw}"
        )
    per_feeder = buses // feeders + 1
    site = {
        "site": {
            "id": "bus-depot",
            "name": f"Bus depot, {buses} buses",
            "limit_kw": limit_kw,
            "phase_limit_a": round(limit_kw * 1000 / (3 * VOLTS) * 1.05),
            "meter": "grid-meter",
            "non_ev_max_a": 20,
            "timezone": "Europe/Berlin",
            "nominal_voltage_v": VOLTS,
        },
        "circuits": [
            {
                "id": f"feeder-{k + 1}",
                "limit_a": float(round(per_feeder * amps * 0.8)),
                "chargers_only": True,
            }
            for k in range(feeders)
        ],
        "charger_defaults": {"password": "bench-charger-password"},
        "chargers": chargers,
        "devices": [
            {"name": "grid-meter", "profile": "eastron-sdm630", "host": "10.0.0.10", "unit_id": 1}
        ],
        "tariff": {
            "periods": [
                {"start": "06:00", "eur_per_kwh": 0.30},
                {"start": "22:00", "eur_per_kwh": 0.20},
            ]
        },
        "control": {"step_s": 900},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
    }
    site_path = directory / "site.yaml"
    site_path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    timetable = directory / "timetable.csv"
    timetable.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return site_path, timetable


def _hhmm(minutes: float) -> str:
    minutes = round(minutes) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass
class Judge:
    """What the observer samples after every cycle."""

    #: visit id -> (cycle time, status, predicted ready time or None)
    predictions: dict[str, list[tuple[datetime, str, datetime | None]]] = field(
        default_factory=dict
    )
    #: visit id -> (cycle time, the alarm in force)
    alarms: dict[str, list[tuple[datetime, bool]]] = field(default_factory=dict)
    limited: int = 0
    explained: int = 0
    unexplained: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    cycles: int = 0

    def __call__(self, sim: Simulation) -> None:
        self.cycles += 1
        now = sim.now
        plans = sim.state.control.sessions
        alarms = sim.state.alarms
        keys = {}
        for b, record in sim.on_bay.items():
            bay = sim.field.bays[b]
            keys[bay.key] = (bay, record)
            plan = plans.get(bay.key)
            forecast = plan.forecast if plan is not None else None
            if forecast is not None and plan.planned_at == now:
                self.predictions.setdefault(record.visit.id, []).append(
                    (now, forecast.status, forecast.ready_at)
                )
            raised = (ALARM_CODE, bay.key) in alarms
            self.alarms.setdefault(record.visit.id, []).append((now, raised))
        last = sim.loop.last
        if last is None:
            return
        built = last[0]
        for session in built.problem.sessions:
            found = keys.get(session.id)
            plan = plans.get(session.id)
            if found is None or plan is None or found[0].charge is None:
                continue
            charge = found[0].charge
            could = charge.ac_amps(charge.target(None))  # the charger's and vehicle's maximum
            if plan.dispatched_a >= could - LIMITED_TOL_A:
                continue
            self.limited += 1
            kinds = [item["kind"] for item in plan.limited_by]
            self.kinds.update(kinds)
            if kinds and "unexplained" not in kinds:
                self.explained += 1
            elif len(self.unexplained) < 5:
                self.unexplained.append(
                    f"{now:%H:%M} {session.id} {plan.dispatched_a:.1f} A of {could:.1f}: "
                    f"{kinds or 'no reason'}"
                )


def delivered_ready(record, rec: Recording) -> datetime | None:
    """When the simulated vehicle got its need (less `SHORT_KWH`), within its step.

    Not `READY_TOL_KWH` (0.05 kWh): the need the controller works with comes from the
    charger's SoC in 0.1 % (0.4 kWh of a 400 kWh pack), so it stops that close to it."""
    target = record.need_kwh - SHORT_KWH
    done = 0.0
    for k, _soc, kw in record.trace:
        got = kw * rec.step_s / 3600
        if got > 0 and done + got >= target:
            share = (target - done) / got
            return rec.start + timedelta(seconds=(k + share) * rec.step_s)
        done += got
    return None


@dataclass
class Result:
    case: str
    rows: list[tuple[str, str, str, bool]]
    lines: list[str]


def judge(case: str, rec: Recording, seen: Judge, wall_s: float) -> Result:
    rows: list[tuple[str, str, str, bool]] = []
    lines: list[str] = []
    visits = [r for r in rec.visits if r.plugged_at is not None]
    # (a) ready times at fixed horizons before the delivered ready time.
    for hours in HORIZONS_H:
        errors, missing, signed = [], 0, []
        for record in visits:
            ready = delivered_ready(record, rec)
            samples = seen.predictions.get(record.visit.id, [])
            if ready is None or not samples:
                continue
            at = ready - timedelta(hours=hours)
            before = [s for s in samples if s[0] <= at]
            if not before:
                continue  # plugged in less than that before it was ready
            _, _status, predicted = before[-1]
            if predicted is None:
                missing += 1
                continue
            error = (predicted - ready).total_seconds() / 60
            errors.append(abs(error))
            signed.append(error)
        median = statistics.median(errors) if errors else float("nan")
        bias = statistics.median(signed) if signed else float("nan")
        p90 = sorted(errors)[int(0.9 * (len(errors) - 1))] if errors else float("nan")
        rows.append(
            (
                f"[{case}] ready error {hours} h ahead, median min (n={len(errors)})",
                f"{median:.1f}",
                f"≤ {READY_TARGET_MIN:g}",
                bool(errors) and median <= READY_TARGET_MIN,
            )
        )
        lines.append(
            f"{case}: {hours} h ahead: median |error| {median:.1f} min, signed median "
            f"{bias:+.1f} min (+ = predicted later), 90th pct {p90:.1f} min, "
            f"{len(errors)} predictions, {missing} without a ready time"
        )
    # (b) the late alarm.
    departed = [r for r in visits if r.departed]
    short = [r for r in departed if r.short]
    leads: list[float] = []
    for record in short:
        samples = [s for s in seen.alarms.get(record.visit.id, []) if s[0] < record.left_at]
        since = None
        for at, raised in samples:
            if raised and since is None:
                since = at
            elif not raised:
                since = None
        lead = (record.left_at - since).total_seconds() / 3600 if since is not None else 0.0
        leads.append(lead)
        lines.append(
            f"{case}: short {record.visit.id}: {record.shortfall_kwh:.1f} of "
            f"{record.need_kwh:.0f} kWh, alarm {lead:.2f} h ahead"
        )
    named_ok = sum(1 for lead in leads if lead >= LEAD_TARGET_H)
    rows.append(
        (
            f"[{case}] short buses named ≥ {LEAD_TARGET_H:g} h ahead",
            f"{named_ok} of {len(short)}",
            "all",
            named_ok == len(short),
        )
    )
    rows.append(
        (
            f"[{case}] alarm lead h, min / median",
            f"{min(leads):.2f} / {statistics.median(leads):.2f}" if leads else "-",
            "",
            True,
        )
    )
    fine = [r for r in departed if not r.short]
    false = [r for r in fine if any(raised for _, raised in seen.alarms.get(r.visit.id, []))]
    for record in false:
        lines.append(
            f"{case}: false alarm {record.visit.id}: got {record.energy_kwh:.0f} of "
            f"{record.need_kwh:.0f} kWh"
        )
    share = len(false) / len(fine) if fine else 0.0
    rows.append(
        (
            f"[{case}] false alarms (of {len(fine)} not short)",
            f"{len(false)} ({share:.0%})",
            f"≤ {FALSE_SHARE:.0%}",
            share <= FALSE_SHARE,
        )
    )
    # (c) every limited session explained.
    explained = seen.explained / seen.limited if seen.limited else 1.0
    rows.append(
        (
            f"[{case}] limited session-cycles explained (of {seen.limited})",
            f"{explained:.1%}",
            "100%",
            seen.explained == seen.limited,
        )
    )
    lines += [f"{case}: unexplained: {u}" for u in seen.unexplained]
    top = ", ".join(f"{k} {n}" for k, n in seen.kinds.most_common(8))
    lines.append(f"{case}: reasons named: {top}")
    energy = sum(r.energy_kwh for r in departed)
    need = sum(r.need_kwh for r in departed)
    rows.append((f"[{case}] energy delivered / needed MWh", f"{energy / 1000:.1f} / "
                 f"{need / 1000:.1f}", "", True))  # fmt: skip
    rows.append((f"[{case}] cycles, wall s", f"{seen.cycles}, {wall_s:.0f}", "", True))
    return Result(case, rows, lines)


def run_case(case: str, args: argparse.Namespace, where: Path) -> Result:
    site, timetable = write_depot(where, args.buses, args.seed, args.limit_kw)
    scenario = Scenario(
        site=site, timetable=timetable, days=0.6, start="18:00", step_s=30.0, environ={}
    )
    taper = physics.DC_TAPER_SOC
    if case == "flat":
        physics.DC_TAPER_SOC = 100.0  # the simulated batteries take their peak to full
    try:
        prepared = prepare(scenario)  # the fleet's vehicles get the simulated curve, or none
        sim = Simulation(prepared.config, prepared.visits, prepared.building, prepared.options)
        seen = Judge()
        sim.observers.append(seen)
        wall = time.perf_counter()
        rec = asyncio.run(sim.run())
        wall_s = time.perf_counter() - wall
    finally:
        physics.DC_TAPER_SOC = taper
    return judge(case, rec, seen, wall_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buses", type=int, default=40)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--limit-kw", type=float, default=None, help="grid connection kW")
    parser.add_argument("--case", choices=["dc", "flat", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="12 buses, the dc case only")
    args = parser.parse_args(argv)
    if args.quick:
        args.buses, args.case = 12, "dc" if args.case == "both" else args.case
    if args.limit_kw is None:
        args.limit_kw = round(37.5 * args.buses)  # too small to fill them all
    logging.basicConfig(level=logging.ERROR)
    print(
        f"{args.buses} buses, grid {args.limit_kw:g} kW, seed {args.seed}; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    cases = ["dc", "flat"] if args.case == "both" else [args.case]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-bus-depot-") as tmp:
        for case in cases:
            results.append(run_case(case, args, Path(tmp) / case))
    for result in results:
        for line in result.lines:
            print(f"  {line}")
    rows = [row for result in results for row in result.rows]
    code = print_table(rows)
    if "dc" in cases:
        # Only the judged case decides the exit code; the flat one is for comparison.
        code = 0 if all(ok for name, _, _, ok in rows if name.startswith("[dc]")) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
