"""Closed loop (issue #17): a charger that accepts a profile and does not apply it is found
out by what it says it applies, steered another way where that is possible, and budgeted at
what it really does where it is not. Judged by what flows and what the vehicles get."""

from __future__ import annotations

import time

from sitectl.sim.charger import SimEv
from sitectl.sim.quirks import Quirks
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config


def level(value: dict[str, float]):
    """A building load the test can change: A per phase, balanced, at the feeder."""
    return {"feeder": lambda t: (value["a"],) * 3}


async def test_a_charger_ignoring_the_dynamic_level_is_found_and_steered(tmp_path, make_site):
    # It honours stack levels up to 7 (sitectl's fail-safe) and answers Accepted to the
    # dynamic limit at level 8 without applying it: the bus would charge at its 6 A fail-safe
    # all night while sitectl believed it was given 32 A.
    config = scenario_config(tmp_path, [{"id": "A"}])
    building = {"a": 0.0}
    quirks = Quirks(max_stack_level=7, above_max_level="ignore")
    site = await make_site(config, level(building), quirks={"A": quirks})
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 25,
        timeout=20,
        message=lambda: f"draws {site.draw('A'):.1f} A; check: {site.state.chargers['A'].applied}",
    )
    assert site.loop.memory["A"].dynamic_level_ignored
    applied = site.state.chargers["A"].applied
    assert applied["single_level"] == 7
    # One profile at level 7 now holds the limit and, after its validity, the fail-safe.
    sim = site.depot.chargers["A"]
    profile = sim.handled.profiles[site.loop.dispatcher.ids["A"].station(False)].profile
    periods = profile["chargingSchedule"]["chargingSchedulePeriod"]
    assert profile["stackLevel"] == 7 and len(periods) == 2
    assert periods[1]["limit"] == 6
    await wait_for(lambda: site.state.chargers["A"].applied.get("verdict") == "ok", timeout=10)
    # And it follows a decrease: the building takes 80 of the feeder's 100 A.
    mark = time.monotonic()
    building["a"] = 80.0
    await wait_for(
        lambda: site.draw("A") < 21,
        timeout=15,
        message=lambda: f"still draws {site.draw('A'):.1f} A",
    )
    await site.cycles(4)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    assert "charger_limit_not_applied" not in {a.code for a in site.state.alarms.values()}


async def test_a_charger_applying_no_limit_is_budgeted_at_its_maximum(tmp_path, make_site):
    # A ignores every sitectl profile (it honours level 0 only, says Accepted to the rest):
    # its composite schedule shows its own 32 A. It must be budgeted at that before any
    # vehicle draws, so B's vehicle never gets the headroom A will take.
    chargers = [{"id": "A"}, {"id": "B"}]
    config = scenario_config(tmp_path, chargers, feeders=[{"id": "feeder", "limit_a": 48}])
    quirks = Quirks(max_stack_level=0, above_max_level="ignore")
    site = await make_site(config, quirks={"A": quirks})
    await wait_for(
        lambda: "charger_limit_not_applied" in {a.code for a in site.state.alarms.values()},
        timeout=10,
        message=lambda: f"no alarm; check: {site.state.chargers['A'].applied}",
    )
    alarm = next(a for a in site.state.alarms.values() if a.code == "charger_limit_not_applied")
    assert "composite schedule says 32.0 A" in alarm.text and alarm.subject == "A"
    assert site.state.chargers["A"].applied["budgeted_at_a"] == 32
    mark = time.monotonic()
    await site.depot.plug_in("A", SimEv(max_a=32))
    await site.depot.plug_in("B", SimEv(max_a=32))
    await wait_for(lambda: site.draw("A") > 30 and site.draw("B") > 6, timeout=15)
    await site.cycles(6)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    assert site.depot.peak_over(since=mark + RAMP_S).get("feeder", 0.0) <= 0.5
    assert site.draw("B") <= 16.5  # what is left of 48 A beside A's 32 A


