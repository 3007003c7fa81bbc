"""Fleet vehicles: binding by id tag and command, SoC targets as energy (issue #19.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitectl.config import Config, load_config
from sitectl.control.fleet import Fleet, VehicleRequest, predicted
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import Change, PlanForecast, PlanStep, SessionState, SiteState

NOW = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)  # injected clock

CONFIG = """\
site: {id: depot, limit_kw: 500, phase_limit_a: 400}
circuits:
  - {id: feeder, limit_a: 400, non_ev_max_a: 10}
chargers:
  - {id: CP1, circuit: feeder, max_current_a: 200, password: password-cp1-0000, connectors: 2}
storage: {path: s.sqlite}
fleet:
  vehicles:
    - {id: bus-17, id_tags: [TAG17], battery_kwh: 400, min_target_soc: 50, max_target_soc: 90,
       priority: 2, vdv_vehicle_id: V17}
    - {id: bus-18, battery_kwh: 300, energy_kwh: 120}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG)
    return load_config(path, environ={})[0]


def start(state: SiteState, connector: int, tag: str | None) -> SessionState:
    session = SessionState(
        f"CP1/{connector}",
        connector,
        NOW,
        id_tag_hash=hash_id_tag("depot", tag) if tag else None,
        charger_id="CP1",
    )
    state.chargers["CP1"].connectors[connector].session = session
    state.notify("session_started", session.session_id)
    return session


