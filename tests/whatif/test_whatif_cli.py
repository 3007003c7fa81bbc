"""``sitectl simulate`` as a planner runs it: reports written, bad input refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sitectl.cli import main

REPO = Path(__file__).resolve().parent.parent.parent


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_run_prints_its_verdict_and_wall_time_and_writes_the_report(depot, tmp_path, capsys):
    files = depot()
    out_dir = tmp_path / "out"
    code, out, err = simulate(
        capsys,
        "-c", str(files["site"]),
        "--timetable", str(files["timetable"]),
        "--building", str(files["building"]),
        "--start", "17:00",
        "--days", "0.25",
        "--set", "site.limit_kw=80",
        "-o", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    assert "all 3 departures met their need" in out
    assert "wall time site: " in out and "control cycles" in out
    for name in ("report.html", "report.json", "report.csv", "report-vehicles.csv"):
        assert (out_dir / name).stat().st_size > 0
    data = json.loads((out_dir / "report.json").read_text())
    (run,) = data["runs"]
    assert run["site"]["limit_kw"] == 80  # the --set went in
    assert run["departures"]["total"] == 3
    header = (out_dir / "report.csv").read_text().splitlines()[0]
    assert header.startswith("time,grid_kw,chargers_kw,building_kw,grid_l1_a")


def test_compare_runs_both_and_says_what_changes(depot, tmp_path, capsys):
    files = depot(phase_a=45, limit_kw=200)
    bigger = depot(phase_a=200, limit_kw=200, name="bigger.yaml")["site"]
    code, out, err = simulate(
        capsys,
        "-c", str(files["site"]),
        "--timetable", str(files["timetable"]),
        "--start", "17:00",
        "--days", "0.25",
        "--compare", str(bigger),
        "-o", str(tmp_path / "out"),
        "--check",
    )  # fmt: skip
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["site", "bigger"]
    assert data["compare"] and data["compare"][0].startswith("bigger: ")
    assert "what changes:" in out
    assert (tmp_path / "out" / "report-2-bigger.csv").exists()
    # --check: a short departure is exit 3 (the small connection leaves the bus short).
    short = data["runs"][0]["departures"]["short"]
    assert code == (3 if short else 0), err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--timetable", "broken"), "timetable.csv line 3: 2 fields where the header has"),
        (("--timetable", "unknown-charger"), "unknown charger 'NOPE'"),
        (("--set", "site.limt_kw=1000"), "unknown field 'limt_kw'"),
        (("--set", "chargers.NOPE.max_current_a=16"), "no list item 'NOPE' to override"),
        (("--set", "site.limit_kw"), "expected PATH=VALUE"),
        (("--add-vehicles", "3"), "--add-vehicles needs --like"),
        (("--building", "missing"), "cannot read"),
        (("--start", "tomorrow"), "--start 'tomorrow'"),
        (("--step-s", "200", "--plan-step-min", "2"), "longer than the plan step"),
        (("--plan-step-min", "0.5"), "control.step_s"),
    ],
)
def test_bad_input_is_one_clear_error_and_exit_1(depot, tmp_path, capsys, change, message):
    files = depot()
    timetable = files["timetable"]
    building = files["building"]
    extra = list(change)
    if change == ("--timetable", "broken"):
        timetable.write_text("vehicle,arrival,departure,energy_kwh\nV1,18:00,06:00,30\nV2,18:00\n")
        extra = []
    elif change == ("--timetable", "unknown-charger"):
        timetable.write_text(
            "vehicle,arrival,departure,energy_kwh,charger\nV1,18:00,06:00,30,NOPE\n"
        )
        extra = []
    elif change == ("--building", "missing"):
        extra = ["--building", str(tmp_path / "nowhere.csv")]
    code, _, err = simulate(
        capsys,
        "-c", str(files["site"]),
        "--timetable", str(timetable),
        "--building", str(building),
        "-o", str(tmp_path / "out"),
        *extra,
    )  # fmt: skip
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing simulated


def test_the_console_command_refuses_a_broken_timetable_without_a_traceback(depot, tmp_path):
    files = depot()
    files["timetable"].write_text("vehicle,arrival,departure,energy_kwh\nV1,18:00,06:00,thirty\n")
    result = subprocess.run(
        [sys.executable, "-m", "sitectl", "simulate", "-c", str(files["site"]),
         "--timetable", str(files["timetable"]), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "line 2: energy_kwh 'thirty' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
