"""Reports the events ask for, from the grid meter's readings, posted to the stub VTN."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openadr3
import pytest

from devices.meter import Quality, Reading
from sitectl.openadr.reports import MeterHistory, due_reports
from tests.openadr.conftest import FakeClock, limit_interval

USAGE = {"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KWH"}
DEMAND = {"payloadType": "DEMAND", "readingType": "MEAN", "units": "KW"}


def reading(ts: datetime, energy_kwh: float | None, power_kw: float) -> Reading:
    return Reading(
        device="grid-meter",
        ts=ts,
        mono=0.0,
        quality=Quality.OK,
        power_total_kw=power_kw,
        energy_import_kwh=energy_kwh,
    )


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("register", [True, False], ids=["import register", "power only"])
async def test_usage_and_demand_reports_carry_the_meter_values(vtn, make_ven, register) -> None:
    clock = FakeClock()
    t0 = clock.now.replace(microsecond=0) + timedelta(minutes=1)
    flex = vtn.add_program("flex")
    event = vtn.add_event(
        flex["id"],
        [limit_interval(7, 400), limit_interval(8, 350)],
        eventName="peak",
        intervalPeriod={"start": iso(t0), "duration": "PT15M"},
        reportDescriptors=[USAGE, DEMAND],
    )
    ven, state = make_ven(clock)
    assert await ven.read_once()
    # The grid meter: 120 kW for the first quarter hour, 80 kW for the second, every 30 s.
    energy = 1000.0
    for k in range(0, 64):
        ts = t0 - timedelta(seconds=60) + timedelta(seconds=30 * k)
        power = 120.0 if ts < t0 + timedelta(minutes=15) else 80.0
        state.set_reading("grid-meter", reading(ts, energy if register else None, power))
        energy += power * 30 / 3600
    assert vtn.reports == []
    clock.advance(20 * 60)  # the first interval is over, the second is not: nothing is due
    assert await ven.read_once()
    assert vtn.reports == []
    clock.advance(12 * 60)
    assert await ven.read_once()
    sent = {r["payloadDescriptors"][0]["payloadType"]: r for r in vtn.reports}
    usage, demand = sent["USAGE"], sent["DEMAND"]
    assert usage["eventID"] == event["id"] and usage["clientName"] == "depot-north"
    assert usage["programID"] == flex["id"]
    (resource,) = usage["resources"]
    assert resource["resourceName"] == "depot"
    assert [i["id"] for i in resource["intervals"]] == [7, 8]  # the event's own interval ids
    assert resource["intervals"][0]["intervalPeriod"] == {"start": iso(t0), "duration": "PT900S"}
    values = [i["payloads"][0]["values"][0] for i in resource["intervals"]]
    # The edges fall between samples: the first quarter hour holds a sliver of 80 kW.
    assert values == pytest.approx([30.0, 20.0], abs=0.5)
    means = [i["payloads"][0]["values"][0] for i in demand["resources"][0]["intervals"]]
    assert means == pytest.approx([120.0, 80.0], abs=2.0)
    assert demand["payloadDescriptors"][0]["readingType"] == "MEAN"
    # Sent once.
    assert await ven.read_once()
    assert len(vtn.reports) == 2 and ven.reports_sent == 2


async def test_no_report_without_meter_data_or_for_what_was_before_the_start(vtn, make_ven) -> None:
    clock = FakeClock()
    flex = vtn.add_program("flex")
    start = clock.now - timedelta(hours=2)
    vtn.add_event(flex["id"], [limit_interval(0, 400)], reportDescriptors=[USAGE],
                  intervalPeriod={"start": iso(start), "duration": "PT15M"})  # fmt: skip
    vtn.add_event(flex["id"], [limit_interval(0, 400)], reportDescriptors=[USAGE],
                  intervalPeriod={"start": iso(clock.now), "duration": "PT15M"})  # fmt: skip
    ven, _ = make_ven(clock)
    assert await ven.read_once()
    clock.advance(16 * 60)
    assert await ven.read_once()  # the meter said nothing meanwhile
    assert vtn.reports == [] and ven.reports_sent == 0


def event(intervals: int, **descriptor) -> openadr3.Event:
    start = datetime.now(UTC).replace(microsecond=0)
    raw = {
        "objectType": "EVENT",
        "id": "e1",
        "programID": "p1",
        "intervalPeriod": {"start": iso(start), "duration": "PT1H"},
        "intervals": [limit_interval(n, 100) for n in range(intervals)],
        "reportDescriptors": [{**USAGE, **descriptor}],
    }
    return openadr3.coerce(raw)


def test_periodic_reports_follow_the_user_guide() -> None:
    # startInterval 1, numIntervals 2, frequency 2, repeat 3 (User Guide 7.5): three reports,
    # after intervals 1, 3 and 5, of the two intervals before each.
    periodic = event(6, startInterval=1, numIntervals=2, frequency=2, repeat=3)
    later = datetime.now(UTC) + timedelta(hours=7)
    done: set = set()
    due = due_reports(periodic, later, done)
    assert [[i for i, _, _ in d.intervals] for d in due] == [[0, 1], [2, 3], [4, 5]]
    # Defaults: one report of every interval once the last has ended.
    (whole,) = due_reports(event(3), later, set())
    assert [i for i, _, _ in whole.intervals] == [0, 1, 2]
    assert due_reports(event(3), later - timedelta(hours=5), set()) == []
    # A forecast is not sent (and said once).
    assert due_reports(event(3, historical=False), later, done) == []


def test_meter_history_thins_and_refuses_gaps() -> None:
    history = MeterHistory(spacing_s=5, max_gap_s=60)
    t0 = datetime.now(UTC)
    for k in range(0, 20):  # every second: one in five kept
        history.add(reading(t0 + timedelta(seconds=k), 10 + k / 3600, 3.6))
    assert len(history._samples) == 4
    assert history.energy_kwh(t0, t0 + timedelta(seconds=15)) == pytest.approx(15 / 3600)
    history.add(reading(t0 + timedelta(seconds=600), None, 3.6))  # a 10 min gap, no register
    assert history.energy_kwh(t0, t0 + timedelta(seconds=590)) is None
