"""Digital I/O modules: profiles as data, and inputs read from real pymodbus servers (TCP, RTU).

Each input reads on, off, or unknown (``None``) with the exact cause: a flipped contact is seen
at the next poll, an exception, a dead server or a bad register value make inputs unknown and
log one line, and the device recovers by itself.
"""

from __future__ import annotations

import logging

import pytest

from devices.api import DeviceSpec, DigitalInputs, SerialTransport
from devices.digital import (
    MODBUS_DI,
    available_io_profiles,
    is_io_profile,
    load_io_profile,
    parse_io_profile,
    plan_io_blocks,
)
from devices.inputs import IoReading
from devices.meter import MeterPool, Quality
from devices.probe import probe, render
from devices.profile import ProfileError, load_profile
from devices.registers import BitTable, Table
from devices.sim import PtyBridge, SimIo, SimMeter, SimServer

FAST = {"poll_period_s": 0.05, "timeout_s": 0.15, "retries": 1}
LINK = {"reconnect_min_s": 0.02, "reconnect_max_s": 0.2}
MOXA = "moxa-iologik-e1210"
# A module that maps its inputs into registers, and one contact on a coil.
MIXED = [
    {"name": "door", "table": "holding", "address": 40, "bit": 3},
    {"name": "relay", "table": "holding", "address": 40, "bit": 0},
    {"name": "flag", "table": "input", "address": 7},
    {"name": "k1", "table": "coil", "address": 21},
]


@pytest.fixture(autouse=True)
def _log_level(caplog) -> None:
    caplog.set_level(logging.INFO, logger="devices")


def _spec(transport, name: str = "io", profile: str = MOXA, **kw) -> DeviceSpec:
    return DeviceSpec(name, profile, transport, **{**FAST, **kw})


def _pool(readings, *specs: DeviceSpec) -> MeterPool:
    return MeterPool(list(specs), readings, link_options=LINK)


# Profiles.


def test_the_shipped_moxa_profile_reads_16_discrete_inputs_in_one_request() -> None:
    profile = load_io_profile(MOXA)
    assert profile.names == tuple(f"di{i}" for i in range(16))
    assert profile.input("di3").table is BitTable.DISCRETE and profile.input("di3").address == 3
    assert [(b.table, b.address, b.count) for b in profile.blocks] == [(BitTable.DISCRETE, 0, 16)]
    assert "E1210" in profile.source
    assert MOXA in available_io_profiles() and MODBUS_DI in available_io_profiles()
    assert is_io_profile(MOXA) and is_io_profile(MODBUS_DI) and not is_io_profile("eastron-sdm630")


def test_register_bits_and_coils_are_grouped_per_table() -> None:
    profile = parse_io_profile(MIXED, "mixed")
    blocks = {(b.table, b.address, b.count) for b in profile.blocks}
    assert blocks == {(Table.HOLDING, 40, 1), (Table.INPUT, 7, 1), (BitTable.COIL, 21, 1)}
    assert profile.input("door").where() == "holding register 40 bit 3"
    assert profile.input("k1").where() == "coil 21"
    # Bits 16 apart or less share a read; registers only within max_gap.
    items = parse_io_profile(
        [{"name": "a", "address": 0}, {"name": "b", "address": 17}, {"name": "c", "address": 40}],
        "gaps",
    ).inputs
    assert [(b.address, b.count) for b in plan_io_blocks(items)] == [(0, 18), (40, 1)]


def test_one_based_numbering_is_resolved_to_protocol_addresses() -> None:
    profile = parse_io_profile({"base": 1, "inputs": [{"name": "x", "address": 10001}]}, "one")
    assert profile.input("x").address == 10000 and profile.input("x").number == 10001


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"name": "a", "table": "coil", "address": 1, "bit": 2}], "inputs[0].bit: only for"),
        (
            [{"name": "a", "address": 1}, {"name": "a", "address": 2}],
            "inputs[1].name: 'a' already used by inputs[0]",
        ),
        (
            [{"name": "a", "address": 1}, {"name": "b", "address": 1}],
            "inputs[1].address: same bit as inputs[0]",
        ),
        (
            [
                {"name": "a", "table": "holding", "address": 5},
                {"name": "b", "table": "holding", "address": 5, "bit": 1},
            ],
            "inputs[1].bit: register 5 is also read as a whole",
        ),
        ([{"name": "a", "table": "relay", "address": 1}], "inputs[0].table: Input should be"),
        ({"base": 1, "inputs": [{"name": "a", "address": 0}]}, "inputs[0].address: 0 is outside"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
    ],
)
def test_profile_problems_name_their_field(data, message) -> None:
    with pytest.raises(ProfileError) as err:
        parse_io_profile(data, "bad")
    assert any(p.startswith(f"profile 'bad': {message}") for p in err.value.problems), err.value


