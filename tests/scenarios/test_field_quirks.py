"""Chargers and meters that misbehave like real ones: judged by what flows and what is charged."""

from __future__ import annotations

import time

from sitectl.sim.charger import SimEv
from sitectl.sim.quirks import Quirks
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config


def level(value: dict[str, float]):
    """A building load the test can change: A per phase, balanced, at the feeder."""
    return {"feeder": lambda t: (value["a"],) * 3}


async def test_a_bus_with_no_stated_need_charges_past_the_default(tmp_path, make_site):
    # A 1.6 charger never tells the need; the default must not stop the bus.
    config = scenario_config(tmp_path, [{"id": "A"}], control={"default_energy_kwh": 1})
    site = await make_site(config, energy_factor=60)  # a real second is a simulated minute
    await site.depot.chargers["A"].plug_in(1, SimEv(max_a=32, energy_wanted_kwh=400))
    await wait_for(lambda: site.energy_kwh("A") > 3, timeout=20, message="three times the default")
    await site.cycles(3)
    assert site.draw("A") > 25, "held back although the vehicle still wants energy"
    assert site.state.chargers["A"].connectors[1].session.energy_wh > 1000
    # What the operator sees: the default is an assumption, not a cap.
    plan = site.state.control.sessions["A/1"]
    assert plan.need_source == "default" and not plan.capped
    assert plan.departure_source == "default" and plan.dispatched_a > 25


async def test_l1_only_reports_do_not_overload_an_unmetered_feeder(tmp_path, make_site):
    # Both chargers report Current.Import for L1 only; B is wired L2-L3-L1. Taken as
    # single-phase, each would get 32 A on "its" phase: 64 A on every phase of a 48 A feeder.
    chargers = [{"id": "A"}, {"id": "B", "phase_rotation": "L2-L3-L1"}]
    config = scenario_config(
        tmp_path, chargers, phase_limit_a=200, feeders=[{"id": "feeder", "limit_a": 48}]
    )
    l1_only = Quirks(reports="l1_only")
    site = await make_site(config, quirks={"A": l1_only, "B": l1_only})
    mark = time.monotonic()
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 20 and site.draw("B") > 20, timeout=10, message="charging"
    )
    await site.cycles(10)  # many reports: long enough for a phase to be judged unused
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    assert site.depot.peak_over(since=mark + RAMP_S)["feeder"] <= 0.5


async def test_a_dc_charger_reporting_only_power_is_counted_once(tmp_path, make_site):
    # Most DC chargers report output power only. Its AC input must be subtracted from the
    # meter (or the site looks fuller than it is) and budgeted with its efficiency.
    chargers = [
        {"id": "DC", "kind": "dc", "max_power_kw": 50, "max_current_a": 80},
        {"id": "AC"},
    ]
    config = scenario_config(tmp_path, chargers, site={"non_ev_max_a": 60})
    building = {"a": 20.0}
    site = await make_site(
        config,
        level(building),
        quirks={"DC": Quirks(reports="power_only", dc_efficiency=0.93)},
    )
    mark = time.monotonic()
    await site.depot.plug_in("DC", SimEv(max_a=80))
    await site.depot.plug_in("AC", SimEv(max_a=32))
    # 80 A for both: sitectl must see that the DC charger's draw is not building load.
    await wait_for(
        lambda: site.depot.actual()["feeder"][0] > 92,
        timeout=15,
        message=lambda: f"the headroom used: feeder at {site.depot.actual()['feeder']}",
    )
    assert site.draw("AC") > 6 and site.draw("DC") > 6
    await site.cycles(4)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S


