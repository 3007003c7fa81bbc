"""sitectl's profiles survive a CSMS ClearChargingProfile: re-applied at once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from ocpp.v16 import call as call16

from sitectl.ocpp.keeper import ProfileKeeper
from sitectl.ocpp.link import CallTimeout
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.router import Side
from sitectl.sim.charger import SimCharger
from sitectl.state import SiteState
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, depot_config


def profile(profile_id: int, stack_level: int, limit: float) -> dict:
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": profile_id,
            "stackLevel": stack_level,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            },
        },
    }


async def test_profiles_are_reapplied_after_a_csms_clear(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    server, url = await start_server(config, StateObserver(state))
    keeper = ProfileKeeper(state, server.call)
    task = asyncio.create_task(keeper.run())
    try:
        async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
            await sim.boot()
            assert (await keeper.set_profile("CP1", profile(900001, 8, 20.0)))[
                "status"
            ] == "Accepted"
            await keeper.set_profile("CP1", profile(900000, 7, 6.0))
            assert set(sim.handled.profiles) == {900000, 900001}
            # The CSMS wipes every profile on the charger.
            result = await csms.call("CP1", call16.ClearChargingProfile())
            assert result.status == "Accepted"
            await wait_for(
                lambda: set(sim.handled.profiles) == {900000, 900001},
                message="sitectl's profiles to be re-applied",
            )
            # Fail-safe (lower stack level) first, then the dynamic limit.
            sent = [
                c["cs_charging_profiles"]["stack_level"]
                for name, c in sim.handled.calls
                if name == "SetChargingProfile"
            ]
            assert sent[-2:] == [7, 8]
            # Nothing of this reached the CSMS.
            assert all("SetChargingProfile" not in f for f in csms.frames("CP1", "out"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_refused_profile_is_not_kept(csms, start_server) -> None:
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    server, url = await start_server(config, StateObserver(state))
    keeper = ProfileKeeper(state, server.call)
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        sim.reject_profiles = True
        assert (await keeper.set_profile("CP1", profile(900001, 8, 20.0)))["status"] == "Rejected"
        assert keeper.kept("CP1") == []


async def test_only_permanent_profiles_are_kept_for_re_applying() -> None:
    # A dynamic limit (with a duration) re-sent after a clear would be stale by then: the
    # control loop sends the current one instead (issue #17.4).
    from sitectl.ocpp.keeper import ProfileKeeper
    from sitectl.state import SiteState
    from tests.ocpp.conftest import depot_config

    async def accept(identity, action, payload):
        return {"status": "Accepted"}

    keeper = ProfileKeeper(SiteState(depot_config([{"id": "CP1"}], None)), accept)
    dynamic = profile(900001, 8, 20.0)
    dynamic["csChargingProfiles"]["chargingSchedule"]["duration"] = 30
    await keeper.set_profile("CP1", profile(900000, 7, 6.0))
    await keeper.set_profile("CP1", dynamic)
    assert [p["csChargingProfiles"]["chargingProfileId"] for p in keeper.kept("CP1")] == [900000]


async def test_a_call_that_timed_out_while_queued_is_never_delivered_late(
    csms, start_server
) -> None:
    """A slow charger: the second limit's caller gives up while it waits; it must not arrive."""
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    server, url = await start_server(config, StateObserver(state))
    async with SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        await sim.boot()
        sim.answer_delay_s = 1.0
        slow = asyncio.create_task(
            server.call("CP1", "SetChargingProfile", profile(900001, 8, 20.0), timeout=5)
        )
        await wait_for(lambda: server.links["CP1"].router.queued(Side.CHARGER) == 1)
        with pytest.raises(CallTimeout):
            await server.call("CP1", "SetChargingProfile", profile(900001, 8, 32.0), timeout=0.2)
        assert (await slow)["status"] == "Accepted"
        # A third call after the slow one still goes through (the lane is free, in order).
        sim.answer_delay_s = 0.0
        await server.call("CP1", "SetChargingProfile", profile(900001, 8, 10.0), timeout=5)
        limits = [
            c["cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"][0]["limit"]
            for name, c in sim.handled.calls
            if name == "SetChargingProfile"
        ]
        assert limits == [20.0, 10.0]
