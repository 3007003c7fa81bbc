"""What-if inputs: the timetable CSV, --set changes, the building load and the tariff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sitectl.config import GRID, load_config
from sitectl.whatif.inputs import InputError, load_site, load_tariff, read_building
from sitectl.whatif.timetable import (
    TimetableError,
    Trip,
    add_like,
    fleet_trips,
    read_timetable,
    visits,
)

ZONE = ZoneInfo("Europe/Berlin")


def noon_today() -> datetime:
    today = datetime.now(ZONE).date()
    return datetime.combine(today, datetime.min.time().replace(hour=12), ZONE)


def config_of(depot) -> tuple:
    files = depot()
    config, _ = load_config(files["site"], environ={})
    return config, files


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_timetable_reads_energy_and_soc_needs(depot) -> None:
    config, files = config_of(depot)
    trips = read_timetable(files["timetable"], config)
    assert [t.vehicle for t in trips] == ["VAN-1", "CAR-1", "BUS-1"]
    assert trips[0].need_kwh == 30 and trips[0].charger == "AC-1"
    assert trips[1].phases == 1
    assert trips[2].need_kwh == pytest.approx(120)  # (80 − 20) % of 200 kWh


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vehicle,arrival,departure,energy_kwh\nV1,18:00,06:00,30\nV2,18:00\n", "line 3: 2 fields"),
        (
            "vehicle,arrival,departure,energy_kwh,charger\nV1,18:00,06:00,30,NOPE\n",
            "unknown charger 'NOPE'",
        ),
        (
            "vehicle,arrival,departure,energy_kwh,charger\nV1,18:00,06:00,30,AC-1/3\n",
            "no connector '3'",
        ),
        ("vehicle,arrival,departure,energy_kwh\nV1,25:00,06:00,30\n", "arrival '25:00'"),
        (
            "vehicle,arrival,departure,energy_kwh\nV1,18:00,06:00,lots\n",
            "energy_kwh 'lots' is not a number",
        ),
        ("vehicle,arrival,departure\nV1,18:00,06:00\n", "no need"),
        (
            "vehicle,arrival,departure,arrival_soc,target_soc\nV1,18:00,06:00,20,80\n",
            "needs battery_kwh",
        ),
        ("vehicle,arrival\nV1,18:00\n", "no column departure"),
        ("vehicle,arrival,departure,colour\nV1,18:00,06:00,red\n", "unknown column colour"),
    ],
)
def test_a_bad_timetable_names_its_line_and_field(depot, tmp_path, text, message) -> None:
    config, _ = config_of(depot)
    with pytest.raises(TimetableError, match=message):
        read_timetable(write(tmp_path, text), config)


def test_daily_rows_repeat_and_an_overnight_stay_ends_the_next_morning() -> None:
    start = noon_today()
    trips = [Trip("BUS", "18:00", "06:00", energy_kwh=100)]
    found = visits(trips, start, start + timedelta(days=3), ZONE)
    assert [v.id for v in found] == ["BUS#1", "BUS#2", "BUS#3"]
    assert all(v.departure - v.arrival == timedelta(hours=12) for v in found)
    assert found[0].arrival.astimezone(ZONE).hour == 18


def test_a_stay_begun_before_the_start_starts_at_it_and_a_dated_row_is_one_visit() -> None:
    start = noon_today()
    once = (start + timedelta(hours=30)).isoformat()
    trips = [
        Trip("EARLY", "10:00", "14:00", energy_kwh=10),
        Trip("ONCE", once, "08:00", energy_kwh=10),
    ]
    found = visits(trips, start, start + timedelta(days=2), ZONE)
    early = [v for v in found if v.trip.vehicle == "EARLY"]
    assert early[0].arrival == start and early[0].departure.hour == 14
    assert [v.id for v in found if v.trip.vehicle == "ONCE"] == ["ONCE#1"]


def test_add_like_copies_a_vehicles_rows_onto_any_charger() -> None:
    trips = [Trip("BUS-01", "18:00", "05:00", energy_kwh=200, charger="DC-1")]
    more = add_like(trips, 3, "BUS-01")
    assert [t.vehicle for t in more] == ["BUS-01", "BUS-01+1", "BUS-01+2", "BUS-01+3"]
    assert all(t.charger is None for t in more[1:])
    with pytest.raises(TimetableError, match="no vehicle 'BUS-99'"):
        add_like(trips, 1, "BUS-99")


def test_fleet_vehicles_make_a_timetable_when_none_is_given(depot, write_config) -> None:
    path = write_config(
        depot()["site"].read_text() + "fleet:\n  vehicles:\n"
        "    - {id: B1, battery_kwh: 300, max_target_soc: 90, departure: '05:30'}\n"
        "    - {id: B2, energy_kwh: 80}\n"
    )
    config, _ = load_config(path, environ={})
    trips = fleet_trips(config, "18:00", 20)
    assert trips[0].need_kwh == pytest.approx(210) and trips[0].departure == "05:30"
    assert trips[1].need_kwh == 80 and trips[1].departure == config.control.default_departure


def test_set_changes_the_yaml_and_is_validated_like_it(depot) -> None:
    files = depot()
    config, _ = load_site(
        files["site"], ["site.limit_kw=1000", "chargers.DC-1.max_power_kw=40"], {}
    )
    assert config.site.limit_kw == 1000
    assert config.charger("DC-1").max_power_kw == 40


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("site.limt_kw=1000", "site.limt_kw (--set site.limt_kw=1000): unknown field 'limt_kw'"),
        ("site.limit_kw=-5", "--set site.limit_kw=-5"),
        ("chargers.NOPE.max_current_a=16", "no list item 'NOPE'"),
        ("site.limit_kw.x=1", "cannot override inside a plain value"),
        ("site.limit_kw", "expected PATH=VALUE"),
        ("=5", "expected PATH=VALUE"),
    ],
)
def test_a_bad_set_is_a_clear_error(depot, item, message) -> None:
    with pytest.raises(InputError) as caught:
        load_site(depot()["site"], [item], {})
    assert message in str(caught.value)


def test_building_load_is_interpolated_and_wraps_midnight(depot, tmp_path) -> None:
    config, files = config_of(depot)
    load = read_building(files["building"], config)
    day = noon_today().date()

    def at(hour: float) -> datetime:
        return datetime.combine(day, datetime.min.time(), ZONE) + timedelta(hours=hour)

    assert load.kw(GRID, at(7)) == pytest.approx(12)
    assert load.kw(GRID, at(18.75)) == pytest.approx(8)  # halfway from 10 to 6
    assert load.kw(GRID, at(22)) == pytest.approx(6 - 1 * 2 / 4)  # 20:00 6 kW -> 00:00 5 kW
    assert load.circuits == [GRID]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,kw\n07:00,x\n", "line 2: kw 'x'"),
        ("time,kw,circuit\n07:00,5,feeder\n", "chargers_only"),
        ("time,kw,circuit\n07:00,5,nowhere\n", "unknown circuit 'nowhere'"),
        ("time,kw\n07:00,5\n06:00,5\n", "not after the row before"),
        ("when,kw\n07:00,5\n", "needs the columns time and kw"),
    ],
)
def test_a_bad_building_load_names_its_line(depot, tmp_path, text, message) -> None:
    config, _ = config_of(depot)
    with pytest.raises(InputError, match=message):
        read_building(write(tmp_path, text, "b.csv"), config)


def test_a_tariff_file_is_checked_like_the_config_section(tmp_path) -> None:
    good = write(
        tmp_path,
        "tariff:\n  periods:\n    - {start: '00:00', eur_per_kwh: 0.2}\n"
        "  demand_charge_eur_per_kw: 9\n",
        "tariff.yaml",
    )
    assert load_tariff(good).demand_charge_eur_per_kw == 9
    bad = write(tmp_path, "periods:\n  - {start: '25:00', eur_per_kwh: 0.2}\n", "bad.yaml")
    with pytest.raises(InputError, match=r"tariff\.periods\.0\.start"):
        load_tariff(bad)


def test_no_literal_dates_needed(tmp_path) -> None:
    # The module builds times from the clock; a date-time row in the past gives no visit.
    past = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    start = noon_today()
    assert (
        visits([Trip("OLD", past, "06:00", energy_kwh=5)], start, start + timedelta(1), ZONE) == []
    )
