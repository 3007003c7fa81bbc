"""The capability probe: what a charger declares, read once after its boot, kept and shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sitectl.ocpp.link import CallErrorResponse, CallTimeout
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.probe import KEYS_16, CapabilityProbe
from sitectl.quirks import effective_quirks
from sitectl.sim.charger import SimCharger
from sitectl.state import SiteState
from sitectl.store import Store
from tests.helpers import loop_turn, wait_for
from tests.ocpp.conftest import PASSWORD, depot_config


async def loop_turns(n: int = 20) -> None:
    """Let everything ready run, several times over: what has not happened now will not.

    (The fake charger answers in-process, so a call the probe makes is seen within turns.)
    """
    for _ in range(n):
        await loop_turn()


@contextlib.asynccontextmanager
async def running(probe: CapabilityProbe):
    task = asyncio.create_task(probe.run())
    try:
        yield probe
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_16_charger_is_asked_after_its_boot_and_the_answer_is_kept(
    csms, start_server, tmp_path
) -> None:
    config = depot_config([{"id": "CP1"}], csms.url)
    state = SiteState(config)
    server, url = await start_server(config, StateObserver(state))
    store = Store(tmp_path / "probe.sqlite")
    probe = CapabilityProbe(state, server.call, store=store, grace_s=30)
    async with running(probe), SimCharger("CP1", "1.6", url, PASSWORD) as sim:
        sim.config_keys.update(
            {
                "ChargeProfileMaxStackLevel": "3",
                "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
                "SupportedFeatureProfiles": "Core,SmartCharging",
            }
        )
        await loop_turns()  # connected, not booted: nothing is asked yet
        assert not any(name == "GetConfiguration" for name, _ in sim.handled.calls)
        await sim.boot()
        charger = state.chargers["CP1"]
        await wait_for(lambda: charger.capabilities.get("complete"), message="the probe")
        asked = [c for name, c in sim.handled.calls if name == "GetConfiguration"]
        assert asked == [{"key": list(KEYS_16)}]
    values = charger.capabilities["values"]
    assert values["ChargeProfileMaxStackLevel"] == "3"
    assert "MaxChargingProfilesInstalled" in charger.capabilities["unknown"]
    assert charger.capabilities["firmware_version"] == sim.firmware_version
    assert effective_quirks(charger).max_stack_level == 3
    # Kept across a restart: a new probe reads it back into a new state.
    stored = json.loads(store.get_meta("capabilities:CP1"))
    assert stored["values"] == values
    again = SiteState(config)
    CapabilityProbe(again, server.call, store=store)
    assert again.chargers["CP1"].capabilities == stored
    store.close()


async def test_a_201_charger_is_asked_for_its_smart_charging_variables(csms, start_server) -> None:
    config = depot_config([{"id": "CS1", "ocpp_version": "2.0.1"}], csms.url)
    state = SiteState(config)
    server, url = await start_server(config, StateObserver(state))
    probe = CapabilityProbe(state, server.call)
    async with running(probe), SimCharger("CS1", "2.0.1", url, PASSWORD) as sim:
        sim.config_keys["SmartChargingCtrlr.ProfileStackLevel"] = "2"
        await sim.boot()
        charger = state.chargers["CS1"]
        await wait_for(lambda: charger.capabilities.get("complete"), message="the probe")
        assert any(name == "GetVariables" for name, _ in sim.handled.calls)
    assert charger.capabilities["values"]["SmartChargingCtrlr.RateUnit"] == "A"
    assert charger.capabilities["values"]["SmartChargingCtrlr.ProfileStackLevel"] == "2"
    assert "SampledDataCtrlr.TxUpdatedMeasurands" in charger.capabilities["unknown"]
    assert effective_quirks(charger).max_stack_level == 2


class FakeCharger:
    """`call` of a charger that answers each action as told, counting the calls."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def call(self, identity: str, action: str, payload: dict, timeout: float) -> dict:
        self.calls.append(action)
        answer = self.answers[action]
        if isinstance(answer, Exception):
            raise answer
        return answer


def connect_and_boot(state: SiteState, identity: str) -> None:
    charger = state.chargers[identity]
    charger.connected = True
    state.notify("charger_connected", identity)
    charger.boot_accepted = True
    state.notify("charger_booted", identity)


async def test_not_implemented_is_a_capability_and_never_asked_again(tmp_path) -> None:
    state = SiteState(depot_config([{"id": "CP1"}], None))
    fake = FakeCharger({"GetConfiguration": CallErrorResponse("NotImplemented", "", {})})
    store = Store(tmp_path / "s.sqlite")
    probe = CapabilityProbe(state, fake.call, store=store)
    charger = state.chargers["CP1"]
    async with running(probe):
        connect_and_boot(state, "CP1")
        await wait_for(lambda: charger.capabilities.get("complete"), message="the probe")
        assert charger.capabilities["not_supported"] == {"GetConfiguration": "NotImplemented"}
        for _ in range(3):  # reconnects and reboots ask nothing more
            charger.connected = False
            state.notify("charger_disconnected", "CP1")
            connect_and_boot(state, "CP1")
            await loop_turns()
        assert fake.calls == ["GetConfiguration"]
    # A permanent SetChargingProfile answer seen elsewhere makes it uncontrollable by profile.
    probe.record_not_supported("CP1", "SetChargingProfile", "NotImplemented")
    assert effective_quirks(charger).smart_charging is False
    assert "SetChargingProfile" in json.loads(store.get_meta("capabilities:CP1"))["not_supported"]
    store.close()


async def test_an_unanswered_probe_is_asked_again_on_the_next_connection_only() -> None:
    state = SiteState(depot_config([{"id": "CP1"}], None))
    fake = FakeCharger({"GetConfiguration": CallTimeout("no answer")})
    probe = CapabilityProbe(state, fake.call)
    charger = state.chargers["CP1"]
    async with running(probe):
        connect_and_boot(state, "CP1")
        await wait_for(lambda: fake.calls == ["GetConfiguration"], message="the first ask")
        await loop_turns()
        assert fake.calls == ["GetConfiguration"]  # no retry loop on the same connection
        assert charger.capabilities["complete"] is False
        fake.answers["GetConfiguration"] = {
            "configurationKey": [{"key": "SupportedFeatureProfiles", "value": "Core"}]
        }
        connect_and_boot(state, "CP1")
        await wait_for(lambda: charger.capabilities.get("complete"), message="the second ask")
    assert fake.calls == ["GetConfiguration"] * 2
    assert effective_quirks(charger).smart_charging is False


async def test_a_charger_that_never_boots_is_asked_after_the_grace() -> None:
    state = SiteState(depot_config([{"id": "CP1"}], None))
    fake = FakeCharger({"GetConfiguration": {"configurationKey": []}})
    probe = CapabilityProbe(state, fake.call, grace_s=0.05)
    async with running(probe):
        state.chargers["CP1"].connected = True
        state.notify("charger_connected", "CP1")
        await loop_turns()
        assert fake.calls == []
        await wait_for(lambda: fake.calls == ["GetConfiguration"], message="the ask after grace")
