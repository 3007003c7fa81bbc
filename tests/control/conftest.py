"""A control-loop rig: sitectl's real components in-process, a simulated depot around them.

sitectl side: the OCPP server (standalone: sitectl answers the chargers itself), the state
observer, the profile keeper, the Modbus meter pool and the control loop. Field side: simulated
chargers on real WebSockets that follow their composite limit with a lag, and a pymodbus grid
meter whose reading is the building load plus what the chargers really draw.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devices.meter import MeterPool
from sitectl.config import Config, load_config
from sitectl.control.loop import ControlLoop
from sitectl.ocpp.keeper import ProfileKeeper
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.server import OcppServer
from sitectl.sim.depot import SimDepot
from sitectl.state import SiteState
from sitectl.store import Store
from tests.helpers import free_ports, wait_for

PASSWORD = "rig-charger-password-01"


def rig_config(
    tmp_path: Path,
    chargers: str,
    *,
    phase_limit_a: float = 100,
    non_ev_max_a: float = 40,
    extra: str = "",
) -> Config:
    """A one-feeder depot with a grid meter; `chargers` is YAML list items."""
    meter_port, ocpp_port = free_ports(2)
    text = (
        textwrap.dedent(f"""\
        site: {{id: rig, limit_kw: 500, phase_limit_a: {phase_limit_a}, meter: grid-meter,
               non_ev_max_a: {non_ev_max_a}}}
        circuits:
          - {{id: feeder, limit_a: {phase_limit_a}}}
        charger_defaults: {{circuit: feeder, max_current_a: 32, failsafe_current_a: 6,
                           password: {PASSWORD}}}
        chargers:
        """)
        + textwrap.indent(textwrap.dedent(chargers), "  ")
        + textwrap.dedent(f"""\
        devices:
          - {{name: grid-meter, profile: eastron-sdm630, host: 127.0.0.1, port: {meter_port},
             unit_id: 1, poll_period_s: 0.1, timeout_s: 0.3}}
        ocpp: {{listen_host: 127.0.0.1, listen_port: {ocpp_port},
               offline: {{local_id_tags: [FLEET]}}}}
        control:
          period_s: 0.5
          profile_validity_s: 2
          dispatch_timeout_s: 1
          meter_grace_s: 0.6
          failsafe_hold_s: 2
          good_readings_to_recover: 3
          compliance_grace_s: 1
          deadband_a: 0.5
          min_pause_s: 0
          min_charge_s: 0
          step_s: 300
          horizon_steps: 24
          ev_measurement_max_age_s: 2
          non_ev_hold_s: 2
          ev_learn_s: 1
          solver_budget_s: 0.5
          default_energy_kwh: 100
        mqtt: {{enabled: false}}
        http: {{enabled: false}}
        storage: {{path: {tmp_path / "rig.sqlite"}}}
        """)
        + textwrap.dedent(extra)
    )
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    config, _ = load_config(path, environ={})
    return config


@dataclass
class Rig:
    """A running depot: `sitectl` parts and the simulated field."""

    config: Config
    state: SiteState
    loop: ControlLoop
    server: OcppServer
    depot: SimDepot
    tasks: list[asyncio.Task] = field(default_factory=list)

    def violations(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        """Moments where the chargers' limits plus the building exceeded a circuit limit."""
        return self.depot.violations(since, until=until)

    async def cycles(self, n: int = 1, timeout: float = 10) -> None:
        """Wait for `n` more complete control cycles."""
        for _ in range(n):
            self.loop.cycle_done.clear()
            await asyncio.wait_for(self.loop.cycle_done.wait(), timeout)


@pytest.fixture
async def make_rig(tmp_path) -> AsyncIterator[Callable[..., Any]]:
    rigs: list[Rig] = []
    stores: list[Store] = []

    async def make(
        config: Config, building: dict | None = None, start_loop: bool = True, **depot_options: Any
    ) -> Rig:
        store = Store(config.storage.path)
        stores.append(store)
        state = SiteState(config)
        server = OcppServer(config, StateObserver(state), store=store)
        keeper = ProfileKeeper(state, server.call)
        loop = ControlLoop(config, state, keeper.set_profile)
        pool = MeterPool(
            [d.to_spec() for d in config.devices],
            on_reading=lambda r: state.set_reading(r.device, r),
        )
        depot = SimDepot(
            config,
            f"ws://127.0.0.1:{config.ocpp.listen_port}/ocpp",
            building=building or {},
            tick_s=0.05,
            report_s=0.25,
            lag_s=0.2,
            **depot_options,
        )
        rig = Rig(config, state, loop, server, depot)
        rigs.append(rig)
        await depot.start_meters()
        rig.tasks += [
            asyncio.create_task(server.run()),
            asyncio.create_task(keeper.run()),
            asyncio.create_task(pool.run()),
        ]
        await asyncio.wait_for(server.ready.wait(), 10)
        await depot.start()
        if start_loop:
            rig.tasks.append(asyncio.create_task(loop.run()))
            await wait_for(
                lambda: all(m.failsafe_installed for m in loop.memory.values()),
                timeout=10,
                message="fail-safe profiles on every charger",
            )
            # Before this, chargers run on their own defaults: nothing sitectl commanded.
            depot.samples.clear()
        return rig

    yield make
    for rig in rigs:
        for task in reversed(rig.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await rig.depot.stop()
    for store in stores:
        store.close()
