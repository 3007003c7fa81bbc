"""The operator's CSMS sends its own charging profiles: sitectl's limits still hold (#17.1)."""

from __future__ import annotations

import json
import time

from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from sitectl.sim.charger import SimEv
from sitectl.sim.csms import StubCsms
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config


def held_profile_snake(profile: dict) -> dict:
    """A profile as the charger holds it, in the library's snake_case (for a call payload)."""
    return camel_to_snake_case(profile)


def station_max_16(limit: float, level: int, profile_id: int) -> call16.SetChargingProfile:
    return call16.SetChargingProfile(
        connector_id=0,
        cs_charging_profiles={
            "charging_profile_id": profile_id,
            "stack_level": level,
            "charging_profile_purpose": "ChargePointMaxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": {
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": limit}],
            },
        },
    )


def station_max_201(limit: float, level: int, profile_id: int) -> call201.SetChargingProfile:
    return call201.SetChargingProfile(
        evse_id=0,
        charging_profile={
            "id": profile_id,
            "stack_level": level,
            "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": [
                {
                    "id": profile_id,
                    "charging_rate_unit": "A",
                    "charging_schedule_period": [{"start_period": 0, "limit": limit}],
                }
            ],
        },
    )


async def test_a_csms_station_max_above_sitectls_levels_does_not_lift_its_limits(
    tmp_path, make_site
):
    csms = StubCsms()
    await csms.start()
    try:
        chargers = [{"id": "A"}, {"id": "B", "ocpp_version": "2.0.1"}]
        config = scenario_config(
            tmp_path, chargers, phase_limit_a=40, csms_url=csms.url, site={"non_ev_max_a": 10}
        )
        site = await make_site(config)
        await wait_for(
            lambda: {"A", "B"} <= set(csms.sessions), timeout=10, message="both at the CSMS"
        )
        for charger_id in "AB":
            await site.depot.plug_in(charger_id, SimEv(max_a=32))
        await wait_for(
            lambda: site.draw("A") > 12 and site.draw("B") > 12, timeout=10, message="charging"
        )
        mark = time.monotonic()
        # The CSMS lifts both to 32 A at stack level 9, above sitectl's 7 and 8.
        answer_a = await csms.call("A", station_max_16(32, 9, 11))
        answer_b = await csms.call("B", station_max_201(32, 9, 12))
        assert answer_a.status == "Accepted" and answer_b.status == "Accepted"
        await site.cycles(6)

        def in_force(charger_id: str) -> float:
            return site.depot.chargers[charger_id].limit_a(1)

        for charger_id in "AB":
            commanded = site.state.chargers[charger_id].limit_a
            assert in_force(charger_id) <= commanded + 0.05, (charger_id, commanded)
        assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
        # The CSMS's profile is kept on the charger (below sitectl's) and bounds sitectl: a
        # CSMS limit of 10 A is honoured.
        await csms.call("A", station_max_16(10, 9, 11))
        await wait_for(
            lambda: in_force("A") <= 10.05 and site.draw("A") <= 10.5,
            timeout=10,
            message=lambda: f"A within the CSMS's 10 A: {in_force('A')}, {site.draw('A')}",
        )
        kept = site.depot.chargers["A"].handled.profiles[11]
        assert kept.stack_level == 6  # moved below sitectl's fail-safe at 7
        # The CSMS asks B what is installed (GetChargingProfiles): B reports the profile at
        # the level it holds it (6); the CSMS is shown the level it set (9).
        sim_b = site.depot.chargers["B"]
        held = sim_b.handled.profiles[12]
        assert held.stack_level == 6
        await sim_b.call(
            call201.ReportChargingProfiles(
                request_id=1,
                charging_limit_source="CSO",
                evse_id=0,
                charging_profile=[held_profile_snake(held.profile)],
            )
        )
        reports = [
            json.loads(raw)
            for direction, raw in csms.sessions["B"].frames
            if direction == "in" and '"ReportChargingProfiles"' in raw
        ]
        assert [r[3]["chargingProfile"][0]["stackLevel"] for r in reports] == [9]
    finally:
        await csms.stop()


async def test_after_a_csms_clear_the_charger_gets_its_current_limit_not_an_old_one(
    tmp_path, make_site
):
    csms = StubCsms()
    await csms.start()
    try:
        config = scenario_config(
            tmp_path, [{"id": "A"}], phase_limit_a=40, csms_url=csms.url, site={"non_ev_max_a": 30}
        )
        building = {"a": 0.0}
        site = await make_site(config, {"feeder": lambda t: (building["a"],) * 3})
        await wait_for(lambda: "A" in csms.sessions, timeout=10, message="A at the CSMS")
        await site.depot.plug_in("A", SimEv(max_a=32))
        await wait_for(lambda: site.draw("A") > 30, timeout=10, message="A at 32 A")
        building["a"] = 28.0  # now only 12 A are left for A
        await wait_for(lambda: site.draw("A") < 13, timeout=10, message="A lowered")
        mark = time.monotonic()
        # A criteria-less clear wipes every profile on the charger, sitectl's too.
        answer = await csms.call("A", call16.ClearChargingProfile())
        assert answer.status == "Accepted"
        await site.cycles(6)
        commanded = site.state.chargers["A"].limit_a
        assert commanded is not None and commanded < 13
        assert site.depot.chargers["A"].limit_a(1) <= commanded + 0.05
        assert site.draw("A") < 13.5
        # The charger ran unlimited only until sitectl re-sent its profiles: within a ramp.
        assert site.depot.seconds_over(since=mark).get("feeder", 0.0) <= RAMP_S
    finally:
        await csms.stop()