def test_an_unknown_profile_lists_the_io_profiles_too() -> None:
    with pytest.raises(ProfileError, match=r"digital I/O: .*moxa-iologik-e1210"):
        load_profile("moxa-iologik-e1211")
    with pytest.raises(ProfileError, match="unknown I/O profile"):
        load_io_profile("wago-750-999")


# Reading over TCP.


async def test_inputs_are_read_and_a_flipped_contact_is_seen(readings, start_pool) -> None:
    io = SimIo(MOXA, unit_id=3, states={"di2": True})
    meter = SimMeter("eastron-sdm630", unit_id=1)
    async with SimServer([meter, io]) as server:
        pool = _pool(
            readings,
            _spec(server.transport, unit_id=3),
            _spec(server.transport, "grid", "eastron-sdm630", unit_id=1),
        )
        assert len(pool.links) == 1  # one connection for the meter and the I/O module
        start_pool(pool)
        r = await readings.wait_quality("io", Quality.OK)
        assert isinstance(r, IoReading)
        assert r.state("di2") is True and r.state("di0") is False and r.error is None
        assert set(r.inputs) == {f"di{i}" for i in range(16)}
        view = pool.meter("io")
        assert isinstance(view, DigitalInputs) and view.input_state("di2") is True
        mark = len(readings.items)
        io.set("di2", False)
        io.set("di15", True)
        r = await readings.wait(lambda r: r.device == "io" and r.state("di2") is False, since=mark)
        assert r.state("di15") is True
        assert (await readings.wait_quality("grid", Quality.OK)).power_total_kw == pytest.approx(
            7.5, rel=1e-5
        )


async def test_register_bits_coils_and_a_bad_value(readings, start_pool, caplog) -> None:
    io = SimIo(MIXED, unit_id=5)
    async with SimServer([io]) as server:
        start_pool(
            _pool(
                readings, _spec(server.transport, profile=MODBUS_DI, unit_id=5, inline_inputs=MIXED)
            )
        )
        r = await readings.wait_quality("io", Quality.OK)
        assert r.inputs == {"door": False, "relay": False, "flag": False, "k1": False}
        mark = len(readings.items)
        io.set("door", True)
        io.set("k1", True)
        io.set("flag", True)
        r = await readings.wait(lambda r: r.device == "io" and r.state("door"), since=mark)
        assert r.inputs == {"door": True, "relay": False, "flag": True, "k1": True}
        assert r.raw["holding 40"] == 0b1000
        # A register that must hold 0 or 1 holds 9: that input is unknown, the others stand.
        mark = len(readings.items)
        io.set_word(Table.INPUT, 7, 9)
        r = await readings.wait_quality("io", Quality.IMPLAUSIBLE, since=mark)
        assert r.state("flag") is None and r.state("door") is True and r.state("k1") is True
        assert r.error == (
            "input flag (input register 7) holds 9, expected 0 or 1 (a register of several "
            "inputs needs `bit:`)"
        )
        assert "device io: implausible: input flag (input register 7) holds 9" in caplog.text
        mark = len(readings.items)
        io.set("flag", False)
        r = await readings.wait_quality("io", Quality.OK, since=mark)
        assert r.state("flag") is False
        assert "device io: ok again after" in caplog.text


async def test_an_exception_makes_every_input_unknown_until_it_answers(
    readings, start_pool, caplog
) -> None:
    io = SimIo(MOXA, unit_id=3, states={"di0": True})
    async with SimServer([io]) as server:
        start_pool(_pool(readings, _spec(server.transport, unit_id=3)))
        await readings.wait_quality("io", Quality.OK)
        mark = len(readings.items)
        io.exception = 0x04
        r = await readings.wait_quality("io", Quality.ERROR, since=mark)
        assert set(r.inputs.values()) == {None}
        assert r.error.startswith(
            "Modbus exception 0x04 SERVER DEVICE FAILURE from unit 3 reading 16 discrete bits at 0"
        )
        assert "device io: error: Modbus exception 0x04" in caplog.text
        io.clear_faults()
        r = await readings.wait_quality("io", Quality.OK, since=len(readings.items))
        assert r.state("di0") is True


