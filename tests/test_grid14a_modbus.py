"""§14a dimming end to end up to the limit board: a real pymodbus I/O module, the meter pool and
the source, wired as `sitectl run` wires them (real clocks, waits on conditions).

The contact closes → the board holds the hard kW window within a poll; it opens → withdrawn;
the module dies or serves a bad value → after `unknown_after_s` the limit and the warning; it
answers again → both go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from devices.meter import MeterPool
from devices.registers import Table
from devices.sim import SimIo, SimServer
from sitectl.app import build_components
from sitectl.config import load_config
from sitectl.grid14a import ALARM_ACTIVE, ALARM_UNKNOWN, Dimming14a
from sitectl.state import SiteState
from sitectl.store import Store
from tests.helpers import MINIMAL_CONFIG, free_port, wait_for

UNKNOWN_AFTER_S = 0.6


def site_text(port: int, device: str) -> str:
    return (
        MINIMAL_CONFIG
        + device.format(port=port)
        + (
            "grid_signals:\n"
            "  dimming_14a:\n"
            "    device: box\n"
            "    input: {input}\n"
            "    controllable_devices: 2\n"
            f"    unknown_after_s: {UNKNOWN_AFTER_S}\n"
        )
    )


MOXA = """\
devices:
  - {{name: box, profile: moxa-iologik-e1210, host: 127.0.0.1, port: {port}, unit_id: 3,
     poll_period_s: 0.05, timeout_s: 0.1, retries: 0}}
"""
# A module that maps its inputs into a holding register: the contact is one register, 0 or 1.
REGISTER = """\
devices:
  - name: box
    profile: modbus-di
    host: 127.0.0.1
    port: {port}
    unit_id: 3
    poll_period_s: 0.05
    timeout_s: 0.1
    retries: 0
    inputs: [{{name: dim, table: holding, address: 40}}]
"""


@contextlib.asynccontextmanager
async def running(write_config, device: str, input_name: str, sim: SimIo):
    """The I/O module served on a free port; the pool and the §14a source running on it."""
    port = free_port()
    text = site_text(port, device).replace("{input}", input_name)
    config, _ = load_config(write_config(text), environ={})
    state = SiteState(config)
    pool = MeterPool(
        [d.to_spec() for d in config.devices],
        on_reading=lambda r: state.set_reading(r.device, r),
        link_options={"reconnect_min_s": 0.02, "reconnect_max_s": 0.1},
    )
    source = Dimming14a(config, state)
    server = SimServer([sim], port=port)
    await server.start()
    tasks = [asyncio.create_task(pool.run()), asyncio.create_task(source.run())]
    try:
        yield state, server
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop()


def in_force(state: SiteState):
    return state.limits.in_force(state.clock())


async def test_the_contact_closes_and_opens(write_config, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sitectl.grid14a")
    box = SimIo("moxa-iologik-e1210", unit_id=3)
    async with running(write_config, MOXA, "di0", box) as (state, _):
        await wait_for(lambda: "box" in state.readings, message="the first poll")
        assert in_force(state) == [] and state.limits.sources() == ["14a:box"]
        box.set("di0", True)
        await wait_for(lambda: len(in_force(state)) == 1, timeout=2, message="the limit")
        [limit] = in_force(state)
        assert (limit.node, limit.source, limit.hard) == ("grid", "14a:box", True)
        assert limit.limit_kw == pytest.approx(6.72) and limit.end is None
        assert (ALARM_ACTIVE, "grid") in state.alarms
        assert "§14a dimming active: input di0 of box says dim" in caplog.text
        box.set("di0", False)
        await wait_for(lambda: in_force(state) == [], timeout=2, message="the release")
        assert (ALARM_ACTIVE, "grid") not in state.alarms
        assert "§14a dimming released: limit 6.72 kW on 'grid' withdrawn" in caplog.text
        # Another input of the module changes nothing.
        box.set("di1", True)
        await wait_for(lambda: state.readings["box"].state("di1") is True, timeout=2)
        assert in_force(state) == []


async def test_a_dead_module_is_the_worst_case_until_it_answers(write_config) -> None:
    box = SimIo("moxa-iologik-e1210", unit_id=3)
    async with running(write_config, MOXA, "di0", box) as (state, server):
        await wait_for(lambda: getattr(state.readings.get("box"), "ok", False))
        await server.stop()
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await wait_for(lambda: len(in_force(state)) == 1, timeout=3, message="the fail-safe")
        waited = loop.time() - stopped
        # Counted from the last value read (up to a poll before the stop), never sooner.
        assert UNKNOWN_AFTER_S - 0.2 <= waited <= UNKNOWN_AFTER_S + 1.0, waited
        [limit] = in_force(state)
        assert limit.limit_kw == pytest.approx(6.72) and "unreadable" in limit.reason
        alarm = state.alarms[(ALARM_UNKNOWN, "box")]
        assert "connection" in alarm.text and "dimming limit 6.72 kW on 'grid' applied" in (
            alarm.text
        )
        await server.start()
        await wait_for(lambda: in_force(state) == [], timeout=3, message="the recovery")
        assert (ALARM_UNKNOWN, "box") not in state.alarms
        assert (ALARM_ACTIVE, "grid") not in state.alarms


async def test_a_register_input_with_a_bad_value(write_config) -> None:
    box = SimIo([{"name": "dim", "table": "holding", "address": 40}], unit_id=3)
    async with running(write_config, REGISTER, "dim", box) as (state, _):
        box.set("dim", True)
        await wait_for(lambda: len(in_force(state)) == 1, timeout=2, message="the limit")
        assert "closed" in in_force(state)[0].reason
        box.set_word(Table.HOLDING, 40, 0x00FF)  # garbage where 0 or 1 belongs
        await wait_for(
            lambda: (ALARM_UNKNOWN, "box") in state.alarms, timeout=3, message="the warning"
        )
        assert "holds 255, expected 0 or 1" in state.alarms[(ALARM_UNKNOWN, "box")].text
        assert "unreadable" in in_force(state)[0].reason  # still limited, now as unknown
        box.set("dim", False)
        await wait_for(lambda: in_force(state) == [], timeout=2, message="the release")
        assert (ALARM_UNKNOWN, "box") not in state.alarms


def test_sitectl_run_builds_the_source(write_config, tmp_path) -> None:
    text = site_text(free_port(), MOXA).replace("{input}", "di0")
    config, _ = load_config(write_config(text), environ={})
    store = Store(tmp_path / "s.sqlite")
    try:
        components = build_components(config, SiteState(config), store)
    finally:
        store.close()
    names = [c.name for c in components]
    assert "grid-14a" in names and names.index("devices") < names.index("grid-14a")
