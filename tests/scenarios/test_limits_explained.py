"""Why this limit (issue #19.2), end to end: a simulated depot on real sockets, and every
vehicle held below what it could take names what holds it — checked against what flows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from ocpp.v201 import call as call201

from sitectl.config.fleet import FleetConfig
from sitectl.limits import GridLimit
from sitectl.sim.charger import SimEv
from sitectl.sim.csms import StubCsms
from sitectl.sim.quirks import Quirks
from sitectl.state import LimitOverride
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config
from tests.scenarios.test_csms_profiles import station_max_16


def reasons(site, key: str) -> list[dict]:
    plan = site.state.control.sessions.get(key)
    return list(plan.limited_by) if plan is not None else []


def first(site, key: str, kind: str) -> dict | None:
    return next((item for item in reasons(site, key) if item["kind"] == kind), None)


async def test_two_vehicles_on_a_full_feeder_name_it_and_each_other(tmp_path, make_site):
    config = scenario_config(
        tmp_path, [{"id": "A"}, {"id": "B"}], feeders=[{"id": "feeder", "limit_a": 40}]
    )
    site = await make_site(config)
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))

    def both_named() -> bool:
        for me, other in (("A/1", "B/1"), ("B/1", "A/1")):
            item = first(site, me, "circuit")
            if item is None or item["node"] != "feeder":
                return False
            if other not in [s["session"] for s in item["shared_with"]]:
                return False
        return True

    await wait_for(
        lambda: site.draw("A") > 15 and site.draw("B") > 15 and both_named(),
        timeout=15,
        message=lambda: f"A: {reasons(site, 'A/1')}, B: {reasons(site, 'B/1')}",
    )
    item = first(site, "A/1", "circuit")
    assert item["limit"] == 40.0 and abs(item["headroom"]) <= 0.5
    assert "feeder" in item["text"] and "B/1" in item["text"]
    # What flows agrees: the feeder is full, and neither vehicle gets its 32 A.
    assert site.draw("A") + site.draw("B") <= 40 + 0.5
    assert site.draw("A") < 30 and site.draw("B") < 30


async def test_an_operator_override_is_named_with_who_and_until_when(tmp_path, make_site):
    config = scenario_config(tmp_path, [{"id": "A"}])
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(lambda: site.draw("A") > 30, timeout=10, message="A charging at 32 A")
    await site.cycles(1)
    assert reasons(site, "A/1") == []  # it gets what it can take: nothing to explain
    until = datetime.now(UTC) + timedelta(minutes=5)
    site.state.overrides["feeder"] = LimitOverride("feeder", (16.0, 16.0, 16.0), until, "mqtt")
    site.loop.trigger()
    await wait_for(
        lambda: site.draw("A") < 16.5 and first(site, "A/1", "override") is not None,
        timeout=10,
        message=lambda: f"draws {site.draw('A'):.1f} A; reasons {reasons(site, 'A/1')}",
    )
    override = first(site, "A/1", "override")
    assert override["node"] == "feeder" and override["source"] == "operator:mqtt"
    assert override["until"] == until.isoformat() and override["limit"] == 16.0
    circuit = first(site, "A/1", "circuit")
    assert circuit is not None and circuit["node"] == "feeder" and circuit["limit"] == 16.0
    # Lifted: the reasons go with it.
    del site.state.overrides["feeder"]
    site.loop.trigger()
    await wait_for(
        lambda: site.draw("A") > 30 and reasons(site, "A/1") == [],
        timeout=10,
        message=lambda: f"draws {site.draw('A'):.1f} A; reasons {reasons(site, 'A/1')}",
    )


async def test_a_non_compliant_neighbour_is_named_as_what_fills_the_feeder(tmp_path, make_site):
    # A accepts its limits and draws what its vehicle wants anyway; sitectl finds it out and
    # budgets it at its maximum: B gets what is left, and says why.
    config = scenario_config(
        tmp_path, [{"id": "A"}, {"id": "B"}], feeders=[{"id": "feeder", "limit_a": 48}]
    )
    site = await make_site(config, quirks={"A": Quirks(ignores_limits=True)})
    await site.depot.plug_in("A", SimEv(max_a=32))
    await site.depot.plug_in("B", SimEv(max_a=32))

    def named() -> bool:
        fixed = first(site, "B/1", "fixed_load")
        return fixed is not None and fixed["charger"] == "A" and "non-compliant" in fixed["text"]

    await wait_for(
        lambda: site.state.chargers["A"].compliance == "noncompliant" and named(),
        timeout=15,
        message=lambda: f"A {site.state.chargers['A'].compliance}; B: {reasons(site, 'B/1')}",
    )
    await wait_for(lambda: site.draw("B") <= 16.5, timeout=10, message="B to give way")
    mark = time.monotonic()
    fixed = first(site, "B/1", "fixed_load")
    assert fixed["budget_a"] == 32.0 and fixed["node"] == "feeder"
    circuit = first(site, "B/1", "circuit")
    assert circuit is not None and circuit["node"] == "feeder" and circuit["limit"] == 48.0
    assert "A/1" not in site.state.control.sessions  # not steered: budgeted, not planned
    assert site.draw("A") > 30  # it really takes its 32 A
    await site.cycles(4)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S


async def test_a_cheaper_hour_defers_the_vehicle_and_says_until_when(tmp_path, make_site):
    # Expensive now, cheap from the next quarter hour on (times of day from the real clock:
    # the site runs on it); the vehicle's small default need fits in the cheap steps.
    now = datetime.now(UTC)
    cheap = (now + timedelta(minutes=15)).replace(second=0, microsecond=0)
    expensive = now - timedelta(minutes=5)
    tariff = {
        "periods": [
            {"start": expensive.strftime("%H:%M"), "eur_per_kwh": 0.40},
            {"start": cheap.strftime("%H:%M"), "eur_per_kwh": 0.10},
        ]
    }
    config = scenario_config(
        tmp_path, [{"id": "A"}], tariff=tariff, control={"default_energy_kwh": 2}
    )
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(
        lambda: first(site, "A/1", "tariff") is not None,
        timeout=10,
        message=lambda: f"reasons {reasons(site, 'A/1')}",
    )
    item = first(site, "A/1", "tariff")
    assert item["short"].startswith("deferred to ") and item["short"].endswith(", cheaper")
    # A step the price change falls into may get a mean price: cheaper, not always 0.10.
    assert item["price_now"] == 0.4 and 0.1 <= item["price_then"] < 0.4
    at = datetime.fromisoformat(item["at"])
    assert now < at <= cheap + timedelta(minutes=5)  # the first cheap step of the plan
    await site.cycles(3)
    assert site.draw("A") < 1.0  # and it really waits


async def test_a_vehicle_drawing_less_than_offered_is_capped_at_what_it_takes(tmp_path, make_site):
    # A vehicle that never draws more than 12 A: sitectl learns it (ev_learn_s) and plans it
    # at its peak plus 2 A, and says so.
    config = scenario_config(tmp_path, [{"id": "A"}])
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=12))
    await wait_for(
        lambda: first(site, "A/1", "ev_cap") is not None,
        timeout=15,
        message=lambda: f"reasons {reasons(site, 'A/1')}",
    )
    item = first(site, "A/1", "ev_cap")
    assert item["node"] == "A" and item["connector_max"] == 32.0
    assert 12.0 <= item["limit"] <= 15.0
    assert site.draw("A") <= 12.5


async def test_no_room_for_a_second_minimum_pauses_one_and_says_so(tmp_path, make_site):
    # 10 A for two vehicles of 6 A minimum (fail-safes of 0 A, so the config holds).
    chargers = [{"id": c, "failsafe_current_a": 0} for c in "AB"]
    config = scenario_config(tmp_path, chargers, feeders=[{"id": "feeder", "limit_a": 10}])
    site = await make_site(config)
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))

    def paused() -> str | None:
        return next((k for k in ("A/1", "B/1") if first(site, k, "min_current")), None)

    await wait_for(
        lambda: paused() is not None,
        timeout=10,
        message=lambda: f"A: {reasons(site, 'A/1')}, B: {reasons(site, 'B/1')}",
    )
    key = paused()
    item = first(site, key, "min_current")
    assert item["node"] == "feeder" and "below its minimum 6 A" in item["short"]
    other = "B/1" if key == "A/1" else "A/1"
    assert [s["session"] for s in item["shared_with"]] == [other]
    await site.cycles(2)
    assert site.draw(key[0]) < 1.0 and site.draw(other[0]) > 8  # one charges, one waits


async def test_a_frozen_meter_puts_the_connection_on_its_fail_safe_budget_and_says_so(
    tmp_path, make_site
):
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}, {"id": "C"}])
    site = await make_site(config, {"feeder": lambda t: (20.0,) * 3})
    await wait_for(
        lambda: site.state.control.circuits["grid"].measured_a is not None,
        message="the meter to be trusted",
    )
    site.depot.frozen.add("grid-meter")
    for charger_id in "ABC":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: (
            ("meter_failed", "grid") in site.state.alarms
            and first(site, "A/1", "meter_failed") is not None
        ),
        timeout=15,
        message=lambda: f"alarms {list(site.state.alarms)}; A: {reasons(site, 'A/1')}",
    )
    failed = first(site, "A/1", "meter_failed")
    assert failed["node"] == "grid" and failed["budget_a"] == 40.0  # its non_ev_max_a
    circuit = first(site, "A/1", "circuit")
    assert circuit is not None and circuit["node"] == "grid" and circuit["limit"] == 100.0
    assert {s["session"] for s in circuit["shared_with"]} == {"B/1", "C/1"}


def with_fleet(config, vehicles: list[dict]):
    """The scenario's config with `fleet.vehicles` (bound to sessions by their id tags, which
    sitectl, standing in for the absent CSMS, accepts)."""
    tags = [tag for vehicle in vehicles for tag in vehicle.get("id_tags", [])]
    offline = config.ocpp.offline.model_copy(
        update={"local_id_tags": [*config.ocpp.offline.local_id_tags, *tags]}
    )
    return config.model_copy(
        update={
            "fleet": FleetConfig.model_validate({"vehicles": vehicles}),
            "ocpp": config.ocpp.model_copy(update={"offline": offline}),
        }
    )


async def test_a_higher_priority_vehicle_is_named_as_what_takes_the_feeder(tmp_path, make_site):
    # 40 A for two vehicles of 32 A; A's tag binds it to a bus of priority 3, B is nobody's.
    config = scenario_config(
        tmp_path, [{"id": "A"}, {"id": "B"}], feeders=[{"id": "feeder", "limit_a": 40}]
    )
    config = with_fleet(config, [{"id": "bus-7", "id_tags": ["BUS-7"], "priority": 3}])
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=32, tag="BUS-7"))
    await site.depot.plug_in("B", SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 30 and first(site, "B/1", "priority") is not None,
        timeout=15,
        message=lambda: f"A {site.draw('A'):.1f} A; B: {reasons(site, 'B/1')}",
    )
    item = first(site, "B/1", "priority")
    assert item["sessions"] == ["A/1"] and item["node"] == "feeder"
    assert "A/1" in item["text"] and "higher priority" in item["text"]
    circuit = first(site, "B/1", "circuit")
    assert circuit["node"] == "feeder" and circuit["limit"] == 40.0
    assert "A/1" in [s["session"] for s in circuit["shared_with"]]
    assert first(site, "A/1", "priority") is None  # nobody above A
    await wait_for(lambda: site.draw("B") < 10.5, timeout=10, message="B on what is left")
    assert site.draw("A") + site.draw("B") <= 40 + 0.5


async def test_a_demand_charge_holds_the_vehicle_at_the_peak_and_says_so(tmp_path, make_site):
    # One price all day and a demand charge: a small need far from its departure is spread
    # out rather than taken at 32 A (a higher peak would cost more than nothing gained).
    tariff = {"periods": [{"start": "00:00", "eur_per_kwh": 0.2}], "demand_charge_eur_per_kw": 20}
    config = scenario_config(
        tmp_path, [{"id": "A"}], tariff=tariff, control={"default_energy_kwh": 12}
    )
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(
        lambda: first(site, "A/1", "peak") is not None,
        timeout=10,
        message=lambda: f"reasons {reasons(site, 'A/1')}",
    )
    item = first(site, "A/1", "peak")
    assert item["node"] == "grid" and item["unit"] == "kW" and item["demand_charge"] == 20.0
    assert item["limit"] is not None and "demand charge" in item["text"]
    await site.cycles(2)
    assert site.draw("A") < 30  # it really takes less than it could


async def test_a_soft_limit_window_is_kept_to_and_named_with_its_source(tmp_path, make_site):
    # A demand threshold as a soft window on the feeder: exceeded only to save a departure,
    # and the vehicle's small need does not need it.
    config = scenario_config(tmp_path, [{"id": "A"}], control={"default_energy_kwh": 3})
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(lambda: site.draw("A") > 30, timeout=10, message="A charging at 32 A")
    now = datetime.now(UTC)
    window = GridLimit(
        node="feeder",
        source="tariff:threshold",
        start=now - timedelta(minutes=1),
        end=now + timedelta(minutes=30),
        limit_a=(16.0, 16.0, 16.0),
        hard=False,
        reason="demand threshold",
    )
    site.state.limits.publish("tariff:threshold", [window], now)
    site.loop.trigger()
    await wait_for(
        lambda: site.draw("A") < 16.5 and first(site, "A/1", "soft_limit") is not None,
        timeout=10,
        message=lambda: f"draws {site.draw('A'):.1f} A; reasons {reasons(site, 'A/1')}",
    )
    item = first(site, "A/1", "soft_limit")
    assert item["node"] == "feeder" and item["limit"] == 16.0 and item["unit"] == "A"
    assert item["source"] == "tariff:threshold" and item["hard"] is False
    assert item["reason"] == "demand threshold" and item["until"] == window.end.isoformat()


async def test_a_csms_profile_capping_the_charger_is_named_with_its_limit(tmp_path, make_site):
    csms = StubCsms()
    await csms.start()
    try:
        config = scenario_config(tmp_path, [{"id": "A"}], csms_url=csms.url)
        site = await make_site(config)
        await wait_for(lambda: "A" in csms.sessions, timeout=10, message="A at the CSMS")
        await site.depot.plug_in("A", SimEv(max_a=32))
        await wait_for(lambda: site.draw("A") > 30, timeout=10, message="A charging at 32 A")
        await site.cycles(1)
        assert reasons(site, "A/1") == []
        answer = await csms.call("A", station_max_16(10, 9, 11))
        assert answer.status == "Accepted"
        await wait_for(
            lambda: site.draw("A") <= 10.5 and first(site, "A/1", "csms") is not None,
            timeout=10,
            message=lambda: f"draws {site.draw('A'):.1f} A; reasons {reasons(site, 'A/1')}",
        )
        item = first(site, "A/1", "csms")
        assert item["node"] == "A" and item["limit"] == 10.0 and item["connector_max"] == 32.0
        assert "CSMS" in item["text"]
    finally:
        await csms.stop()


async def test_the_vehicles_stated_maximum_is_named_when_it_is_below_the_chargers(
    tmp_path, make_site
):
    config = scenario_config(tmp_path, [{"id": "A", "ocpp_version": "2.0.1"}])
    site = await make_site(config)
    await site.depot.plug_in("A", SimEv(max_a=16))
    await wait_for(lambda: site.draw("A") > 15, timeout=10, message="A charging")
    needs = {
        "requested_energy_transfer": "AC_three_phase",
        "ac_charging_parameters": {
            "energy_amount": 20000,
            "ev_min_current": 6,
            "ev_max_current": 16,
            "ev_max_voltage": 400,
        },
    }
    await site.depot.chargers["A"].call(
        call201.NotifyEVChargingNeeds(charging_needs=needs, evse_id=1)
    )
    await wait_for(
        lambda: first(site, "A/1", "vehicle_max") is not None,
        timeout=10,
        message=lambda: f"reasons {reasons(site, 'A/1')}",
    )
    item = first(site, "A/1", "vehicle_max")
    assert item["node"] == "A" and item["limit"] == 16.0 and item["connector_max"] == 32.0
    assert "vehicle" in item["text"]
    assert site.state.chargers["A"].limit_a >= 15.9  # sitectl gives it all it takes
