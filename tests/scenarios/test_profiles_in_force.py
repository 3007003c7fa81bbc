"""sitectl steers only chargers that hold its fail-safe, and no charger can stall the others."""

from __future__ import annotations

import time

from sitectl.sim.charger import SimEv
from sitectl.sim.quirks import Quirks
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config

THREE = [{"id": "A"}, {"id": "B"}, {"id": "C", "ocpp_version": "2.0.1"}]


async def test_a_charger_mute_from_the_start_stalls_nobody_and_is_budgeted_at_its_maximum(
    tmp_path, make_site
):
    # Its socket answers pings, its OCPP stack answers nothing (issue #17.2).
    config = scenario_config(tmp_path, THREE)
    site = await make_site(config, quirks={"A": Quirks(mute=True)}, secured=("B", "C"))
    started = time.monotonic()
    await site.cycles(3, timeout=5)  # cycles keep their period: nothing waits on A
    assert time.monotonic() - started < 5
    await wait_for(
        lambda: ("failsafe_not_installed", "A") in site.state.alarms,
        timeout=10,
        message="an alarm about A",
    )
    assert "budgeted at its maximum" in site.state.alarms[("failsafe_not_installed", "A")].text
    # A vehicle on A draws the charger's 32 A (nothing limits it); A reports nothing, so the
    # meter counts its draw as building load too (unknown: the worst case): B and C share
    # what is left of 100 A.
    mark = time.monotonic()
    for charger_id in "ABC":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("B") > 6 and site.draw("C") > 6,
        timeout=10,
        message="B and C charging",
    )
    await site.cycles(4)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    built = site.loop.last[0]
    assert "A" not in built.steerable and built.fixed["A"] == (32.0, 32.0, 32.0)


async def test_a_charger_that_refuses_its_fail_safe_is_never_sent_a_dynamic_limit(
    tmp_path, make_site
):
    config = scenario_config(tmp_path, THREE)
    site = await make_site(config, secured=("B", "C"))
    refusing = site.depot.chargers["A"]
    refusing.reject_profiles = True
    # Reconnect A so that sitectl tries its fail-safe again, and sees it refused.
    await refusing.close()
    site.loop.memory["A"].failsafe_installed = False
    await refusing.connect()
    await refusing.boot()
    await wait_for(
        lambda: ("failsafe_not_installed", "A") in site.state.alarms,
        timeout=10,
        message="the refusal alarmed",
    )
    await refusing.plug_in(1, SimEv(max_a=32))
    sent_before = len(refusing.handled.calls)
    await site.cycles(5)
    dynamic = [
        call
        for call in refusing.handled.calls[sent_before:]
        if call[0] == "SetChargingProfile"
        and call[1]["cs_charging_profiles"]["stack_level"] != site.loop.dispatcher.failsafe_level
    ]
    assert dynamic == []
    assert site.loop.memory["A"].failsafe_installed is False


async def test_chargers_with_a_wrong_clock_run_at_the_limit_sitectl_budgets(tmp_path, make_site):
    # One charger 10 minutes behind, one 2 minutes ahead (issue #17.7): profiles timed on
    # sitectl's clock would give the first no limit at all and the second its fail-safe.
    chargers = [{"id": "BEHIND"}, {"id": "AHEAD", "ocpp_version": "2.0.1"}, {"id": "OK"}]
    config = scenario_config(tmp_path, chargers)
    quirks = {"BEHIND": Quirks(clock_skew_s=-600), "AHEAD": Quirks(clock_skew_s=120)}
    site = await make_site(config, level_load(40.0), quirks=quirks)
    for charger_id in ("BEHIND", "AHEAD", "OK"):
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    mark = time.monotonic()

    def in_force() -> dict[str, tuple[float, float | None]]:
        return {
            c: (site.depot.chargers[c].limit_a(1), site.state.chargers[c].limit_a)
            for c in ("BEHIND", "AHEAD", "OK")
        }

    # 60 A for three: about 20 A each, on every charger's own clock.
    await wait_for(
        lambda: all(
            commanded is not None and 10 < commanded < 31 and abs(actual - commanded) < 0.5
            for actual, commanded in in_force().values()
        ),
        timeout=15,
        message=lambda: f"limits in force (actual, commanded): {in_force()}",
    )
    await site.cycles(4)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    assert ("charger_clock_skew", "BEHIND") in site.state.alarms
    assert ("charger_clock_skew", "AHEAD") in site.state.alarms
    assert ("charger_clock_skew", "OK") not in site.state.alarms
    # Holding its fail-safe under a limit timed before its skew was known is a timing matter,
    # not an ignored stack level: no charger was switched to single-level mode for it.
    assert not any(site.loop.memory[c].dynamic_level_ignored for c in ("BEHIND", "AHEAD", "OK"))
    assert "s behind" in site.state.alarms[("charger_clock_skew", "BEHIND")].text
    # Timestamps are whole seconds: the skew is known to about a second.
    assert abs(site.state.chargers["BEHIND"].clock_skew_s + 600) <= 1.5
    assert abs(site.state.chargers["AHEAD"].clock_skew_s - 120) <= 1.5


def level_load(amps: float):
    return {"feeder": lambda t: (amps,) * 3}


async def test_headroom_freed_by_a_slow_charger_is_given_only_once_it_is_free(tmp_path, make_site):
    # Issue #17.5: A and B take seconds to come down (2 A/s); a new vehicle on C must not
    # ramp up into headroom they still use.
    config = scenario_config(
        tmp_path,
        [{"id": "A"}, {"id": "B"}, {"id": "C"}],
        phase_limit_a=70,
        site={"non_ev_max_a": 10},
    )
    slow = Quirks(ramp_a_per_s=2.0)
    site = await make_site(config, quirks={"A": slow, "B": slow})
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 29 and site.draw("B") > 29, timeout=30, message="A and B up"
    )
    mark = time.monotonic()
    await site.depot.plug_in("C", SimEv(max_a=32))
    await wait_for(lambda: site.draw("C") > 15, timeout=20, message="C charging")
    await site.cycles(4)
    # The real current on the feeder never stayed above its limit for longer than a ramp.
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    assert site.depot.peak_over(since=mark)["feeder"] <= 2.0
