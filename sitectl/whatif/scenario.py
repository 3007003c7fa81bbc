"""A what-if from its inputs to its report: what ``sitectl simulate`` and the benchmark run.

`Scenario` holds what a planner gives (files and changes); `prepare` checks all of it before
anything is simulated (every input error is an `InputError` or `TimetableError` with a clear
message), `run` simulates one prepared configuration and summarises it, `write_outputs` writes
the HTML, JSON and CSV files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.whatif.driver import SimOptions, simulate
from sitectl.whatif.html import render_html
from sitectl.whatif.inputs import (
    BuildingLoad,
    InputError,
    load_site,
    load_tariff,
    read_building,
    with_vehicles,
)
from sitectl.whatif.report import compare_sentences, summarize, write_csv, write_json
from sitectl.whatif.stored import STORE_PREFIX, read_stored_building
from sitectl.whatif.timetable import (
    TimetableError,
    Trip,
    Visit,
    add_like,
    fleet_trips,
    read_timetable,
    visits,
)

__all__ = ["Prepared", "Scenario", "prepare", "run", "write_outputs"]

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass
class Scenario:
    """What a what-if is asked: the site and its changes, the fleet, the day."""

    site: Path
    timetable: Path | None = None
    building: Path | None = None
    tariff: Path | None = None
    sets: list[str] = field(default_factory=list)
    add_vehicles: int = 0
    like: str | None = None
    days: float = 1.0
    step_s: float = 30.0
    plan_step_min: float | None = None
    start: str = "12:00"  # local time of day (today) or a date-time
    arrival: str = "18:00"  # fleet-section vehicles without a timetable
    arrival_soc: float = 20.0
    every_step: bool = False
    environ: dict[str, str] | None = None


@dataclass
class Prepared:
    """One configuration ready to simulate."""

    label: str
    config: Config
    visits: list[Visit]
    building: BuildingLoad
    options: SimOptions
    warnings: list[str]


def _start(text: str, zone: ZoneInfo, now: datetime | None = None) -> datetime:
    if _HHMM.match(text):
        hours, minutes = (int(x) for x in text.split(":"))
        today = (now or datetime.now(zone)).astimezone(zone).date()
        return datetime.combine(today, time(hours, minutes), zone)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--start '{text}' is neither a time of day (12:00) nor a date-time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _check(scenario: Scenario) -> None:
    if not 0 < scenario.days <= 31:
        raise InputError(f"--days {scenario.days:g}: give 0 < days ≤ 31")
    if not 1 <= scenario.step_s <= 300:
        raise InputError(f"--step-s {scenario.step_s:g}: give 1–300 s")
    if scenario.add_vehicles and not scenario.like:
        raise InputError("--add-vehicles needs --like VEHICLE (whose rows the new ones copy)")
    if scenario.like and not scenario.add_vehicles:
        raise InputError("--like needs --add-vehicles N")
    if scenario.add_vehicles < 0:
        raise InputError("--add-vehicles must be 0 or more")


def _building(source: Path | None, config: Config) -> BuildingLoad:
    """The building load: none, a CSV, or ``store:PATH`` (a running site's recorded history)."""
    if source is None:
        return BuildingLoad()
    text = str(source)
    if text.startswith(STORE_PREFIX):
        return read_stored_building(Path(text.removeprefix(STORE_PREFIX)), config)
    return read_building(source, config)


def prepare(scenario: Scenario, site: Path | None = None, label: str | None = None) -> Prepared:
    """Load and check everything for one configuration (the scenario's, or `site` with the
    scenario's timetable and building load, as for ``--compare``).

    Raises:
        InputError, TimetableError: what is wrong, where.
    """
    _check(scenario)
    path = site or scenario.site
    sets = list(scenario.sets) if site is None else []
    if scenario.plan_step_min is not None:
        seconds = scenario.plan_step_min * 60
        if seconds != int(seconds):
            raise InputError(f"--plan-step-min {scenario.plan_step_min:g}: whole seconds only")
        sets.append(f"control.step_s={int(seconds)}")
    config, warnings = load_site(path, sets, scenario.environ)
    if scenario.tariff is not None:
        config = config.model_copy(update={"tariff": load_tariff(scenario.tariff)})
    if scenario.step_s > config.control.step_s:
        raise InputError(
            f"--step-s {scenario.step_s:g} is longer than the plan step "
            f"(control.step_s {config.control.step_s} s)"
        )
    trips: list[Trip]
    if scenario.timetable is not None:
        trips = read_timetable(scenario.timetable, config)
    else:
        trips = fleet_trips(config, scenario.arrival, scenario.arrival_soc)
    if scenario.add_vehicles:
        trips = add_like(trips, scenario.add_vehicles, scenario.like or "")
    config = with_vehicles(config, trips)
    building = _building(scenario.building, config)
    zone = ZoneInfo(config.site.timezone)
    start = _start(scenario.start, zone)
    end = start + timedelta(days=scenario.days)
    found = visits(trips, start, end, zone)
    if not found:
        raise TimetableError(
            f"no vehicle is at the depot between {start.isoformat()} and {end.isoformat()}"
        )
    options = SimOptions(start, scenario.days, scenario.step_s, scenario.every_step)
    return Prepared(label or path.stem, config, found, building, options, warnings)


def run(prepared: Prepared) -> dict[str, Any]:
    """Simulate one prepared configuration; returns its summary (`report.summarize`)."""
    recording, alarms = simulate(
        prepared.config, prepared.visits, prepared.building, prepared.options
    )
    return summarize(recording, prepared.config, alarms, prepared.label, prepared.warnings)


def write_outputs(out: Path, runs: list[dict[str, Any]]) -> dict[str, Path]:
    """The report files in directory `out`: report.html, report.json, report.csv and
    report-vehicles.csv (with two runs, one CSV pair per run); returns them by kind."""
    out.mkdir(parents=True, exist_ok=True)
    compare = compare_sentences(runs[0], runs[1]) if len(runs) > 1 else []
    title = f"What-if: {runs[0]['site']['name'] or runs[0]['site']['id']}"
    if len(runs) > 1:
        title += f" — {runs[0]['label']} against {runs[1]['label']}"
    paths = {"html": out / "report.html", "json": out / "report.json"}
    paths["html"].write_text(render_html(runs, compare, title), encoding="utf-8")
    write_json(paths["json"], {"runs": runs, "compare": compare})
    for k, summary in enumerate(runs):
        suffix = "" if len(runs) == 1 else f"-{k + 1}-{_safe(summary['label'])}"
        csv_path = out / f"report{suffix}.csv"
        paths[f"csv{suffix}"] = csv_path
        paths[f"vehicles{suffix}"] = write_csv(csv_path, summary)
    return paths


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40] or "run"