async def test_a_charger_honouring_only_level_zero_and_refusing_zero_amps(tmp_path, make_site):
    # ABB Terra AC (quirk file abb-terra-ac): profiles above stack level 0 are Rejected, and so
    # is a 0 A limit. Before: Rejected -> uncontrollable -> budgeted at its maximum, never
    # steered. Now: one profile at level 0, and a "pause" at its 6 A minimum.
    config = scenario_config(
        tmp_path,
        [{"id": "A", "quirks": "abb-terra-ac"}],
        phase_limit_a=40,
        site={"non_ev_max_a": 34},
    )
    building = {"a": 0.0}
    quirks = Quirks(max_stack_level=0, above_max_level="reject", refuses_below_a=6.0)
    site = await make_site(config, level(building), quirks={"A": quirks})
    await site.depot.plug_in("A", SimEv(max_a=32))
    await wait_for(lambda: site.draw("A") > 25, timeout=15, message="charging at its share")
    mem = site.loop.memory["A"]
    assert not mem.uncontrollable and site.loop.dispatcher.single_level("A") == 0
    mark = time.monotonic()
    building["a"] = 33.0  # 7 A left on the connection
    await wait_for(
        lambda: site.draw("A") < 7.5,
        timeout=15,
        message=lambda: f"draws {site.draw('A'):.1f} A (limit {mem.commanded_a})",
    )
    await site.cycles(6)
    assert mem.commanded_a is not None and 6.0 <= mem.commanded_a <= 7.0
    assert not mem.uncontrollable
    assert site.state.chargers["A"].compliance != "uncontrollable"
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    # The building takes all it may (34 A, the configured worst case): A cannot pause, so it
    # is held at its 6 A minimum (never sent 0 A, which it would reject).
    building["a"] = 34.0
    await site.cycles(10)
    assert mem.commanded_a == 6.0 and not mem.uncontrollable
    sent = [p for _, p in site.depot.chargers["A"].profile_log]
    assert all(p.first_limit >= 6.0 for p in sent) and all(p.stack_level == 0 for p in sent)
    assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S


async def test_a_resume_after_a_pause_is_sent_twice_to_a_go_e(tmp_path, make_site):
    # go-e: after a 0 A pause the next limit is ignored and it resumes at its maximum. A
    # refresh would come only near the validity's end (30 s here): the feeder would carry 32 A
    # on 20 A of headroom until then.
    config = scenario_config(
        tmp_path,
        [{"id": "A", "quirks": "go-e"}],
        phase_limit_a=40,
        site={"non_ev_max_a": 34},
        control={"profile_validity_s": 30},
    )
    building = {"a": 34.0}
    site = await make_site(
        config, level(building), quirks={"A": Quirks(ignores_limit_after_zero=True)}
    )
    await site.depot.plug_in("A", SimEv(max_a=32))
    mem = site.loop.memory["A"]
    await site.cycles(4)
    await wait_for(lambda: mem.commanded_a == 0 and site.draw("A") < 1, timeout=10)
    mark = time.monotonic()
    building["a"] = 20.0
    await wait_for(lambda: site.draw("A") > 10, timeout=15, message="resumed")
    await site.cycles(8)
    assert site.draw("A") <= (mem.commanded_a or 0) + 1.0
    # Not even a short run at its maximum: the resume is sent twice, back to back (without
    # that, sitectl's over-draw budget mends it a cycle later, with the feeder over meanwhile).
    assert max(site.depot.peak_over(since=mark).values(), default=0.0) <= 0.5


async def test_a_twin_charger_ignoring_its_connector_shares_is_found(tmp_path, make_site):
    # Two vehicles on one twin charger under a tight feeder: sitectl splits the charger's
    # limit into per-connector shares. This one applies only the station-wide total, so one
    # vehicle may take the other's share: the per-connector composite check says so.
    config = scenario_config(
        tmp_path, [{"id": "T", "connectors": 2}], phase_limit_a=50, site={"non_ev_max_a": 20}
    )
    quirks = Quirks(ignores_connector_profiles=True)
    site = await make_site(config, level({"a": 0.0}), quirks={"T": quirks})
    await site.depot.plug_in("T", SimEv(max_a=32), connector=1)
    await site.depot.plug_in("T", SimEv(max_a=32), connector=2)
    await wait_for(
        lambda: ("connector_share_not_applied", "T") in site.state.alarms,
        timeout=20,
        message=lambda: f"check: {site.state.chargers['T'].applied}",
    )
    found = site.state.chargers["T"].applied["connectors"]
    shares = site.loop.memory["T"].commanded_connectors
    assert set(found) == {"1", "2"}
    assert all(found[str(c)]["applied_a"] > shares[c] + 0.5 for c in (1, 2))


async def test_a_twin_charger_applying_its_shares_raises_nothing(tmp_path, make_site):
    config = scenario_config(
        tmp_path, [{"id": "T", "connectors": 2}], phase_limit_a=50, site={"non_ev_max_a": 20}
    )
    site = await make_site(config, level({"a": 0.0}))
    await site.depot.plug_in("T", SimEv(max_a=32), connector=1)
    await site.depot.plug_in("T", SimEv(max_a=32), connector=2)
    await wait_for(
        lambda: len(site.state.chargers["T"].applied.get("connectors", {})) == 2,
        timeout=20,
        message=lambda: f"check: {site.state.chargers['T'].applied}",
    )
    found = site.state.chargers["T"].applied["connectors"]
    assert all(abs(f["applied_a"] - f["sent_a"]) <= 0.5 for f in found.values())
    assert ("connector_share_not_applied", "T") not in site.state.alarms