def test_an_id_tag_binds_and_the_soc_target_becomes_energy(config: Config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    seen: list[Change] = []
    Fleet(config, state)
    state.subscribe(seen.append)
    session = start(state, 1, "TAG17")
    assert session.vehicle_id == "bus-17"
    assert session.energy_wanted_kwh is None  # no SoC known yet: no SoC-based need
    connector = state.chargers["CP1"].connectors[1]
    connector.soc_percent = 30.0
    state.notify("measurement", "CP1/1")
    # (90 − 30) % of 400 kWh.
    assert session.energy_wanted_kwh == pytest.approx(240.0)
    assert session.need_source == "fleet"
    assert Change("session_needs", "CP1/1") in seen
    # Charging: 40 kWh delivered, SoC 40 %: the total stays put and nothing is announced.
    seen.clear()
    session.energy_wh, connector.soc_percent = 40_000.0, 40.0
    state.notify("measurement", "CP1/1")
    assert session.energy_wanted_kwh == pytest.approx(40 + 200)
    assert Change("session_needs", "CP1/1") not in seen


def test_an_operator_command_is_never_overwritten(config: Config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    Fleet(config, state)
    session = start(state, 1, "TAG17")
    session.energy_wanted_kwh, session.need_source = 55.0, "command"
    state.chargers["CP1"].connectors[1].soc_percent = 10.0
    state.notify("measurement", "CP1/1")
    assert session.energy_wanted_kwh == 55.0


def test_a_request_before_arrival_applies_at_a_command_binding(config: Config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    fleet = Fleet(config, state)
    departure = NOW + timedelta(hours=9)
    fleet.request(
        VehicleRequest(
            "bus-18",
            "urn:req:1",
            min_target_soc=60,
            max_target_soc=80,
            arrival_soc=20,
            departure=departure,
            priority=7,
        )
    )
    session = start(state, 2, None)  # no id tag: not bound yet
    assert session.vehicle_id is None
    fleet.bind("bus-18", "CP1", 2)
    assert session.vehicle_id == "bus-18"
    # No live SoC: from the arrival SoC, (80 − 20) % of 300 kWh for the whole session.
    assert session.energy_wanted_kwh == pytest.approx(180.0)
    assert (session.departure, session.departure_source) == (departure, "fleet")
    assert fleet.index.vehicle(session).priority == 7  # type: ignore[union-attr]
    targets = fleet.targets(session, None)
    assert (targets.min_kwh, targets.max_kwh) == pytest.approx((120.0, 180.0))
    fleet.request(VehicleRequest("bus-18", "urn:req:1", instruction="Terminate"))
    assert session.energy_wanted_kwh == 0.0  # nothing more to charge for it
    with pytest.raises(KeyError, match="unknown vehicle"):
        fleet.bind("bus-99", "CP1", 2)


def test_the_usual_need_without_a_soc_stays_an_assumption(config: Config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    fleet = Fleet(config, state)
    session = start(state, 2, None)
    fleet.bind("bus-18", "CP1", 2)
    assert session.energy_wanted_kwh is None
    terms = fleet.index.vehicle(session)
    assert terms is not None and (terms.energy_kwh, terms.priority) == (120.0, 1)


def test_predicted_reads_the_time_a_target_is_reached_off_the_plan() -> None:
    steps = tuple(PlanStep(NOW + timedelta(minutes=15 * k), 900.0, 100.0, 40.0) for k in range(4))
    found = PlanForecast("on_time", "", phases=3, steps=steps, planned_kwh=40.0, remaining_kwh=30)
    # 10 kWh per step: 25 kWh more is reached half-way through the third step.
    assert predicted(found, NOW, 5.0, 30.0) == NOW + timedelta(minutes=37.5)
    assert predicted(found, NOW, 5.0, 4.0) == NOW
    assert predicted(found, NOW, 0.0, 100.0) is None  # not within the plan, no ready time


def test_the_session_needs_command_binds_a_vehicle(config: Config) -> None:
    from sitectl.uplink.commands import handle_command

    state = SiteState(config, clock=lambda: NOW)
    Fleet(config, state)
    session = start(state, 2, None)
    state.chargers["CP1"].connectors[2].soc_percent = 50.0
    reply = handle_command(
        state, config, "session_needs", {"charger": "CP1", "connector": 2, "vehicle": "bus-17"}
    )
    assert reply["ok"] and reply["vehicle"] == "bus-17", reply
    assert session.vehicle_id == "bus-17"
    assert session.energy_wanted_kwh == pytest.approx(160.0)  # (90 − 50) % of 400 kWh
    refused = handle_command(
        state, config, "session_needs", {"charger": "CP1", "connector": 2, "vehicle": "bus-99"}
    )
    assert not refused["ok"] and refused["field"] == "vehicle"
    assert "unknown vehicle 'bus-99'" in refused["error"]


def test_a_terminated_request_is_not_revived_by_a_soc_report(config: Config) -> None:
    state = SiteState(config, clock=lambda: NOW)
    fleet = Fleet(config, state)
    session = start(state, 1, "TAG17")
    connector = state.chargers["CP1"].connectors[1]
    connector.soc_percent = 30.0
    state.notify("measurement", "CP1/1")
    assert session.energy_wanted_kwh == pytest.approx(240.0)
    session.energy_wh = 12_000.0
    fleet.request(VehicleRequest("bus-17", "urn:req:2", instruction="Terminate"))
    connector.soc_percent = 33.0
    state.notify("measurement", "CP1/1")
    assert session.energy_wanted_kwh == pytest.approx(12.0)


def test_a_min_target_soc_becomes_the_sessions_minimum_need(config: Config) -> None:
    # bus-17: 400 kWh, minimum 50 %, target 90 %, at 30 %: 80 kWh first, 240 kWh in all.
    from sitectl.control.meters import MeterSupervisor
    from sitectl.control.snapshot import ChargerMemory, ProblemBuilder

    state = SiteState(config, clock=lambda: NOW)
    Fleet(config, state)
    state.chargers["CP1"].connected = True
    session = start(state, 1, "TAG17")
    state.chargers["CP1"].connectors[1].soc_percent = 30.0
    state.notify("measurement", "CP1/1")
    assert session.energy_min_kwh == pytest.approx(80.0)
    assert session.energy_wanted_kwh == pytest.approx(240.0)
    session.energy_wh = 20_000.0  # 20 kWh delivered since: 60 kWh of the minimum are left
    memory = {"CP1": ChargerMemory(failsafe_installed=True)}
    built = ProblemBuilder(config).build(state, MeterSupervisor(5, 0, 1), memory, NOW, 100.0)
    (planned,) = built.problem.sessions
    assert planned.energy_kwh == pytest.approx(220.0)
    assert planned.min_energy_kwh == pytest.approx(60.0)
    # A vehicle without a minimum target plans none.
    state.chargers["CP1"].connectors[1].session = None
    start(state, 2, None)
    fleet_less = ProblemBuilder(config).build(state, MeterSupervisor(5, 0, 1), memory, NOW, 100.0)
    assert [s.min_energy_kwh for s in fleet_less.problem.sessions] == [0.0]


DC_CONFIG = """\
site: {id: depot, limit_kw: 500, phase_limit_a: 400}
circuits:
  - {id: feeder, limit_a: 400, non_ev_max_a: 10}
chargers:
  - {id: CP1, circuit: feeder, kind: dc, max_power_kw: 150, max_current_a: 250, efficiency: 0.95,
     password: password-cp1-0000, connectors: 2}
storage: {path: s.sqlite}
fleet:
  vehicles:
    - {id: bus-17, id_tags: [TAG17], battery_kwh: 400, max_target_soc: 100,
       taper_from_soc: 85, taper_share_at_full: 0.2}
    - {id: bus-18, id_tags: [TAG18], battery_kwh: 300}
"""


def test_a_dc_vehicle_with_a_soc_gets_its_taper_when_it_can_reach_it(tmp_path: Path) -> None:
    from optimizer.problem import soc_taper
    from sitectl.control.meters import MeterSupervisor
    from sitectl.control.snapshot import ChargerMemory, ProblemBuilder, efficiency

    path = tmp_path / "site.yaml"
    path.write_text(DC_CONFIG)
    config = load_config(path, environ={})[0]
    state = SiteState(config, clock=lambda: NOW)
    Fleet(config, state)
    state.chargers["CP1"].connected = True
    start(state, 1, "TAG17")
    start(state, 2, "TAG18")
    state.chargers["CP1"].connectors[1].soc_percent = 70.0
    memory = {"CP1": ChargerMemory(failsafe_installed=True)}
    builder = ProblemBuilder(config)

    def planned() -> dict:
        built = builder.build(state, MeterSupervisor(5, 0, 1), memory, NOW, 100.0)
        return {s.id: s for s in built.problem.sessions}

    sessions = planned()
    charger = config.chargers[0]
    full_a = 150_000 / (0.95 * 3 * 230)  # the AC input at full output
    kwh_per_ah = 3 * 230 * efficiency(charger) / 1000
    expected = soc_taper(full_a, 70.0, 400, kwh_per_ah, 85, 0.2)
    ((line_a, per_ah),) = sessions["CP1/1"].taper
    assert (line_a, per_ah) == pytest.approx(expected[0])
    assert sessions["CP1/2"].taper == ()  # no SoC known: no curve
    # Leaving in 20 minutes at 10 %: the taper (300 kWh away) cannot matter, no rows.
    state.chargers["CP1"].connectors[1].soc_percent = 10.0
    session = state.chargers["CP1"].connectors[1].session
    session.departure, session.departure_source = NOW + timedelta(minutes=20), "command"
    assert planned()["CP1/1"].taper == ()