async def test_a_dead_module_and_a_silent_one(readings, start_pool, caplog) -> None:
    io = SimIo(MOXA, unit_id=3)
    server = SimServer([io])
    await server.start()
    try:
        start_pool(_pool(readings, _spec(server.transport, unit_id=3)))
        await readings.wait_quality("io", Quality.OK)
        mark = len(readings.items)
        await server.stop()
        r = await readings.wait_quality("io", Quality.ERROR, since=mark)
        assert "connection" in r.error and r.state("di0") is None
        await server.start()
        await readings.wait_quality("io", Quality.OK, since=len(readings.items))
        mark = len(readings.items)
        io.silent = True
        r = await readings.wait_quality("io", Quality.ERROR, since=mark)
        assert "timeout: no response from unit 3" in r.error and r.state("di0") is None
    finally:
        await server.stop()


async def test_a_hung_module_is_reported_stale(readings, start_pool) -> None:
    io = SimIo(MOXA, unit_id=3)
    async with SimServer([io]) as server:
        # A poll that can take far longer than the stale limit (3 periods).
        spec = _spec(server.transport, unit_id=3, poll_period_s=0.05, timeout_s=2.0, retries=0)
        start_pool(_pool(readings, spec))
        await readings.wait_quality("io", Quality.OK)
        io.delay_s = 5.0
        r = await readings.wait_quality("io", Quality.STALE, since=len(readings.items))
        assert r.error.startswith("no poll completed for") and set(r.inputs.values()) == {None}


async def test_an_operator_writes_a_coil_input(readings, start_pool) -> None:
    # The demo's §14a contact: a coil any Modbus client can switch.
    from pymodbus.client import AsyncModbusTcpClient

    inputs = [{"name": "dim", "table": "coil", "address": 0}]
    io = SimIo(inputs, unit_id=9)
    async with SimServer([io]) as server:
        start_pool(
            _pool(
                readings, _spec(server.transport, "sw", MODBUS_DI, unit_id=9, inline_inputs=inputs)
            )
        )
        await readings.wait(lambda r: r.device == "sw" and r.state("dim") is False)
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port)
        await client.connect()
        try:
            assert not (await client.write_coil(0, True, device_id=9)).isError()
        finally:
            client.close()
        await readings.wait(lambda r: r.device == "sw" and r.state("dim") is True)
        assert io.get("dim") is True


async def test_probe_shows_every_input(readings) -> None:
    io = SimIo(MIXED, unit_id=5, states={"door": True})
    async with SimServer([io]) as server:
        spec = _spec(server.transport, profile=MODBUS_DI, unit_id=5, inline_inputs=MIXED)
        (result,) = await probe([spec], raw=True)
    assert result.ok
    text = render([result])
    assert "io (modbus-di, tcp 127.0.0.1:" in text and ": ok" in text
    assert "door              on       (holding register 40 bit 3) raw 0008" in text
    assert "k1                off      (coil 21) raw 0000" in text


# Over RTU, on a bus shared with a meter.


async def test_an_io_module_on_the_meters_rs485_bus(readings, start_pool, caplog) -> None:
    with PtyBridge() as bridge:
        io = SimIo(MOXA, unit_id=4, states={"di1": True})
        server = SimServer(
            [SimMeter("eastron-sdm630", unit_id=1), io],
            serial=SerialTransport(bridge.port_a, 19200, "N", 1),
        )
        await server.start()
        try:
            port = SerialTransport(bridge.port_b, 19200, "N", 1)
            rtu = {"poll_period_s": 0.2, "timeout_s": 0.05, "retries": 1}
            pool = MeterPool(
                [
                    DeviceSpec("sdm", "eastron-sdm630", port, unit_id=1, **rtu),
                    DeviceSpec("io", MOXA, port, unit_id=4, **rtu),
                ],
                readings,
            )
            assert len(pool.links) == 1
            start_pool(pool)
            r = await readings.wait_quality("io", Quality.OK)
            assert r.state("di1") is True
            await readings.wait_quality("sdm", Quality.OK)
            mark = len(readings.items)
            io.set("di1", False)
            await readings.wait(lambda r: r.device == "io" and r.state("di1") is False, since=mark)
            mark = len(readings.items)
            io.garble = True
            r = await readings.wait_quality("io", Quality.ERROR, since=mark)
            assert "garbled response" in r.error and "bad CRC" in r.error
            assert r.state("di1") is None
            await readings.wait_quality("sdm", Quality.OK, since=mark)  # the meter still reads
            io.garble = False
            await readings.wait_quality("io", Quality.OK, since=len(readings.items))
        finally:
            await server.stop()
