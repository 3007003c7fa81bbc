"""The demo's §14a contact: the command it prints really switches the simulated coil."""

from __future__ import annotations

import asyncio
import shlex

import pytest

from sitectl.sim import DEMO_CONFIG
from sitectl.sim.demo import dimming_command, prepare_config
from sitectl.sim.depot import SimDepot
from tests.helpers import wait_for


async def test_the_printed_command_closes_and_opens_the_contact(tmp_path) -> None:
    config = prepare_config(DEMO_CONFIG, tmp_path)
    dimming = config.grid_signals.dimming_14a
    assert dimming is not None and dimming.node == "feeder-a"
    assert dimming.dimming_kw == pytest.approx(15.12)  # 6 × 4.2 kW × 0.6
    depot = SimDepot(config, "ws://127.0.0.1:1/ocpp")
    await depot.start_meters()
    try:
        box = depot.io[dimming.device]
        for on in (True, False):
            command = dimming_command(config, on)
            assert command is not None
            process = await asyncio.create_subprocess_exec(*shlex.split(command))
            assert await asyncio.wait_for(process.wait(), 30) == 0
            await wait_for(lambda on=on: box.get(dimming.input) is on, message=f"coil {on}")
    finally:
        await depot.stop()
