"""Each charger is made to report its draw often enough to be believed (ocpp/sampling.py)."""

from __future__ import annotations

import pytest

from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.sampling import SamplingSetup
from sitectl.sim.charger import SimCharger
from sitectl.sim.quirks import Quirks
from sitectl.state import SiteState
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, depot_config


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_slow_interval_is_lowered_and_a_fast_one_kept(version, start_server) -> None:
    cfg = depot_config([{"id": "A", "ocpp_version": version}], None)
    state = SiteState(cfg)
    server, url = await start_server(cfg, StateObserver(state))
    setup = SamplingSetup(cfg, state, server.call)
    async with SimCharger("A", version, url, PASSWORD) as sim:
        await sim.boot()
        sim.report_s = 60.0
        await wait_for(lambda: state.chargers["A"].connected, timeout=5)
        found = await setup.ensure("A")
        assert found == {"was": 60, "now": 10, "status": "Accepted", "wanted_s": 10}
        assert sim.report_s == 10.0  # it reports every 10 s from now on
        assert state.chargers["A"].capabilities["sampling"]["now"] == 10
        # Already fast enough: read, not written.
        sim.report_s = 5.0
        writes = len(
            [c for c in sim.handled.calls if c[0] in ("ChangeConfiguration", "SetVariables")]
        )
        found = await setup.ensure("A")
        assert found["status"] == "kept" and sim.report_s == 5.0
        assert writes == len(
            [c for c in sim.handled.calls if c[0] in ("ChangeConfiguration", "SetVariables")]
        )
        assert not state.alarms


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_charger_that_keeps_a_slow_interval_is_an_alarm(version, start_server) -> None:
    cfg = depot_config([{"id": "A", "ocpp_version": version}], None)
    state = SiteState(cfg)
    server, url = await start_server(cfg, StateObserver(state))
    setup = SamplingSetup(cfg, state, server.call)
    quirks = Quirks(keeps_sampling_interval=True)
    async with SimCharger("A", version, url, PASSWORD, quirks=quirks) as sim:
        await sim.boot()
        sim.report_s = 300.0
        await wait_for(lambda: state.chargers["A"].connected, timeout=5)
        found = await setup.ensure("A")
        assert found["now"] == 300 and found["status"] == "Rejected"
        assert sim.report_s == 300.0
        ((code, subject),) = list(state.alarms)
        assert (code, subject) == ("meter_values_slow", "A")
        assert "every 300 s" in state.alarms[(code, subject)].text


async def test_an_offline_charger_is_recorded_not_raised(start_server) -> None:
    cfg = depot_config([{"id": "A"}], None)
    state = SiteState(cfg)
    server, _ = await start_server(cfg, StateObserver(state))
    found = await SamplingSetup(cfg, state, server.call).ensure("A")
    assert found["status"].startswith("not answered")
    assert ("meter_values_slow", "A") in state.alarms


async def test_garbage_answers_give_an_alarm_not_a_crash() -> None:
    # A value that is not a number, an answer without a status: recorded, said, nothing raised.
    cfg = depot_config([{"id": "A"}], None)
    state = SiteState(cfg)

    async def call(identity, action, payload, timeout):
        if action == "GetConfiguration":
            return {"configurationKey": [{"key": "MeterValueSampleInterval", "value": "often"}]}
        return {}

    found = await SamplingSetup(cfg, state, call).ensure("A")
    assert found["was"] is None and found["now"] is None and found["status"] == "None"
    assert ("meter_values_slow", "A") in state.alarms
