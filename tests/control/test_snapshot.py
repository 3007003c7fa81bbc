"""The problem builder and the dispatch planner, without sockets: the conservative rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from sitectl.config import Config
from sitectl.control.dispatch import Dispatcher
from sitectl.control.meters import MeterSupervisor
from sitectl.control.snapshot import ChargerMemory, ProblemBuilder, charger_node
from sitectl.ocpp.observe import hash_id_tag
from sitectl.state import CsmsProfile, SessionState, SiteState

NOW = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def config(**extra) -> Config:
    data = {
        "site": {
            "id": "s",
            "limit_kw": 500,
            "phase_limit_a": 200,
            "meter": "grid-meter",
            "non_ev_max_a": 50,
            "timezone": "UTC",
        },
        "circuits": [{"id": "feeder", "limit_a": 120}],
        "charger_defaults": {"circuit": "feeder", "max_current_a": 32, "password": "x" * 16},
        "chargers": [{"id": "A"}, {"id": "B", "phase_rotation": "L2-L3-L1"}],
        "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "h"}],
        "control": {
            "step_s": 900,
            "horizon_steps": 8,
            "default_departure": "06:00",
            "default_energy_kwh": 40,
            "ev_measurement_max_age_s": 30,
            "non_ev_hold_s": 0,
        },
    }
    data.update(extra)
    return Config.model_validate(data)


def trusted(currents) -> MeterSupervisor:
    meters = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    meters.watch("grid")
    meters.reading("grid", SimpleNamespace(ok=True, current_a=currents, error=None), 0.0)
    return meters


def plug(
    state: SiteState, charger: str, amps=(16.0, 16.0, 16.0), age_s=1.0, tag="T", energy_wh=0.0
) -> None:
    connector = state.chargers[charger].connectors[1]
    state.chargers[charger].connected = True
    connector.session = SessionState(
        f"{charger}/1",
        1,
        NOW - timedelta(hours=1),
        transaction_id="1",
        id_tag_hash=hash_id_tag("s", tag),
        energy_wh=energy_wh,
    )
    connector.current_a = amps
    connector.measured_at = NOW - timedelta(seconds=age_s)
    connector.current_mono = MONO - age_s  # freshness is judged on the monotonic clock


MONO = 100.0


def build(cfg, state, meters, memory=None, mono=MONO):
    """Build with every charger holding its fail-safe unless `memory` says otherwise."""
    memory = memory if memory is not None else {}
    for charger in cfg.chargers:
        memory.setdefault(charger.id, ChargerMemory(failsafe_installed=True))
    return ProblemBuilder(cfg).build(state, meters, memory, NOW, mono)


def test_non_ev_is_meter_minus_fresh_ev_draw_and_stale_counts_as_non_ev() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", (30.0, 30.0, 30.0), age_s=5)
    plug(state, "B", (20.0, 20.0, 20.0), age_s=120)  # stale: not subtracted
    built = build(cfg, state, trusted((100.0, 100.0, 100.0)))
    assert built.non_ev["grid"] == (70.0, 70.0, 70.0)
    assert built.measured["grid"] == (100.0, 100.0, 100.0)
    # The unmetered feeder declares no non-EV load of its own.
    assert built.non_ev["feeder"] == (0.0, 0.0, 0.0)


def test_failed_meter_assumes_the_worst_case_non_ev_load() -> None:
    cfg = config()
    state = SiteState(cfg)
    untrusted = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    untrusted.watch("grid")
    assert build(cfg, state, untrusted).non_ev["grid"] == (50.0, 50.0, 50.0)
    # Without a configured worst case: only the chargers' fail-safe currents are left.
    cfg = config(
        site={
            "id": "s",
            "limit_kw": 500,
            "phase_limit_a": 200,
            "meter": "grid-meter",
            "timezone": "UTC",
        }
    )
    assert build(cfg, SiteState(cfg), untrusted).non_ev["grid"] == (188.0, 188.0, 188.0)


def test_chargers_sitectl_cannot_steer_are_fixed_loads() -> None:
    cfg = config()
    state = SiteState(cfg)
    memory = {
        "A": ChargerMemory(
            commanded_a=25.0, commanded_at=90.0, disconnected_at=91.0, failsafe_installed=True
        ),
        "B": ChargerMemory(uncontrollable=True),
    }
    state.chargers["B"].connected = True
    built = build(cfg, state, trusted((0.0, 0.0, 0.0)), memory, mono=95.0)
    # A dropped out within the validity of its 25 A: still budgeted at 25 A.
    assert built.fixed["A"] == (25.0, 25.0, 25.0)
    assert built.fixed["B"] == (32.0, 32.0, 32.0)  # refuses profiles: its maximum
    assert built.steerable == ()
    # After the validity (and a period of margin for its clock): its fail-safe.
    later = 90.0 + cfg.control.profile_validity_s + cfg.control.period_s + 0.5
    assert build(cfg, state, trusted((0.0, 0.0, 0.0)), memory, mono=later).fixed["A"] == (
        6.0,
        6.0,
        6.0,
    )
    # A charger that never took sitectl's fail-safe holds no limit sitectl knows: its maximum.
    memory["A"].failsafe_installed = False
    assert build(cfg, state, trusted((0.0, 0.0, 0.0)), memory, mono=later).fixed["A"] == (
        32.0,
        32.0,
        32.0,
    )
    # Installing firmware: budgeted at the limit it holds or what it draws, whichever is more.
    memory["B"] = ChargerMemory(unavailable=True, failsafe_installed=True)
    assert build(cfg, state, trusted((0.0, 0.0, 0.0)), memory).fixed["B"] == (6.0, 6.0, 6.0)
    plug(state, "B", (20.0, 20.0, 20.0))
    assert build(cfg, state, trusted((0.0, 0.0, 0.0)), memory).fixed["B"] == (20.0, 20.0, 20.0)


def test_session_phases_bounds_and_needs() -> None:
    cfg = config(
        fleet={
            "vehicles": [
                {
                    "id": "bus",
                    "id_tags": ["BUS"],
                    "departure": "05:00",
                    "energy_kwh": 100,
                    "priority": 2,
                }
            ]
        }
    )
    state = SiteState(cfg)
    # A single-phase car on B, wired L2-L3-L1: it draws on the site's L2 only.
    plug(state, "B", (12.0, 0.0, 0.0), tag="BUS", energy_wh=30_000)
    state.chargers["B"].connectors[1].phase_low_samples = [0, 3, 3]  # seen low three times
    plug(state, "A", (16.0, 16.0, 16.0))
    state.chargers["A"].csms_profiles[5] = CsmsProfile(
        5,
        1,
        0,
        "TxDefaultProfile",
        {
            "chargingProfileId": 5,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "startSchedule": "2026-01-01T00:00:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}],
            },
        },
        NOW - timedelta(hours=2),
    )
    built = build(cfg, state, trusted((50.0, 50.0, 50.0)))
    sessions = {s.id: s for s in built.problem.sessions}
    bus = sessions["B/1"]
    assert bus.phases == (1,)
    assert bus.energy_kwh == pytest.approx(70.0)  # fleet need minus what it has had
    assert bus.departure_step == 36  # 20:00 -> 05:00 next day in 15 min steps
    assert bus.priority == 2 and bus.node == charger_node("B")
    car = sessions["A/1"]
    assert car.phases == (0, 1, 2) and car.max_a == 10  # the CSMS's own limit is a bound
    assert car.energy_kwh == 40 and car.departure_step == 40  # defaults: 40 kWh by 06:00


def test_tariff_periods_become_prices_per_step() -> None:
    cfg = config(
        tariff={
            "periods": [
                {"start": "00:00", "eur_per_kwh": 0.1},
                {"start": "21:00", "eur_per_kwh": 0.3},
            ]
        }
    )
    built = build(cfg, SiteState(cfg), trusted((0.0, 0.0, 0.0)))
    assert built.problem.tariff.price_per_kwh == (0.1,) * 4 + (0.3,) * 4


def dispatcher(cfg: Config) -> Dispatcher:
    async def never(identity, payload):
        raise AssertionError("plan() must not send")

    return Dispatcher(cfg, never, lambda c: "1.6")


def test_plan_deadband_decreases_refresh_and_rounding() -> None:
    cfg = config(control={"deadband_a": 1.0, "period_s": 5, "profile_validity_s": 30})
    plan = dispatcher(cfg).plan
    memory = {
        "A": ChargerMemory(commanded_a=20.0, commanded_at=100.0),
        "B": ChargerMemory(commanded_a=20.0, commanded_at=100.0),
    }
    # +0.5 A is inside the deadband: nothing; -0.5 A is a decrease: always sent.
    commands = plan({"A": (20.5, {}), "B": (19.5, {})}, memory, 101.0)
    assert [(c.charger_id, c.limit_a, c.kind) for c in commands] == [("B", 19.5, "decrease")]
    # Unchanged for validity - 2 periods: refreshed so it never lapses while sitectl lives.
    commands = plan({"A": (20.0, {}), "B": (20.0, {})}, memory, 120.0)
    assert {(c.charger_id, c.kind) for c in commands} == {("A", "refresh"), ("B", "refresh")}
    # Rounded down to 0.1 A; a value between 0 and the minimum is never sent.
    commands = plan({"A": (27.86, {}), "B": (4.0, {})}, memory, 101.0)
    assert [(c.charger_id, c.limit_a, c.kind) for c in commands] == [
        ("A", 27.8, "increase"),
        ("B", 0.0, "decrease"),
    ]


def test_compliance_window_allows_the_highest_recent_limit() -> None:
    memory = ChargerMemory()
    memory.record_limit(32.0, 100.0)
    memory.record_limit(32.0, 105.0)  # a refresh: nothing new
    memory.record_limit(10.0, 110.0)
    memory.record_limit(20.0, 150.0)
    assert len(memory.limit_history) == 3
    # 5 s after the decrease the charger may still be at 32 A; 60 s later not any more.
    assert memory.highest_limit_since(110.0 - 5) == 32.0
    assert memory.highest_limit_since(140.0) == 20.0  # 10 A was in force at 140, then 20 A
    assert memory.highest_limit_since(200.0) == 20.0


def test_a_departure_inside_the_first_step_asks_for_more_current() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A")
    session = state.chargers["A"].connectors[1].session
    session.energy_wanted_kwh = 1.0
    session.departure = NOW + timedelta(seconds=90)  # steps are 900 s
    car = build(cfg, state, trusted((0.0, 0.0, 0.0))).problem.sessions[0]
    assert car.departure_step == 1
    assert car.energy_kwh == pytest.approx(1.0 * 900 / 90)


def test_a_vehicle_that_draws_less_is_capped_and_probed_up_again() -> None:
    memory = ChargerMemory(commanded_a=32.0)
    for t in range(0, 70, 5):  # draws 16 A under a 32 A limit for a minute
        memory.learn_ev("CP1/1", 16.0, float(t), 60.0, 32.0, 6.0)
    assert memory.ev_cap_a == 18.0
    memory.commanded_a = 18.0
    memory.learn_ev("CP1/1", 17.5, 80.0, 60.0, 32.0, 6.0)  # it takes more: probe up
    assert memory.ev_cap_a == 22.0
    memory.learn_ev("CP1/2", 5.0, 90.0, 60.0, 32.0, 6.0)  # a new session starts from scratch
    assert memory.ev_cap_a is None and memory.ev_peak_a == 5.0
    # Limited by sitectl (draw close to its limit): nothing is learned.
    busy = ChargerMemory(commanded_a=16.0)
    for t in range(0, 200, 5):
        busy.learn_ev("CP2/1", 15.5, float(t), 60.0, 32.0, 6.0)
    assert busy.ev_cap_a is None


def test_a_connector_in_use_without_a_known_session_is_never_budgeted_0_a() -> None:
    cfg = config()
    state = SiteState(cfg)
    state.chargers["A"].connected = True
    state.chargers["A"].connectors[1].status = "SuspendedEVSE"  # waiting for current to start
    built = build(cfg, state, trusted((0.0, 0.0, 0.0)))
    # Fail-safe and minimum are 6 A: reserved as a load on every phase, the rest for the LP.
    assert built.floors == {"A/1": 6.0}
    floor = next(load for load in built.problem.loads if load.id == "floor:A/1")
    assert [amps[0] for amps in floor.current_a] == [6.0, 6.0, 6.0]
    (session,) = built.problem.sessions
    assert session.min_a == 0 and session.max_a == 26.0
    assert built.info["A/1"].need_source == "unknown"
    state.chargers["A"].connectors[1].status = "Available"
    assert build(cfg, state, trusted((0.0, 0.0, 0.0))).floors == {}


def test_unknown_need_never_caps_and_a_stated_one_does() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", energy_wh=39_500)  # the 40 kWh default is nearly reached
    session = state.chargers["A"].connectors[1].session
    built = build(cfg, state, trusted((0.0, 0.0, 0.0)))
    (planned,) = built.problem.sessions
    step_kwh = 32 * 3 * 230 * 900 / 3.6e6
    assert planned.energy_kwh == pytest.approx(step_kwh)  # still one step at full current
    assert not built.info["A/1"].capped and built.info["A/1"].need_source == "default"
    session.energy_wanted_kwh, session.need_source = 40.0, "vehicle"
    built = build(cfg, state, trusted((0.0, 0.0, 0.0)))
    assert built.problem.sessions[0].energy_kwh == pytest.approx(0.5)
    assert built.info["A/1"].capped and built.info["A/1"].need_source == "vehicle"


def test_a_dc_vehicles_stated_need_is_planned_at_the_chargers_ac_input() -> None:
    # The need (and the charger's energy register) is what reaches the vehicle; the LP plans
    # the AC input, more by 1/efficiency, or the vehicle leaves 7 % short.
    dc = {"id": "A", "kind": "dc", "max_power_kw": 50, "max_current_a": 80, "efficiency": 0.9}
    cfg = config(chargers=[dc, {"id": "B"}])
    state = SiteState(cfg)
    plug(state, "A", energy_wh=10_000)
    session = state.chargers["A"].connectors[1].session
    session.energy_wanted_kwh, session.need_source = 40.0, "vehicle"
    built = build(cfg, state, trusted((0.0, 0.0, 0.0)))
    assert built.problem.sessions[0].energy_kwh == pytest.approx(30.0 / 0.9)


def test_a_meter_reading_less_than_the_chargers_under_it_is_distrusted() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", (30.0, 30.0, 30.0))
    meters = trusted((5.0, 5.0, 5.0))  # a frozen gateway still answering an old value
    memory: dict = {}
    builder = ProblemBuilder(cfg)
    connector = state.chargers["A"].connectors[1]
    first = builder.build(state, meters, memory, NOW, MONO)
    assert first.implausible == {}  # a charger reports later than the meter: not at once
    later = MONO + cfg.control.ev_measurement_max_age_s
    connector.current_mono = later - 1
    built = builder.build(state, meters, memory, NOW, later)
    assert "frozen meter" in built.implausible["grid"]
    assert "grid" not in built.measured
    assert meters.measured("grid") is None  # failed until a new run of good readings
    # Without the meter the grid's non-EV load is its configured worst case.
    assert built.non_ev["grid"] == (50.0, 50.0, 50.0)


def test_the_far_horizon_is_planned_in_hours() -> None:
    # Issue #18: 24 h at 15 min is 96 steps; 2 h at 15 min then hours is 30.
    control = config().control.model_copy(update={"horizon_steps": 96})
    assert control.step_durations_s() == (900.0,) * 8 + (3600.0,) * 22
    uniform = control.model_copy(update={"far_step_s": 900})
    assert uniform.step_durations_s() == (900.0,) * 96
    # A horizon that does not end on a whole far step ends with a shorter one.
    short = control.model_copy(update={"horizon_steps": 10})
    assert short.step_durations_s() == (900.0,) * 8 + (1800.0,)


def test_a_car_leaving_inside_a_far_step_gets_its_share_of_it() -> None:
    cfg = config(
        control={"step_s": 900, "horizon_steps": 96, "default_energy_kwh": 40},
        tariff={
            "periods": [
                {"start": "00:00", "eur_per_kwh": 0.1},
                {"start": "22:30", "eur_per_kwh": 0.3},
            ]
        },
    )
    state = SiteState(cfg)
    plug(state, "A")
    session = state.chargers["A"].connectors[1].session
    session.departure = NOW + timedelta(hours=6, minutes=40)
    problem = build(cfg, state, trusted((0.0, 0.0, 0.0))).problem
    assert problem.steps == 30 and problem.durations_s.sum() == 24 * 3600
    car = problem.sessions[0]
    # Steps 0-7 cover 2 h, steps 8-12 one hour each: 6:40 is 40 min into step 12.
    assert car.departure_step == 13
    assert car.last_step_share == pytest.approx(40 / 60)
    # 22:00-23:00 is half at 0.1, half at 0.3: the step's price is the time-weighted mean.
    assert problem.tariff.price_per_kwh[8] == pytest.approx(0.2)
    assert problem.tariff.price_per_kwh[:8] == (0.1,) * 8
