"""§14a EnWG dimming on a simulated depot (real sockets): the grid operator's contact closes,
and what flows through the grid connection is judged, not what sitectl sent.

The site gets under the dimming limit within one control cycle and the ramp (plus one poll of
the contact), and stays there; the limit is shared, so every vehicle keeps charging at no less
than its minimum while the limit allows each its minimum; the contact opens and they get their
current back.
"""

from __future__ import annotations

import time

import pytest

from sitectl.config import GRID
from sitectl.grid14a import ALARM_ACTIVE
from sitectl.sim.charger import SimEv
from sitectl.sim.site import DIMMING_DEVICE
from tests.helpers import wait_for
from tests.scenarios.conftest import RAMP_S, scenario_config

# 2 vehicles at their 6 A minimum take 2 × 6 A × 3 × 230 V = 8.28 kW: within the 9.45 kW of
# three controllable devices (3 × 4.2 kW × 0.75), so neither may be stopped for it.
MIN_A = 6.0
TOLERANCE_KW = 0.05


def grid_kw(site, sample) -> float:
    return sum(sample[GRID]) * site.config.site.nominal_voltage_v / 1000


async def test_the_contact_closes_and_the_site_stays_under_the_shared_limit(tmp_path, make_site):
    config = scenario_config(
        tmp_path, [{"id": "A"}, {"id": "B"}], dimming={"controllable_devices": 3}
    )
    limit_kw = config.grid_signals.dimming_14a.dimming_kw
    assert limit_kw == pytest.approx(9.45)
    site = await make_site(config)
    for charger_id in "AB":
        await site.depot.plug_in(charger_id, SimEv(max_a=32))
    await wait_for(
        lambda: site.draw("A") > 30 and site.draw("B") > 30,
        timeout=15,
        message=lambda: f"both at 32 A (A {site.draw('A'):.1f}, B {site.draw('B'):.1f})",
    )
    assert grid_kw(site, site.depot.physical[-1][1]) > 40  # 2 × 22 kW before

    site.depot.io[DIMMING_DEVICE].set("di0", True)
    closed = time.monotonic()
    poll_s = next(d for d in config.devices if d.name == DIMMING_DEVICE).poll_period_s
    allowed = config.control.period_s + RAMP_S + poll_s
    await wait_for(
        lambda: len(site.state.limits.in_force(site.state.clock())) == 1,
        timeout=2,
        message="the 14a window on the board",
    )
    assert (ALARM_ACTIVE, GRID) in site.state.alarms
    # Judge a few cycles after the deadline: from then on, never above the limit, and both
    # vehicles still charging at their minimum or more — once the non-EV estimates made at
    # 2 × 22 kW have left their hold (`control.non_ev_hold_s`: the measured-minus-EV margins
    # of that load, ~1.5 kW, still count on the kW row for that long, so for a moment only one
    # minimum fits under 9.45 kW; the grid is under the limit throughout).
    until = closed + allowed
    shared_from = until + config.control.effective_non_ev_hold_s
    while time.monotonic() < shared_from + 3:
        await site.cycles(1)
        if time.monotonic() > shared_from:
            assert site.draw("A") >= MIN_A - 0.1 and site.draw("B") >= MIN_A - 0.1, (
                f"a vehicle stopped: A {site.draw('A'):.1f} A, B {site.draw('B'):.1f} A"
            )
    late = [grid_kw(site, s) for stamp, s in site.depot.physical if stamp >= until]
    assert late and max(late) <= limit_kw + TOLERANCE_KW, (
        f"{max(late):.2f} kW > {limit_kw:.2f} kW after {allowed:.1f} s"
    )
    # The limit is used, not left idle: the two share it.
    assert sum(late[-5:]) / 5 > 0.8 * limit_kw
    meter = site.depot.meters["grid-meter"].value("power_total")
    assert meter is not None and meter <= limit_kw + 0.2  # the meter shows it (with its noise)

    site.depot.io[DIMMING_DEVICE].set("di0", False)
    await wait_for(
        lambda: site.draw("A") > 30 and site.draw("B") > 30,
        timeout=10,
        message=lambda: f"current back (A {site.draw('A'):.1f}, B {site.draw('B'):.1f})",
    )
    assert site.state.limits.in_force(site.state.clock()) == []
    assert (ALARM_ACTIVE, GRID) not in site.state.alarms
