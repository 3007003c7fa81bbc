"""``sitectl report`` as an operator runs it: a real process on a store written by hand."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitectl.store import MIGRATIONS, Store
from tests.utilization.support import Raw, depot
from tests.utilization.test_report_raw import T0, WINDOW, write_two_hours

REPO = Path(__file__).resolve().parents[2]


def sitectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sitectl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        cwd=REPO,
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    config = depot(tmp_path)
    store = Store(config.storage.path)
    try:
        write_two_hours(Raw(store))
    finally:
        store.close()
    return tmp_path / "site.yaml"


def test_csv_has_the_numbers_of_the_raw_records(site: Path) -> None:
    end = T0 + timedelta(seconds=WINDOW)
    result = sitectl("report", "-c", str(site), "--from", iso(T0), "--to", iso(end), "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["charger"], r["connector"]) for r in rows] == [
        ("CP1", "1"),
        ("CP1", "2"),
        ("CP2", "1"),
    ]
    cp11 = rows[0]
    charging = 28 * 60 + 5 * 60 + 25 * 30  # as in test_report_raw
    assert float(cp11["seconds_charging"]) == pytest.approx(charging)
    assert float(cp11["seconds_idle"]) == pytest.approx(4500 - charging)
    assert float(cp11["energy_kwh"]) == pytest.approx(7.29)
    circuits = sitectl(
        "report",
        "-c",
        str(site),
        "--from",
        iso(T0),
        "--to",
        iso(end),
        "--csv",
        "--table",
        "circuits",
    )
    feeder = next(r for r in csv.DictReader(io.StringIO(circuits.stdout)) if r["node"] == "feeder")
    assert float(feeder["at_limit_s"]) == pytest.approx(1800)


def test_text_and_json_with_relative_times(site: Path) -> None:
    text = sitectl("report", "-c", str(site), "--from", "-5d")
    assert text.returncode == 0, text.stderr
    assert "CP1/1" in text.stdout and "feeder" in text.stdout and "night" in text.stdout
    assert "Traceback" not in text.stderr
    result = sitectl("report", "-c", str(site), "--from", "-5d", "--to", "now", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["energy_kwh"] == pytest.approx(7.29)
    assert data["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "not-a-date"], "error: --from: 'not-a-date' is not a time"),
        (["--from", f"{datetime.now(UTC).year}-13-01"], "error: --from:"),
        (["--to", "-3x"], "error: --to:"),
        (["--from", "now", "--to", "-1d"], "error: --from (now) must be before --to (-1d)"),
        (["--from", "-100000d"], "more than 20 years"),
    ],
)
def test_bad_times_are_a_clear_error(site: Path, args: list[str], message: str) -> None:
    result = sitectl("report", "-c", str(site), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_missing_store_or_one_without_utilization_data(site: Path, tmp_path: Path) -> None:
    missing = sitectl("report", "-c", str(site), "--store", str(tmp_path / "nowhere.sqlite"))
    assert missing.returncode == 1
    assert "error: no store at" in missing.stderr and "Traceback" not in missing.stderr
    old = tmp_path / "old.sqlite"
    Store(old, migrations=MIGRATIONS).close()
    older = sitectl("report", "-c", str(site), "--store", str(old))
    assert older.returncode == 1
    assert "holds no utilization data" in older.stderr and "Traceback" not in older.stderr
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    broken = sitectl("report", "-c", str(site), "--store", str(garbage))
    assert broken.returncode == 1
    assert "cannot read it as sitectl's store" in broken.stderr
    assert "Traceback" not in broken.stderr
