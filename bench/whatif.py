"""Benchmark: ``sitectl simulate`` on a generated depot (issue #21.1).

A depot from `sitectl.whatif.sample` (fixed seed: DC buses and AC vans, feeders under two
transformers, a building load, a tariff with a demand charge) is written as YAML and CSV files
and goes the way ``sitectl simulate`` takes it: `load_config` and the timetable reader, then
sitectl's own control loop in simulated time. Measured, per size:

- **wall**: the run's wall time (commissioning, every cycle, the physics), against the target;
- cycles and why they ran, the solver's median and worst time, cycles on the fallback;
- the physics: the most any circuit went above its limit (A, mean over a step) and the most
  the commanded limits plus the building went above one (both must stay ≤ 0.5 A / 0.05 A);
- the result: departures short and by how much, energy, peak, cost (reported, no target).

Target (issue #21): 24 h × 200 connectors at a 15-minute plan and a 30-second step in ≤ 60 s
on the 2-core machine (shared: run it on a quiet machine; it prints the load average). Exits 1
on a miss.

    python bench/whatif.py [--connectors 200] [--days 1] [--seed 1] [--step-s 30]
        [--plan-step-min 15] [--target-s 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table

from sitectl.whatif.sample import write_sample
from sitectl.whatif.scenario import Scenario, prepare, run, write_outputs

OVER_A = 0.5
COMMANDED_OVER_A = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=200)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-s", type=float, default=30.0)
    parser.add_argument("--plan-step-min", type=float, default=15.0)
    parser.add_argument("--target-s", type=float, default=60.0, help="wall time target")
    parser.add_argument("--keep", type=Path, help="write the depot and its report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-whatif-") as tmp:
        where = args.keep or Path(tmp)
        sample = write_sample(where / "depot", args.connectors, args.seed)
        scenario = Scenario(
            site=sample.site,
            timetable=sample.timetable,
            building=sample.building,
            tariff=sample.tariff,
            days=args.days,
            step_s=args.step_s,
            plan_step_min=args.plan_step_min,
            environ={},
        )
        load = os.getloadavg()[0]
        print(
            f"{sample.connectors} connectors, {args.days:g} day(s) from 12:00, step "
            f"{args.step_s:g} s, plan {args.plan_step_min:g} min, seed {args.seed}; "
            f"load average {load:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        prepared = prepare(scenario)
        summary = run(prepared)
        if args.keep is not None:
            paths = write_outputs(args.keep / "report", [summary])
            print(f"report: {paths['html']}")
    info, dep = summary["run"], summary["departures"]
    over = max(0.0, *(c["max_over_a"] for c in summary["circuits"].values()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(info["cycle_reasons"].items()))
    print(f"cycles: {info['cycles']} ({reasons})")
    for line in summary["verdict"]:
        print(f"  {line}")
    hours = info["steps"] * info["step_s"] / 3600
    target = args.target_s * args.days
    rows = [
        (
            f"wall s ({hours:g} h × {sample.connectors} connectors)",
            f"{info['wall_s']:.1f}",
            f"≤ {target:g}",
            info["wall_s"] <= target,
        ),
        ("control cycles", str(info["cycles"]), "", True),
        ("solve median ms", f"{info['solve_ms_median']:.1f}", "", True),
        ("solve max ms", f"{info['solve_ms_max']:.1f}", "", True),
        ("fallback cycles", str(info["methods"].get("fallback", 0)), "0",
         info["methods"].get("fallback", 0) == 0),
        ("worst circuit over limit A", f"{over:.2f}", f"≤ {OVER_A}", over <= OVER_A),
        ("worst commanded over limit A", f"{max(0.0, info['commanded_over_a']):.2f}",
         f"≤ {COMMANDED_OVER_A}", info["commanded_over_a"] <= COMMANDED_OVER_A),
        ("departures short", f"{dep['short']} of {dep['total']}", "", True),
        ("short in total kWh", f"{dep['short_kwh']:.1f}", "", True),
        ("energy into vehicles kWh", f"{summary['energy']['to_vehicles_kwh']:.0f}", "", True),
        ("highest quarter-hour kW", f"{summary['peak']['grid_15min_kw']:.0f}", "", True),
        ("cost EUR", f"{summary['cost']['total_eur']:.0f}", "", True),
    ]  # fmt: skip
    return print_table(rows)


if __name__ == "__main__":
    sys.exit(main())
