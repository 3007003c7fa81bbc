"""The daily utilization message through a real mosquitto, with an injected clock: once per
local day after midnight, the previous day's numbers, valid against its schema, retained,
never twice (not even across a restart), missed days caught up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import jsonschema
import pytest

from sitectl.config import Config
from sitectl.state import SiteState
from sitectl.store import Store
from sitectl.uplink.uplink import Uplink
from sitectl.utilization.daily import DailyUtilization
from sitectl.utilization.recorder import UtilizationRecorder
from tests.helpers import wait_for
from tests.uplink.support import Capture, unique_prefix
from tests.utilization.support import ZONE, Raw, depot

SCHEMA = Path(__file__).resolve().parents[2] / "sitectl" / "uplink" / "schemas" / "utilization.json"
ZONEINFO = ZoneInfo(ZONE)
#: The local day reported on: two days before the real today (the clock is injected anyway).
DAY = datetime.now(ZONEINFO).date() - timedelta(days=2)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), ZONEINFO)


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@dataclass
class Running:
    config: Config
    state: SiteState
    store: Store
    uplink: Uplink
    daily: DailyUtilization
    clock: list[datetime]


def write_day(store: Store) -> None:
    """DAY: recorded all day; CP1/1 charges 02:00-04:00 (11 kW); a night's session."""
    raw = Raw(store)
    raw.run(local(DAY, 0) - timedelta(hours=12), local(DAY + timedelta(days=1), 0))
    raw.status(local(DAY, 0) - timedelta(hours=12), "CP1", 0, "Connected")
    raw.status(local(DAY, 0) - timedelta(hours=12), "CP1", 1, "Available")
    raw.status(local(DAY, 2), "CP1", 1, "Charging")
    raw.status(local(DAY, 4), "CP1", 1, "Available")
    for minute in range(120):
        at = local(DAY, 2) + timedelta(minutes=minute)
        raw.minute("CP1", 1, at, sampled_s=60, drawing_s=60, energy_wh=11000 / 60, max_w=11000)
    night_start = local(DAY - timedelta(days=1), 18)  # the night before DAY, ending at its noon
    raw.session(
        session_id="CP1/1",
        charger="CP1",
        connector=1,
        started_ms=round(night_start.timestamp() * 1000),
        ended_ms=round(local(DAY, 4).timestamp() * 1000),
        energy_wh=22000.0,
        need_kwh=25.0,
        by_departure_wh=22000.0,
        outcome="missed",
    )
    raw.flush()


@pytest.fixture
async def running(tmp_path: Path, mosquitto) -> AsyncIterator[Running]:
    prefix = unique_prefix()
    config = depot(
        tmp_path,
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "topic_prefix": prefix},
    )
    clock = [local(DAY, 23, 50)]
    state = SiteState(config, clock=lambda: clock[0])
    store = Store(config.storage.path)
    write_day(store)
    uplink = Uplink(config, state, store, reconnect_delay_s=(0.1, 0.5))
    recorder = UtilizationRecorder(config, state, store)
    daily = DailyUtilization(
        config, state, store, uplink.publish, recorder.flush, check_period_s=0.05
    )
    tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(daily.run())]
    try:
        await wait_for(lambda: uplink.connected, timeout=10, message="uplink connected")
        yield Running(config, state, store, uplink, daily, clock)
    finally:
        for task in reversed(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()


async def test_the_previous_day_is_published_once_after_local_midnight(running: Running) -> None:
    prefix = running.config.topic_prefix
    capture = Capture("127.0.0.1", running.config.mqtt.port, prefix=prefix)
    try:
        # Before midnight, and within the delay after it: nothing.
        await wait_for(lambda: running.store.get_meta("utilization.daily_sent") is not None)
        running.clock[0] = local(DAY + timedelta(days=1), 0, 1)
        assert running.daily.due(running.clock[0]) == []
        running.clock[0] = local(DAY + timedelta(days=1), 0, 3)
        await wait_for(lambda: capture.on("utilization"), timeout=10, message="the message")
        await wait_for(lambda: running.uplink.outbox.count == 0, timeout=10)
        # Later the same day, and after a restart of the component: not again.
        running.clock[0] = local(DAY + timedelta(days=1), 12)
        again = DailyUtilization(
            running.config, running.state, running.store, running.uplink.publish
        )
        assert await again.tick() == []
        assert running.daily.due(running.clock[0]) == []
        messages = capture.on("utilization")
    finally:
        capture.close()
    assert len(messages) == 1
    data = messages[0].data
    validator().validate(data)
    assert data["day"] == DAY.isoformat()
    assert data["from"].endswith("Z") and data["window_s"] in (82800, 86400, 90000)
    assert data["totals"]["energy_kwh"] == pytest.approx(22.0, abs=0.01)  # 0.1 Wh a minute
    cp1 = next(c for c in data["chargers"] if c["charger"] == "CP1")
    assert cp1["shares"]["charging"] == pytest.approx(7200 / (2 * data["window_s"]), abs=1e-4)
    assert [n["night"] for n in data["nights"]] == [(DAY - timedelta(days=1)).isoformat()]
    assert data["nights"][0]["departures"]["missed"] == 1
    assert data["nights"][0]["shortfall_kwh"] == pytest.approx(3.0)
    # Retained: a subscriber that comes later gets it from the broker.
    late = Capture("127.0.0.1", running.config.mqtt.port, prefix=prefix)
    try:
        await wait_for(lambda: late.on("utilization"), timeout=10, message="the retained one")
        assert late.on("utilization")[0].retain
    finally:
        late.close()


async def test_days_missed_while_down_are_caught_up_in_order(running: Running) -> None:
    capture = Capture("127.0.0.1", running.config.mqtt.port, prefix=running.config.topic_prefix)
    try:
        await wait_for(lambda: running.store.get_meta("utilization.daily_sent") is not None)
        running.clock[0] = local(DAY + timedelta(days=3), 6)
        await wait_for(lambda: len(capture.on("utilization")) >= 3, timeout=10, message="3 days")
        days = [m.data["day"] for m in capture.on("utilization")]
        seqs = [m.data["seq"] for m in capture.on("utilization")]
    finally:
        capture.close()
    assert days == [(DAY + timedelta(days=k)).isoformat() for k in range(3)]
    assert seqs == sorted(seqs)
    for message in capture.on("utilization"):
        validator().validate(message.data)
