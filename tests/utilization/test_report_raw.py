"""The report's numbers against raw records written by hand: every expected share, energy and
count below is worked out from the records in the test itself."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sitectl.store import Store
from sitectl.utilization.report import open_store, utilization_report
from tests.utilization.support import ZONE, Raw, depot, ms, whole_hour

T0 = whole_hour(days_ago=3)
WINDOW = 7200.0  # [T0, T0 + 2 h)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def write_two_hours(raw: Raw, gapless: bool = False) -> None:
    """Two runs with sitectl down from minute 90 to 100; CP1/1 has a session from minute 10
    to 85; CP1/2 stays available; CP2 never connects; the feeder is at its limit 20-50."""
    raw.run(at(-60), at(90))
    raw.run(at(100), at(180))
    raw.status(at(-60), "CP1", 0, "Connected")
    raw.status(at(-60), "CP1", 1, "Available")
    raw.status(at(-60), "CP1", 2, "Available")
    raw.status(at(10), "CP1", 1, "Preparing")
    raw.status(at(12), "CP1", 1, "Charging")
    raw.status(at(70), "CP1", 1, "SuspendedEV")
    raw.status(at(80), "CP1", 1, "Finishing")
    raw.status(at(85), "CP1", 1, "Available")
    # The second run starts as the recorder starts one: disconnected, statuses unknown.
    raw.status(at(100), "CP1", 0, "Disconnected")
    raw.status(at(100), "CP1", 1, "Unknown")
    raw.status(at(100), "CP1", 2, "Unknown")
    raw.status(at(105), "CP1", 0, "Connected")
    raw.status(at(110), "CP1", 1, "Faulted")
    raw.status(at(115), "CP1", 1, "Available")
    for minute in range(10, 85):
        if 12 <= minute < 40:  # drawing the whole minute, 180 Wh
            values = {"sampled_s": 60, "drawing_s": 60, "energy_wh": 180.0, "max_w": 11000}
        elif 40 <= minute < 45 and not gapless:
            continue  # no measurement at all: the status (Charging) says it
        elif 40 <= minute < 70:  # drawing half of each minute, 90 Wh
            values = {"sampled_s": 60, "drawing_s": 30, "energy_wh": 90.0, "max_w": 10800}
        else:  # plugged in, not drawing
            values = {"sampled_s": 60, "drawing_s": 0, "energy_wh": 0.0, "max_w": 0}
        if minute == 20:
            values["max_w"] = 11500
        raw.minute("CP1", 1, at(minute), **values)
    for minute in range(120):
        if 90 <= minute < 100:
            continue
        raw.circuit(
            "feeder",
            at(minute),
            sampled_s=60,
            at_limit_s=60 if 20 <= minute < 50 else 0,
            limit_a=80.0 if 30 <= minute < 35 else 100.0,
            metered_s=60,
            mean_a=90.0,
            max_a=99.5 if minute == 25 else 95.0,
            deferred_wh=50.0 if 20 <= minute < 50 else 0.0,
        )
    raw.flush()


@pytest.fixture
def made(tmp_path: Path):
    config = depot(tmp_path)
    store = Store(config.storage.path)
    raw = Raw(store)
    yield config, store, raw
    store.close()


def report(config, start: datetime, end: datetime) -> dict:
    conn = open_store(config.storage.path)
    try:
        return utilization_report(conn, config, start, end, end + timedelta(days=1))
    finally:
        conn.close()


def connector(found: dict, charger: str, number: int) -> dict:
    return next(
        c for c in found["connectors"] if (c["charger"], c["connector"]) == (charger, number)
    )


def test_connector_shares_follow_the_raw_statuses_and_buckets(made) -> None:
    config, _, raw = made
    write_two_hours(raw)
    found = report(config, T0, T0 + timedelta(seconds=WINDOW))
    cp11 = connector(found, "CP1", 1)
    # Occupied from minute 10 to 85: 4500 s. Charging: 28 whole minutes drawing (12-40), the
    # 5 minutes without measurement under "Charging" (40-45), 25 minutes × 30 s (45-70).
    charging = 28 * 60 + 5 * 60 + 25 * 30
    expected = {
        "available": 600 + 300 + 300,  # 0-10, 85-90, 115-120
        "charging": charging,
        "idle": 4500 - charging,
        "unknown": 600 + 300,  # not recording 90-100; connected, status unknown 105-110
        "offline": 300,  # 100-105: the charger not connected
        "faulted": 300,  # 110-115
    }
    assert cp11["seconds"] == pytest.approx(expected)
    assert sum(cp11["seconds"].values()) == pytest.approx(WINDOW)
    assert cp11["shares"]["charging"] == pytest.approx(charging / WINDOW, abs=1e-4)
    energy_kwh = (28 * 180 + 25 * 90) / 1000
    assert cp11["energy_kwh"] == pytest.approx(energy_kwh)
    assert cp11["mean_power_kw"] == pytest.approx(energy_kwh / (charging / 3600), abs=0.01)
    assert cp11["peak_power_kw"] == 11.5
    cp12 = connector(found, "CP1", 2)
    assert cp12["seconds"] == pytest.approx(
        {
            "available": 5400,
            "unknown": 600 + 900,
            "offline": 300,
            "charging": 0,
            "idle": 0,
            "faulted": 0,
        }
    )
    cp2 = connector(found, "CP2", 1)  # never connected: offline whenever recorded
    assert cp2["seconds"]["offline"] == pytest.approx(6600)
    assert cp2["seconds"]["unknown"] == pytest.approx(600)
    assert found["recorded_s"] == pytest.approx(6600)
    # The charger adds its connectors up (connector-time).
    cp1 = next(c for c in found["chargers"] if c["charger"] == "CP1")
    assert cp1["seconds"]["charging"] == pytest.approx(charging)
    assert cp1["shares"]["available"] == pytest.approx((1200 + 5400) / (2 * WINDOW), abs=1e-4)
    assert found["totals"]["energy_kwh"] == pytest.approx(energy_kwh)
    assert found["totals"]["connectors"] == 3


def test_circuit_time_at_limit_deferred_energy_and_limit(made) -> None:
    config, _, raw = made
    write_two_hours(raw)
    found = report(config, T0, T0 + timedelta(seconds=WINDOW))
    feeder = next(c for c in found["circuits"] if c["node"] == "feeder")
    assert feeder["recorded_s"] == pytest.approx(110 * 60)
    assert feeder["at_limit_s"] == pytest.approx(30 * 60)
    assert feeder["share_at_limit"] == pytest.approx(30 / 110, abs=1e-4)
    assert feeder["deferred_kwh"] == pytest.approx(30 * 50 / 1000)
    assert feeder["lowest_limit_a"] == 80.0
    assert feeder["mean_current_a"] == pytest.approx(90.0)
    assert feeder["peak_current_a"] == 99.5
    grid = next(c for c in found["circuits"] if c["node"] == "grid")
    assert grid["recorded_s"] == 0 and grid["share_at_limit"] is None


def test_statuses_written_at_the_same_moment_count_in_the_order_written(made) -> None:
    config, _, raw = made
    raw.run(at(-60), at(60))
    for status in ("Disconnected", "Connected"):  # as a start of the recorder can write them
        raw.status(at(-30), "CP2", 0, status)
    for status in ("Unknown", "Available"):
        raw.status(at(-30), "CP2", 1, status)
    raw.flush()
    found = report(config, T0, at(60))
    assert connector(found, "CP2", 1)["seconds"]["available"] == pytest.approx(3600)


def test_a_bucket_cut_by_the_window_counts_in_proportion(made) -> None:
    config, _, raw = made
    write_two_hours(raw)
    # From minute 39.5 to 40.5: half of a 180 Wh minute, then a minute without measurement.
    found = report(config, at(39.5), at(40.5))
    cp11 = connector(found, "CP1", 1)
    assert cp11["energy_kwh"] == pytest.approx(0.09)
    assert cp11["seconds"]["charging"] == pytest.approx(60)


def test_rolled_up_buckets_give_the_same_numbers_where_measurements_cover_them(made) -> None:
    config, store, raw = made
    write_two_hours(raw, gapless=True)
    before = report(config, T0, T0 + timedelta(seconds=WINDOW))
    joined = raw.writer.rollup(int((T0 + timedelta(days=1)).timestamp()), 900)
    assert joined > 0
    spans = {r[0] for r in store.query("SELECT DISTINCT span_s FROM util_connector")}
    assert spans == {900}
    after = report(config, T0, T0 + timedelta(seconds=WINDOW))
    for key in ("connectors", "chargers", "circuits"):
        assert after[key] == before[key]


def test_expiry_keeps_the_last_status_before_the_cut(made) -> None:
    _, store, raw = made
    write_two_hours(raw)
    raw.writer.expire(int(at(50).timestamp()))
    assert not store.query("SELECT 1 FROM util_connector WHERE t < ?", (int(at(50).timestamp()),))
    kept = store.query(
        "SELECT status FROM util_status WHERE charger = 'CP1' AND connector = 1 AND at_ms < ?",
        (ms(at(50)),),
    )
    assert [r["status"] for r in kept] == ["Charging"]  # how it stood at the cut


def test_nights_add_up_their_sessions(made) -> None:
    config, store, raw = made
    zone = ZoneInfo(ZONE)
    night = (T0.astimezone(zone) - timedelta(days=2)).date()

    def local(day_offset: int, hour: int) -> datetime:
        return datetime.combine(night + timedelta(days=day_offset), time(hour), zone)

    def session(name: str, start: datetime, energy_kwh: float, **values) -> None:
        raw.session(
            session_id=name,
            charger="CP1",
            connector=1,
            started_ms=ms(start),
            ended_ms=ms(start + timedelta(hours=8)),
            energy_wh=energy_kwh * 1000,
            **values,
        )

    session("met", local(0, 18), 100, need_kwh=100, by_departure_wh=100_000, outcome="met")
    session(
        "missed",
        local(0, 19),
        72,
        need_kwh=80,
        by_departure_wh=70_000,
        outcome="missed",
        short_alarm=True,
    )
    session("no-need", local(0, 20), 30)
    session("next-night", local(1, 13), 50, need_kwh=50, by_departure_wh=50_000, outcome="met")
    raw.flush()
    store.execute(
        "INSERT INTO active_sessions(charger, connector, session_id, started_at, energy_wh, "
        "priority, updated_at) VALUES ('CP2', 1, 'CP2/9', ?, 10000, 1, ?)",
        (local(0, 23).isoformat(), local(0, 23).isoformat()),
    )
    start = local(0, 0)
    found = report(config, start, start + timedelta(days=2))
    nights = {n["night"]: n for n in found["nights"]}
    assert list(nights) == [night.isoformat(), (night + timedelta(days=1)).isoformat()]
    first = nights[night.isoformat()]
    noon = local(0, 12).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    assert first["start"] == noon
    assert first == {
        **first,
        "sessions": 4,
        "under_way": 1,
        "complete": False,
        "energy_kwh": pytest.approx(100 + 72 + 30 + 10),
        "sessions_with_need": 2,
        "needed_kwh": pytest.approx(180),
        "delivered_for_need_kwh": pytest.approx(172),
        "shortfall_kwh": pytest.approx(10),
        "departures": {"met": 1, "missed": 1, "unknown": 1},
        "short_alarms": 1,
    }
    second = nights[(night + timedelta(days=1)).isoformat()]
    assert (second["sessions"], second["complete"], second["departures"]["met"]) == (1, True, 1)
    # Sessions count per connector where they started in the window.
    assert connector(found, "CP1", 1)["sessions"] == 4
    assert connector(found, "CP2", 1)["sessions"] == 1
