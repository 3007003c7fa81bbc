"""``sitectl simulate``: what-if on the production controller (issue #21, part 1).

    sitectl simulate -c site.yaml --timetable fleet.csv [--building load.csv]
        [--tariff tariff.yaml] [--set site.limit_kw=1000 ...] [--add-vehicles 10 --like BUS-01]
        [--days 7] [--step-s 30] [--plan-step-min 15] [--start 12:00] [--compare other.yaml]
        [-o DIR]

Runs sitectl's own control loop (`sitectl.whatif`) over simulated chargers and vehicles in
simulated time, prints the verdict and the wall time, and writes DIR/report.html (self-
contained), report.json and report.csv (+ report-vehicles.csv). Exit codes: 0 done, 1 an input
is wrong (the message says which and where; nothing is simulated); with ``--check``, 3 when
a departure is short, a vehicle finds no charger or a circuit goes above its limit (so a
script can test a plan).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

EXIT_SHORT = 3


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``simulate`` to the ``sitectl`` parser."""
    sim = commands.add_parser(
        "simulate",
        parents=[common],
        help="what-if: a depot's day (or week) on sitectl's own controller, simulated",
        description="Simulate the site's day on sitectl's own control loop and report it.",
    )
    sim.add_argument("-c", "--config", required=True, type=Path, help="the site's YAML file")
    sim.add_argument("--timetable", type=Path, help="fleet timetable CSV (default: fleet.vehicles)")
    sim.add_argument(
        "--building",
        "--building-load",
        type=Path,
        help="building load: a CSV (time, kw[, circuit]) or store:PATH, the recorded history "
        "of a running site's store (its meters less its chargers)",
    )
    sim.add_argument("--tariff", type=Path, help="a YAML tariff (default: the config's)")
    sim.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="change the site YAML, e.g. site.limit_kw=1000 (repeatable)",
    )
    sim.add_argument("--add-vehicles", type=int, default=0, metavar="N", help="N more vehicles…")
    sim.add_argument("--like", metavar="VEHICLE", help="…with this vehicle's timetable rows")
    sim.add_argument("--days", type=float, default=1.0, help="how long (default 1)")
    sim.add_argument("--step-s", type=float, default=30.0, help="simulation step (default 30 s)")
    sim.add_argument("--plan-step-min", type=float, default=None, help="control.step_s in minutes")
    sim.add_argument(
        "--start", default="12:00", help="local time today (default 12:00) or a date-time"
    )
    sim.add_argument(
        "--arrival", default="18:00", help="without a timetable: when fleet vehicles arrive"
    )
    sim.add_argument(
        "--arrival-soc", type=float, default=20.0, help="without a timetable: their SoC (%%)"
    )
    sim.add_argument(
        "--every-step",
        action="store_true",
        help="a control cycle every step (slower; default: when one can change something)",
    )
    sim.add_argument("--compare", type=Path, metavar="OTHER.yaml", help="also run this site")
    sim.add_argument(
        "--check",
        action="store_true",
        help=f"exit {EXIT_SHORT} when a departure is short or a circuit goes above its limit",
    )
    sim.add_argument("-o", "--out", type=Path, help="report directory (default whatif-<site>)")


def run(args: argparse.Namespace) -> int:
    """Carry out ``sitectl simulate``; returns the exit code."""
    from sitectl.whatif.inputs import InputError
    from sitectl.whatif.scenario import Scenario, prepare, write_outputs
    from sitectl.whatif.scenario import run as run_one
    from sitectl.whatif.timetable import TimetableError

    scenario = Scenario(
        site=args.config,
        timetable=args.timetable,
        building=args.building,
        tariff=args.tariff,
        sets=args.sets,
        add_vehicles=args.add_vehicles,
        like=args.like,
        days=args.days,
        step_s=args.step_s,
        plan_step_min=args.plan_step_min,
        start=args.start,
        arrival=args.arrival,
        arrival_soc=args.arrival_soc,
        every_step=args.every_step,
    )
    try:
        prepared = [prepare(scenario)]
        if args.compare is not None:
            labels = _labels(args.config, args.compare, bool(args.sets))
            prepared[0].label = labels[0]
            prepared.append(prepare(scenario, args.compare, labels[1]))
    except (InputError, TimetableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for found in prepared:
        # A site's configuration warnings matter where it runs; here two and a count.
        for warning in found.warnings[:2]:
            print(f"warning: {found.label}: {warning}", file=sys.stderr)
        if len(found.warnings) > 2:
            print(
                f"warning: {found.label}: {len(found.warnings) - 2} more configuration "
                "warnings (sitectl check-config lists them)",
                file=sys.stderr,
            )
    runs = []
    for found in prepared:
        hours = found.options.days * 24
        print(
            f"simulating {found.label}: {len(found.config.chargers)} chargers, "
            f"{len(found.visits)} visits, {hours:g} h …",
            flush=True,
        )
        runs.append(run_one(found))
    out = args.out or Path(f"whatif-{runs[0]['site']['id']}")
    paths = write_outputs(out, runs)
    bad = False
    for summary in runs:
        print(f"\n{summary['label']}:")
        for line in summary["verdict"]:
            print(f"  {line}")
        bad = bad or summary["departures"]["short"] > 0 or summary["departures"]["no_charger"] > 0
        bad = bad or any(c["minutes_over"] > 0 for c in summary["circuits"].values())
    if len(runs) > 1:
        from sitectl.whatif.report import compare_sentences

        print("\nwhat changes:")
        for line in compare_sentences(runs[0], runs[1]):
            print(f"  {line}")
    print(f"\nreport: {paths['html']} (numbers: {paths['json']}, CSV beside it)")
    for summary in runs:
        run_info = summary["run"]
        hours = run_info["steps"] * run_info["step_s"] / 3600
        print(
            f"wall time {summary['label']}: {run_info['wall_s']:.1f} s for {hours:g} h of "
            f"{summary['site']['connectors']} connectors ({run_info['cycles']} control cycles, "
            f"{run_info['step_s']:g} s steps, plan steps of "
            f"{summary['site']['plan_step_s'] / 60:g} min)"
        )
    return EXIT_SHORT if bad and args.check else 0


def _labels(site: Path, other: Path, changed: bool) -> tuple[str, str]:
    a, b = site.stem, other.stem
    if changed:
        a += " (with --set)"
    if a == b:
        a, b = f"A: {a}", f"B: {b}"
    return a, b
