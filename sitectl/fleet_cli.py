"""``sitectl fleet import FILE.csv``: a fleet timetable for depots without a VDV 463 system.

A client of the running sitectl's local API (``POST /api/fleet/timetable``), like ``sitectl
firmware``. The CSV has a header row with ``vehicle``, ``departure`` and ``target`` (other
columns are ignored); ``departure`` is ``HH:MM`` (local, next occurrence) or a date-time with
offset, ``target`` ``90%`` or ``250 kWh``:

    vehicle,departure,target
    bus-17,05:10,90%
    bus-18,2026-12-08T06:00:00+01:00,250 kWh
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Any

from sitectl.config import Config
from sitectl.firmware_cli import ApiError, LocalApi

__all__ = ["add_parser", "read_timetable", "run"]

COLUMNS = ("vehicle", "departure", "target")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fleet import`` to the ``sitectl`` parser."""
    fleet = commands.add_parser("fleet", parents=[common], help="fleet timetable (via sitectl)")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    upload = actions.add_parser("import", parents=[common], help="import a CSV timetable")
    upload.add_argument("file", type=Path, help="CSV with vehicle, departure, target")
    upload.add_argument("-c", "--config", required=True, help="the depot's YAML file")
    upload.add_argument("--api-url", help="sitectl's HTTP address (default: from the config)")
    upload.add_argument("--json", action="store_true", help="print the API's JSON answer")


def read_timetable(path: Path) -> list[dict[str, str]]:
    """The rows of a timetable CSV.

    Raises:
        ValueError: unreadable, or a column missing (the message says which, and where).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    dialect = csv.excel
    with contextlib.suppress(csv.Error):  # a one-column or odd header: plain commas
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        raise ValueError(f"{path}: the header has no column {', '.join(missing)}")
    rows = []
    for line, row in enumerate(reader, start=2):
        values = {c: (row.get(fields[c]) or "").strip() for c in COLUMNS}
        if not any(values.values()):
            continue  # a blank line
        empty = [c for c in COLUMNS if not values[c]]
        if empty:
            raise ValueError(f"{path} line {line}: no {', '.join(empty)}")
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``sitectl fleet import``; returns the exit code."""
    try:
        rows = read_timetable(args.file)
        reply = LocalApi(config, args.api_url).request(
            "POST", "/api/fleet/timetable", {"entries": rows}
        )
    except (ValueError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(f"{reply['applied']} vehicle(s) planned: {', '.join(reply['vehicles'])}")
    return 0