async def test_a_frozen_meter_is_found_out_and_the_site_stays_within_its_limit(tmp_path, make_site):
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}, {"id": "C"}])
    building = {"a": 20.0}
    site = await make_site(config, level(building))
    await wait_for(
        lambda: site.state.control.circuits["grid"].measured_a is not None,
        message="the meter to be trusted",
    )
    # The gateway keeps answering with the registers it had: about 20 A, whatever flows.
    site.depot.frozen.add("grid-meter")
    mark = time.monotonic()
    for charger_id in "ABC":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: ("meter_failed", "grid") in site.state.alarms,
        timeout=10,
        message="the frozen meter to be alarmed",
    )
    assert "frozen meter" in site.state.alarms[("meter_failed", "grid")].text
    # Now on the failed-meter budget (40 A of non-EV load assumed): the building may grow.
    building["a"] = 38.0
    await site.cycles(6)
    assert site.depot.seconds_over(since=mark).get("grid", 0.0) <= RAMP_S
    assert all(site.draw(c) > 6 for c in "ABC")  # nobody starved


async def test_one_mute_charger_does_not_stall_control_of_the_others(tmp_path, make_site):
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}, {"id": "C"}])
    building = {"a": 10.0}
    site = await make_site(config, level(building))
    for charger_id in "ABC":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: all(site.draw(c) > 25 for c in "ABC"), timeout=10, message="all charging"
    )
    site.depot.chargers["A"].quirks.mute = True  # its OCPP stack hangs, the socket stays open
    mark = time.monotonic()
    building["a"] = 50.0  # B and C must give way at once, A cannot be told
    await wait_for(
        lambda: site.draw("B") < 22 and site.draw("C") < 22,
        timeout=10,
        message=lambda: f"B and C to follow: {site.draw('B'):.1f}, {site.draw('C'):.1f} A",
    )
    reaction = time.monotonic() - mark
    assert reaction < 5, reaction
    await site.cycles(6)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S + 1.0


async def test_a_meter_that_freezes_while_vehicles_charge_is_not_trusted(tmp_path, make_site):
    # Frozen at a plausible value (more than the vehicles draw): only the device layer's
    # stuck-register check can tell. Then the building grows, which the meter no longer sees.
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}], meter={"frozen_after_s": 1.0})
    building = {"a": 20.0}
    site = await make_site(config, level(building))
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 25 and site.draw("B") > 25, timeout=10, message="charging"
    )
    site.depot.frozen.add("grid-meter")
    mark = time.monotonic()
    await wait_for(
        lambda: ("meter_failed", "grid") in site.state.alarms,
        timeout=10,
        message="the frozen meter to be alarmed",
    )
    assert "frozen" in site.state.alarms[("meter_failed", "grid")].text
    building["a"] = 38.0  # within the 40 A failed-meter budget
    await site.cycles(6)
    assert site.depot.seconds_over(since=mark).get("grid", 0.0) <= RAMP_S
    assert site.draw("A") > 6 and site.draw("B") > 6


async def test_a_charger_wired_unlike_its_configuration_is_found_by_the_meter(tmp_path, make_site):
    # A is configured L1-L2-L3 but really wired L2-L3-L1; a single-phase vehicle on it draws
    # on the site's L2, which sitectl believes is free. The meter sees it on unbalanced steps.
    from datetime import UTC, datetime, timedelta

    from sitectl.state import LimitOverride

    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}])
    site = await make_site(config, wiring={"A": "L2-L3-L1"})
    await site.depot.plug_in("A", SimEv(phases=1, max_a=32))
    await wait_for(lambda: site.draw("A") > 25, timeout=10, message="A charging")
    # The operator lowers and raises the feeder: A's single phase steps with it.
    for limit in (16.0, 100.0, 16.0, 100.0, 16.0, 100.0, 16.0, 100.0):
        site.state.overrides["feeder"] = LimitOverride(
            "feeder", (limit, limit, limit), datetime.now(UTC) + timedelta(minutes=5)
        )
        site.loop.trigger()
        await site.cycles(4)
        if ("phase_rotation_mismatch", "A") in site.state.alarms:
            break
    alarm = site.state.alarms.get(("phase_rotation_mismatch", "A"))
    assert alarm is not None, "the miswiring was not found"
    assert "its L1 on L2, but is configured L1-L2-L3" in alarm.text
    assert ("phase_rotation_mismatch", "B") not in site.state.alarms
