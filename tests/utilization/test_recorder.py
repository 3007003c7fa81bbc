"""The recorder on a site state driven by hand (injected clocks): what it stores, and the
report over it against what the state went through."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sitectl.state import CircuitStatus, SessionPlan, SessionState, Severity, SiteState
from sitectl.store import Store
from sitectl.utilization.recorder import UtilizationRecorder
from sitectl.utilization.report import open_store, utilization_report
from tests.helpers import wait_for
from tests.utilization.support import depot, whole_hour

STEP_S = 10


class Depot:
    """The state, its clocks and the recorder, stepped 10 s at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = depot(tmp_path)
        # Off the minute, so that samples straddle the bucket edges.
        self.now = whole_hour(days_ago=1) + timedelta(seconds=5)
        self.mono = 10_000.0
        self.state = SiteState(self.config, clock=lambda: self.now, monotonic=lambda: self.mono)
        self.store = Store(self.config.storage.path)
        self.recorder = UtilizationRecorder(self.config, self.state, self.store)
        self.cp1 = self.state.chargers["CP1"]
        self.connector = self.cp1.connectors[1]
        self.power_kw = 0.0

    def status(self, status: str) -> None:
        self.connector.status = status
        self.state.notify("connector", "CP1/1")

    def run(self, seconds: int, circuit_planned_a: float = 20.0) -> None:
        """Steps of 10 s: the measurements of the connector stay as set, fresh."""
        for _ in range(seconds // STEP_S):
            self.now += timedelta(seconds=STEP_S)
            self.mono += STEP_S
            c = self.connector
            c.power_kw, c.power_mono = self.power_kw, self.mono
            amps = self.power_kw * 1000 / 3 / 230
            c.current_a, c.current_mono = (amps, amps, amps), self.mono
            if c.energy_register_wh is not None:
                c.energy_register_wh += self.power_kw * STEP_S / 3.6
                if c.session is not None:
                    c.session.energy_wh = c.energy_register_wh - (c.session.meter_start_wh or 0)
            self.state.control.last_cycle_at = self.now
            self.state.control.circuits["feeder"] = CircuitStatus(
                (100.0,) * 3, (40.0,) * 3, (5.0,) * 3, (circuit_planned_a,) * 3, "measured"
            )
            self.recorder.sample()


@pytest.fixture
def site(tmp_path: Path):
    made = Depot(tmp_path)
    yield made
    made.store.close()


def test_a_session_is_recorded_and_reported_as_it_happened(site: Depot) -> None:
    start = site.now
    site.recorder.start()
    site.cp1.connected = True
    site.state.notify("charger_connected", "CP1")
    site.status("Available")
    site.status("Available")  # a repeated status is no change
    site.run(300)
    site.status("Preparing")
    site.connector.energy_register_wh = 1000.0
    site.run(60)
    # The session starts, held by the feeder at its limit: 16 A given, the connector takes 32.
    plugged = site.now
    session = SessionState("CP1/7", 1, plugged, transaction_id="7", meter_start_wh=1000.0)
    session.charger_id = "CP1"
    site.connector.session = session
    site.state.notify("session_started", session.session_id)
    departure = plugged + timedelta(minutes=20)
    site.state.control.sessions["CP1/1"] = SessionPlan(
        departure,
        "vehicle",
        5.0,
        "vehicle",
        True,
        16.0,
        limited_by=({"kind": "circuit", "node": "feeder", "text": "", "short": ""},),
    )
    site.status("Charging")
    site.power_kw = 11.0
    site.state.raise_alarm("departure_short", "CP1/1", Severity.WARNING, "short")
    site.run(1800, circuit_planned_a=99.5)
    site.state.control.sessions.clear()
    site.status("SuspendedEV")
    site.power_kw = 0.0
    site.run(300)
    site.connector.session = None
    session.ended_at = site.now
    site.state.ended_sessions.append(session)
    site.state.notify("session_ended", session.session_id)
    site.status("Available")
    site.run(120)
    end = site.now
    site.recorder.stop()

    statuses = site.store.query(
        "SELECT status FROM util_status WHERE charger = 'CP1' AND connector = 1 ORDER BY at_ms"
    )
    assert [r["status"] for r in statuses] == [
        "Unknown",
        "Available",
        "Preparing",
        "Charging",
        "SuspendedEV",
        "Available",
    ]
    rows = site.store.query("SELECT * FROM util_sessions")
    assert len(rows) == 1
    row = rows[0]
    # By the departure (20 min at 11 kW) it had 3.67 kWh of its 5: missed.
    assert row["by_departure_wh"] == pytest.approx(11_000 * 20 / 60, abs=1)
    assert (row["outcome"], row["short_alarm"], row["need_kwh"]) == ("missed", 1, 5.0)
    assert row["energy_wh"] == pytest.approx(5500, abs=1)

    conn = open_store(site.config.storage.path)
    try:
        found = utilization_report(conn, site.config, start, end, end)
    finally:
        conn.close()
    assert found["recorded_s"] == pytest.approx((end - start).total_seconds())
    cp11 = next(c for c in found["connectors"] if (c["charger"], c["connector"]) == ("CP1", 1))
    assert cp11["seconds"] == pytest.approx(
        {
            "available": 300 + 120,
            "charging": 1800,
            "idle": 60 + 300,  # plugged in, not drawing: Preparing, then SuspendedEV
            "offline": 0,
            "faulted": 0,
            "unknown": 0,
        }
    )
    assert cp11["energy_kwh"] == pytest.approx(5.5, abs=0.005)
    assert cp11["peak_power_kw"] == pytest.approx(11.0)
    assert cp11["mean_power_kw"] == pytest.approx(11.0, abs=0.02)
    assert cp11["sessions"] == 1
    cp2 = next(c for c in found["connectors"] if c["charger"] == "CP2")
    assert cp2["seconds"]["offline"] == pytest.approx((end - start).total_seconds())
    feeder = next(c for c in found["circuits"] if c["node"] == "feeder")
    assert feeder["at_limit_s"] == pytest.approx(1800)
    # (32 A wanted − 16 A given) · 3 phases · 230 V for half an hour.
    assert feeder["deferred_kwh"] == pytest.approx(16 * 3 * 230 / 1000 * 0.5, abs=0.01)
    assert feeder["mean_current_a"] == pytest.approx(40.0)
    assert feeder["lowest_limit_a"] == 100.0


def test_a_vehicle_taking_less_than_it_got_defers_nothing(site: Depot) -> None:
    site.recorder.start()
    site.cp1.connected = True
    site.status("Charging")
    session = SessionState("CP1/8", 1, site.now, transaction_id="8")
    session.charger_id = "CP1"
    site.connector.session = session
    site.state.control.sessions["CP1/1"] = SessionPlan(
        site.now + timedelta(hours=1),
        "default",
        None,
        "unknown",
        False,
        16.0,
        limited_by=({"kind": "circuit", "node": "feeder", "text": "", "short": ""},),
    )
    site.power_kw = 5 * 3 * 230 / 1000  # 5 A, far below the 16 A it was given
    site.run(120, circuit_planned_a=99.5)
    site.recorder.stop()
    deferred = site.store.query(
        "SELECT sum(deferred_dwh) AS d, sum(at_limit_s) AS s FROM util_circuit"
    )
    assert deferred[0]["d"] == 0
    assert deferred[0]["s"] == pytest.approx(120, abs=1)


async def test_batches_are_written_off_the_event_loop_and_a_failed_write_is_not_raised(
    site: Depot,
) -> None:
    site.recorder.start()
    site.run(120)
    threads: list[str] = []
    write = site.recorder.writer.write

    def spy(batch) -> None:
        threads.append(threading.current_thread().name)
        write(batch)

    site.recorder.writer.write = spy  # type: ignore[method-assign]
    await site.recorder.flush()
    assert threads and threads[0] != threading.current_thread().name
    assert site.store.query("SELECT count(*) AS n FROM util_circuit")[0]["n"] >= 1

    def broken(batch) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    site.recorder.writer.write = broken  # type: ignore[method-assign]
    site.run(120)
    await site.recorder.flush()  # logged and counted, never raised
    assert site.recorder.lost > 0


async def test_the_component_records_while_it_runs_and_writes_the_rest_when_stopped(
    tmp_path: Path,
) -> None:
    config = depot(tmp_path, sample_period_s=1, flush_period_s=1)
    state = SiteState(config)
    store = Store(config.storage.path)
    try:
        recorder = UtilizationRecorder(config, state, store)
        task = asyncio.create_task(recorder.run())
        await wait_for(
            lambda: bool(store.query("SELECT 1 FROM util_runs WHERE last_ms > started_ms")),
            timeout=15,
            message="a run written",
        )
        state.chargers["CP2"].connected = True
        state.notify("charger_connected", "CP2")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        link = store.query(
            "SELECT status FROM util_status WHERE charger = 'CP2' AND connector = 0 ORDER BY at_ms"
        )
        assert [r["status"] for r in link] == ["Disconnected", "Connected"]
    finally:
        store.close()
