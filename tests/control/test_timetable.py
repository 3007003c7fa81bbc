"""The CSV fleet timetable through the local API and `sitectl fleet import` (issue #19.3)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitectl.config import Config, load_config
from sitectl.control.fleet import Fleet
from sitectl.fleet_cli import read_timetable
from sitectl.http.server import HttpServer
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import SessionState, SiteState

NOW = datetime.now(UTC).replace(
    hour=20, minute=0, second=0, microsecond=0
)  # injected clock: today 20:00 UTC, never a literal date
TODAY, TOMORROW = NOW.date().isoformat(), (NOW + timedelta(days=1)).date().isoformat()
TOKEN = "timetable-test-token-0001"

CONFIG = f"""\
site: {{id: depot, limit_kw: 500, phase_limit_a: 400, timezone: UTC}}
circuits:
  - {{id: feeder, limit_a: 400, non_ev_max_a: 10}}
chargers:
  - {{id: CP1, circuit: feeder, max_current_a: 200, password: password-cp1-0000}}
storage: {{path: s.sqlite}}
http: {{listen_host: 127.0.0.1, token: {TOKEN}}}
fleet:
  vehicles:
    - {{id: bus-17, id_tags: [TAG17], battery_kwh: 400}}
    - {{id: bus-18}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG)
    return load_config(path, environ={})[0]


@pytest.fixture
def served(config: Config) -> Iterator[tuple[HttpServer, Fleet, SiteState]]:
    """The real HTTP server with a fleet, in its own thread (the CLI client is synchronous)."""
    state = SiteState(config, clock=lambda: NOW)
    fleet = Fleet(config, state)
    server = HttpServer(config, state, port=0, fleet=fleet)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    def serve() -> None:
        async def main() -> None:
            holder["task"] = asyncio.create_task(server.run())
            await server.ready.wait()
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await holder["task"]

        loop.run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    holder["loop"] = loop
    yield server, fleet, state
    loop.call_soon_threadsafe(holder["task"].cancel)
    thread.join(10)


def cli(
    server: HttpServer, config: Config, path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    import argparse

    from sitectl.fleet_cli import run

    args = argparse.Namespace(file=path, api_url=f"http://127.0.0.1:{server.port}", json=False)
    code = run(args, config)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_imported_timetable_plans_a_charging_bus_and_one_still_to_come(
    served: tuple[HttpServer, Fleet, SiteState],
    config: Config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, fleet, state = served
    session = SessionState(
        "tx-1", 1, NOW, charger_id="CP1", id_tag_hash=hash_id_tag("depot", "TAG17")
    )
    state.chargers["CP1"].connectors[1].session = session
    state.chargers["CP1"].connectors[1].soc_percent = 40.0
    state.notify("session_started", "tx-1")
    path = tmp_path / "timetable.csv"
    path.write_text(
        "vehicle;departure;target;note\nbus-17;05:10;90%;x\n\n"
        f"bus-18;{TOMORROW}T06:00:00+01:00;250 kWh;\n"
    )
    code, out = cli(server, config, path, capsys)
    assert code == 0, out
    assert "2 vehicle(s) planned: bus-17, bus-18" in out
    # bus-17 charges now: (90 − 40) % of 400 kWh, leaving at the next 05:10 (UTC site).
    assert session.energy_wanted_kwh == pytest.approx(200.0)
    assert session.departure == (NOW + timedelta(days=1)).replace(hour=5, minute=10)
    assert session.departure_source == "fleet"
    # bus-18 is not here yet: its request waits for it.
    assert fleet.requests["bus-18"].energy_kwh == 250.0
    assert fleet.requests["bus-18"].departure == (NOW + timedelta(days=1)).replace(hour=5, minute=0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("bus-99,05:10,90%", "row 1: unknown vehicle 'bus-99' (entries.0.vehicle)"),
        ("bus-17,25:10,90%", "neither 'HH:MM' nor a date-time (entries.0.departure)"),
        (f"bus-17,{TOMORROW}T06:00:00,90%", "needs a UTC offset"),
        (f"bus-17,{TODAY}T19:00:00Z,90%", "not within the next 7 days"),
        ("bus-17,05:10,120%", "is not a SoC (entries.0.target)"),
        ("bus-18,05:10,80%", "needs battery_kwh"),
        ("bus-17,05:10,lots", "neither '90%' nor '250 kWh'"),
    ],
)
def test_a_bad_row_refuses_the_timetable_and_names_it(
    served: tuple[HttpServer, Fleet, SiteState],
    config: Config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: str,
    message: str,
) -> None:
    server, fleet, _ = served
    path = tmp_path / "t.csv"
    path.write_text(f"vehicle,departure,target\nbus-17,05:10,250\n{rows}\n")
    code, out = cli(server, config, path, capsys)
    assert code == 1 and message.replace("row 1", "row 2").replace("entries.0", "entries.1") in out
    assert fleet.requests == {}  # all or nothing


def test_a_csv_without_its_columns_is_refused_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("bus,when\nbus-17,05:10\n")
    with pytest.raises(ValueError, match="no column vehicle, departure, target"):
        read_timetable(path)
    path.write_text("vehicle,departure,target\nbus-17,,90%\n")
    with pytest.raises(ValueError, match="line 2: no departure"):
        read_timetable(path)
