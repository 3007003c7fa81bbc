"""``sitectl report``: the utilization report from the store file, for people and spreadsheets.

    sitectl report -c site.yaml --from -7d --to now          tables on the terminal
    sitectl report -c site.yaml --from 2026-03-01 --csv      the connectors as CSV
    sitectl report -c site.yaml --csv --table nights          the nights as CSV
    sitectl report -c site.yaml --json                        everything, as the API gives it

It reads the store (``storage.path``, or ``--store`` for a copy) read-only, so it runs beside a
running sitectl. Exit codes: 0, 1 (no store, no utilization data), 2 (bad arguments).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sitectl.config import Config
from sitectl.utilization.report import CATEGORIES, ReportError, open_store, utilization_report
from sitectl.utilization.times import parse_moment

__all__ = ["add_parser", "render_csv", "render_text", "run"]

TABLES = ("connectors", "chargers", "circuits", "nights")
_RELATIVE_ARG = re.compile(r"^-\d\S*$")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``report`` to the ``sitectl`` subcommands."""
    parser = commands.add_parser(
        "report",
        parents=[common],
        help="how the chargers and circuits were used (from the store)",
        description="Utilization over a window: per connector and charger the share of time "
        "offline, available, charging, plugged in but idle, faulted; sessions, energy, mean "
        "and peak power; per circuit the time at its limit and the energy it deferred; per "
        "night the energy delivered against the needs and the departures met.",
    )
    parser.add_argument("-c", "--config", required=True, help="the depot's YAML file")
    parser.add_argument(
        "--from",
        dest="start",
        default="-7d",
        help="start: ISO date or time (local unless it has an offset), now, today, "
        "yesterday, or relative: -7d, -12h, -2w (default -7d)",
    )
    parser.add_argument("--to", dest="end", default="now", help="end, the same way (default now)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV of one table (see --table)")
    out.add_argument("--json", action="store_true", help="everything as JSON (the API's)")
    parser.add_argument(
        "--table", choices=TABLES, default="connectors", help="the table --csv writes"
    )
    parser.add_argument("--store", help="read this store file instead of storage.path")
    # `--from -7d`: argparse takes a value starting with '-' only when it looks like a negative
    # number; relative times should too (the parser has no options that look like them).
    parser._negative_number_matcher = _RELATIVE_ARG


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``sitectl report``; returns the exit code."""
    zone = ZoneInfo(config.site.timezone)
    now = datetime.now(UTC)
    moments = {}
    for flag, text in (("--from", args.start), ("--to", args.end)):
        try:
            moments[flag] = parse_moment(text, zone, now)
        except ValueError as exc:
            print(f"error: {flag}: {exc}", file=sys.stderr)
            return 2
    start, end = moments["--from"], moments["--to"]
    if start >= end:
        print(
            f"error: --from ({args.start}) must be before --to ({args.end})",
            file=sys.stderr,
        )
        return 2
    if end - start > timedelta(days=3660):
        print("error: the window is longer than 10 years", file=sys.stderr)
        return 2
    path = args.store or config.storage.path
    try:
        conn = open_store(path)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        report = utilization_report(conn, config, start, end, now)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        sys.stdout.write(render_csv(report, args.table))
    else:
        print(render_text(report, zone))
    return 0


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _local(text: str, zone: ZoneInfo) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(headers), *(line(r) for r in rows)]


def render_text(report: dict[str, Any], zone: ZoneInfo) -> str:
    """The report as tables for a terminal."""
    totals = report["totals"]
    recorded = report["recorded_s"] / report["window_s"] if report["window_s"] else 0.0
    lines = [
        f"site {report['site']}: {_local(report['from'], zone)} – {_local(report['to'], zone)} "
        f"({report['timezone']}), recorded {100 * recorded:.0f} % of the time",
        f"{totals['connectors']} connectors: {totals['sessions']} sessions, "
        f"{totals['energy_kwh']:.1f} kWh; "
        + ", ".join(f"{k} {_pct(totals['shares'][k])}" for k in CATEGORIES),
        "",
    ]
    head = ["connector", *CATEGORIES, "sessions", "kWh", "mean kW", "peak kW"]
    rows = [
        [
            f"{c['charger']}/{c['connector']}",
            *(_pct(c["shares"][k]) for k in CATEGORIES),
            str(c["sessions"]),
            _num(c["energy_kwh"]),
            _num(c["mean_power_kw"]),
            _num(c["peak_power_kw"]),
        ]
        for c in report["connectors"]
    ]
    lines += [*_table(head, rows), ""]
    if any(c["connectors"] > 1 for c in report["chargers"]):
        head = ["charger", *CATEGORIES, "sessions", "kWh", "peak kW"]
        rows = [
            [
                c["charger"],
                *(_pct(c["shares"][k]) for k in CATEGORIES),
                str(c["sessions"]),
                _num(c["energy_kwh"]),
                _num(c["peak_power_kw"]),
            ]
            for c in report["chargers"]
        ]
        lines += [*_table(head, rows), ""]
    head = ["circuit", "lowest limit A", "at limit", "deferred kWh", "mean A", "peak A"]
    rows = [
        [
            c["node"],
            _num(c["lowest_limit_a"]),
            _pct(c["share_at_limit"]),
            _num(c["deferred_kwh"]),
            _num(c["mean_current_a"]),
            _num(c["peak_current_a"]),
        ]
        for c in report["circuits"]
    ]
    lines += [*_table(head, rows), ""]
    head = ["night", "sessions", "kWh", "needed kWh", "short kWh", "met", "missed", "unknown"]
    rows = [
        [
            n["night"] + ("" if n["complete"] else " *"),
            str(n["sessions"]),
            _num(n["energy_kwh"]),
            _num(n["needed_kwh"]),
            _num(n["shortfall_kwh"]),
            str(n["departures"]["met"]),
            str(n["departures"]["missed"]),
            str(n["departures"]["unknown"]),
        ]
        for n in report["nights"]
    ]
    lines += _table(head, rows)
    if any(not n["complete"] for n in report["nights"]):
        lines.append("* not over yet, or a session of it is under way")
    return "\n".join(lines)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for inner, item in value.items():
                out[f"{key}_{inner}"] = item
        else:
            out[key] = value
    return out


def render_csv(report: dict[str, Any], table: str) -> str:
    """One table of the report as CSV (nested numbers as ``shares_charging`` columns)."""
    rows = [_flat(r) for r in report[table]]
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
