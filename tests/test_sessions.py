"""Sessions under way survive a restart of sitectl: kept in the store, found again (issue #16)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.router import Origin, RequestSeen, ResponseSeen
from sitectl.sessions import ENERGY_WRITE_PERIOD_S, ActiveSessions
from sitectl.state import SiteState
from sitectl.store import Store
from tests.ocpp.conftest import depot_config

NOW = datetime.now(UTC).replace(microsecond=0)


class Run:
    """One run of sitectl's session-keeping parts on a store file: state, observer, store."""

    def __init__(self, path, clock_s: list[float]) -> None:
        self.config = depot_config([{"id": "CP1", "connectors": 2}], None)
        self.state = SiteState(self.config, clock=lambda: NOW, monotonic=lambda: clock_s[0])
        self.store = Store(path)
        self.active = ActiveSessions(self.store, self.state)
        self.observer = StateObserver(self.state)

    def feed(self, *events) -> None:
        self.observer.link_events(SimpleNamespace(identity="CP1"), list(events))

    def rows(self) -> list[dict]:
        return [dict(r) for r in self.store.query("SELECT * FROM active_sessions")]


def start(connector: int, transaction_id: int, meter_start: int):
    request = {
        "connectorId": connector,
        "idTag": "BUS-7",
        "meterStart": meter_start,
        "timestamp": "x",
    }
    answer = {"transactionId": transaction_id, "idTagInfo": {"status": "Accepted"}}
    return ResponseSeen(Origin.CHARGER, "m", "StartTransaction", request, answer)


def meter(connector: int, transaction_id: int, register_wh: float):
    payload = {
        "connectorId": connector,
        "transactionId": transaction_id,
        "meterValue": [{"timestamp": "x", "sampledValue": [{"value": str(register_wh)}]}],
    }
    return RequestSeen(Origin.CHARGER, "m", "MeterValues", payload)


def test_a_session_under_way_is_restored_with_its_need_after_a_restart(tmp_path) -> None:
    clock = [0.0]
    first = Run(tmp_path / "db.sqlite", clock)
    first.feed(start(2, 42, 10_000))
    session = first.state.chargers["CP1"].connectors[2].session
    session.energy_wanted_kwh, session.need_source = 120.0, "command"
    session.departure = NOW + timedelta(hours=6)
    first.state.notify("session_needs", "CP1/2")
    first.feed(meter(2, 42, 30_000))  # within the write period: the energy is not yet written
    assert first.rows()[0]["energy_wh"] == 0
    clock[0] += ENERGY_WRITE_PERIOD_S
    first.feed(meter(2, 42, 40_000))
    assert first.rows()[0]["energy_wh"] == 30_000
    first.store.close()  # sitectl stops (crash, update, power cut of the PC)

    second = Run(tmp_path / "db.sqlite", clock)
    kept = second.state.restored_sessions[("CP1", 2)]
    assert kept.transaction_id == "42" and kept.energy_wanted_kwh == 120
    assert kept.departure == NOW + timedelta(hours=6) and kept.need_source == "command"
    second.feed(
        RequestSeen(
            Origin.CHARGER,
            "m",
            "StatusNotification",
            {"connectorId": 2, "status": "SuspendedEV", "errorCode": "NoError"},
        )
    )
    session = second.state.chargers["CP1"].connectors[2].session
    assert session is kept and session.origin == "restored"
    second.feed(meter(2, 42, 55_000))
    assert session.energy_wh == 45_000  # counted from the stored meter start
    second.feed(
        RequestSeen(
            Origin.CHARGER,
            "m",
            "StopTransaction",
            {"transactionId": 42, "meterStop": 60_000, "timestamp": "x"},
        )
    )
    assert second.rows() == []  # ended: no longer kept
    second.store.close()
    assert Run(tmp_path / "db.sqlite", clock).state.restored_sessions == {}


def test_stored_sessions_of_chargers_no_longer_configured_are_skipped(tmp_path) -> None:
    clock = [0.0]
    first = Run(tmp_path / "db.sqlite", clock)
    first.feed(start(1, 5, 0))
    first.store.execute("UPDATE active_sessions SET charger = 'GONE'")
    first.store.close()
    assert Run(tmp_path / "db.sqlite", clock).state.restored_sessions == {}
