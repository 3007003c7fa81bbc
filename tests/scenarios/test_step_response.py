"""A charger slower than the configured ramp-down is timed on its own decreases and held
longer (issue #17: test what the charger does, not only what it declares)."""

from __future__ import annotations

from sitectl.sim.charger import SimEv
from sitectl.sim.quirks import Quirks
from tests.helpers import wait_for
from tests.scenarios.conftest import scenario_config


async def test_a_slow_charger_is_timed_on_a_real_depot_and_held_longer(tmp_path, make_site):
    # A ramps at 3 A/s: a cut from 32 A to about 20 A takes 4 s, above the 1 s the config says.
    config = scenario_config(
        tmp_path,
        [{"id": "A"}, {"id": "B"}],
        phase_limit_a=60,
        site={"non_ev_max_a": 45},
        control={"ramp_down_s": 1},
    )
    building = {"a": 0.0}
    site = await make_site(
        config,
        {"feeder": lambda t: (building["a"],) * 3},
        quirks={"A": Quirks(ramp_a_per_s=3.0)},
    )
    await site.depot.plug_in("A", SimEv(max_a=32))
    for _ in range(2):
        building["a"] = 0.0
        await wait_for(lambda: site.draw("A") > 27, timeout=30, message="A up")
        building["a"] = 40.0
        await wait_for(lambda: site.draw("A") < 21, timeout=30, message="A down")
    await wait_for(
        lambda: site.state.chargers["A"].step_response.get("steps", 0) >= 2,
        timeout=10,
        message=lambda: f"timed: {site.state.chargers['A'].step_response}",
    )
    found = site.state.chargers["A"].step_response
    assert found["ramp_down_s_at_least"] >= 2.0
    assert site.loop.builder.ramp_hold_s("A") >= 2.0 > config.control.ramp_down_s
    assert site.loop.builder.ramp_hold_s("B") == config.control.ramp_down_s
