"""An OpenADR 3 event, end to end (issue #20): the grid operator's VTN announces an import limit,
sitectl's VEN reads it, the LP plans with it, and the simulated grid meter shows the depot under
it for the whole window; when the VTN goes silent, the fail-safe limit holds.

Real sockets everywhere: the stub VTN (checked against the official OpenAPI document), the VEN's
HTTP client, simulated chargers over OCPP and the simulated Modbus grid meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

from sitectl.openadr.ven import OpenAdrVen
from sitectl.sim.charger import SimEv
from tests.helpers import wait_for
from tests.openadr.conftest import KW, limit_interval, ven_config
from tests.openadr.vtn import StubVtn
from tests.scenarios.conftest import RAMP_S, scenario_config

LIMIT_KW = 20.0  # two vehicles at 32 A draw about 44 kW
VOLTS = 230.0


def rfc3339(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def grid_kw(site) -> float:
    return sum(site.depot.circuit_current("grid")) * VOLTS / 1000


async def test_an_openadr_event_holds_the_depot_under_its_limit_and_silence_holds_the_fail_safe(
    tmp_path, make_site
) -> None:
    vtn = StubVtn()
    await vtn.start()
    config = scenario_config(tmp_path, [{"id": "A"}, {"id": "B"}], phase_limit_a=100)
    site = await make_site(config)
    ven_cfg = ven_config(
        vtn, tmp_path, failsafe_kw=30, unreachable_after_s=3, poll_interval_s=1, request_timeout_s=1
    )
    ven = OpenAdrVen(ven_cfg, site.state)
    task = asyncio.create_task(ven.run())
    try:
        for charger_id in "AB":
            await site.depot.plug_in(charger_id, SimEv(max_a=32, energy_wanted_kwh=60))
        await wait_for(
            lambda: site.draw("A") > 25 and site.draw("B") > 25, timeout=20, message="both up"
        )
        # The grid operator's event: 20 kW from 6 s from now, for 20 s.
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
        flex = vtn.add_program("flex")
        vtn.add_event(
            flex["id"],
            [limit_interval(0, LIMIT_KW, rfc3339(start), "PT20S")],
            payloadDescriptors=KW,
        )
        await wait_for(
            lambda: any(
                w.limit_kw == LIMIT_KW
                for w in site.state.limits.windows(
                    datetime.now(UTC), start + timedelta(seconds=20), datetime.now(UTC)
                )
            ),
            timeout=5,
            message="the event on the board",
        )
        # Through the window (after one cycle and a ramp at its start): never above the limit.
        settle = start + timedelta(seconds=config.control.period_s + RAMP_S + 1)
        await wait_for(lambda: datetime.now(UTC) >= settle, timeout=15, message="the window")
        end = start + timedelta(seconds=19)
        seen = {"worst": 0.0, "lowest_a": 99.0}

        def sample() -> bool:
            """Record what flows now; done once the window is over."""
            seen["worst"] = max(seen["worst"], grid_kw(site))
            seen["lowest_a"] = min(seen["lowest_a"], site.draw("A"), site.draw("B"))
            return datetime.now(UTC) >= end

        await wait_for(sample, timeout=25, interval=0.1, message="the window to pass")
        worst = seen["worst"]
        # Turned down, never off: the limit leaves each vehicle more than its minimum.
        assert seen["lowest_a"] > 5, seen
        assert worst <= LIMIT_KW * 1.02, f"{worst:.1f} kW under a {LIMIT_KW} kW window"
        reasons = site.state.control.sessions["A/1"].limited_by
        assert any("openadr:flex" in str(item) for item in reasons), reasons
        # After the window: back up.
        await wait_for(lambda: grid_kw(site) > 35, timeout=20, message="back up after the window")

        # The VTN goes away: within unreachable_after_s (and a poll) the 30 kW fail-safe holds.
        await vtn.stop()
        gone = time.monotonic()
        await wait_for(
            lambda: ("openadr_unreachable", "openadr:flex") in site.state.alarms,
            timeout=10,
            message="the unreachable alarm",
        )
        settle_s = config.control.period_s + RAMP_S + 1
        await wait_for(lambda: grid_kw(site) <= 30 * 1.02, timeout=10, message="the fail-safe")
        assert time.monotonic() - gone <= 3 + 1 + settle_s + 2
        # Everything the VEN sent and the stub answered is what the OpenAPI document says.
        assert vtn.errors == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ven.client.close()
        with contextlib.suppress(Exception):
            await vtn.stop()
