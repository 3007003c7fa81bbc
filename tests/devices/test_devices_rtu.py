"""Modbus RTU over a pseudo-terminal pair: pymodbus serial server on one end, sitectl on the other.

``PtyBridge`` relays between two ptys (pure Python, no socat); two meters share the bus and
sitectl reads both through one serial client. Line settings are 8N1: the Linux pty driver
rejects re-applying a parity setting (tcsetattr EINVAL), and a pty has no line to check it on.
"""

from __future__ import annotations

import pytest

from devices.api import DeviceSpec, SerialTransport
from devices.meter import MeterPool, Quality
from devices.probe import probe, render
from devices.sim import PtyBridge, SimMeter, SimServer

# A pty answers within milliseconds; a short timeout keeps the failing units from filling the bus.
FAST = {"poll_period_s": 0.2, "timeout_s": 0.05, "retries": 1}


@pytest.fixture
async def bus():
    """Two meters (units 1 and 2) behind a virtual RS-485 cable; yields (meters, client port)."""
    with PtyBridge() as bridge:
        meters = [SimMeter("eastron-sdm630", unit_id=1), SimMeter("carlo-gavazzi-em24", unit_id=2)]
        server = SimServer(meters, serial=SerialTransport(bridge.port_a, 19200, "N", 1))
        await server.start()
        try:
            yield meters, SerialTransport(bridge.port_b, 19200, "N", 1)
        finally:
            await server.stop()


def _specs(port: SerialTransport) -> list[DeviceSpec]:
    return [
        DeviceSpec("sdm", "eastron-sdm630", port, unit_id=1, **FAST),
        DeviceSpec("em24", "carlo-gavazzi-em24", port, unit_id=2, **FAST),
    ]


async def test_two_meters_share_one_bus(bus, readings, start_pool) -> None:
    meters, port = bus
    pool = MeterPool(_specs(port), readings)
    assert len(pool.links) == 1
    start_pool(pool)
    for name in ("sdm", "em24"):
        r = await readings.wait_quality(name, Quality.OK)
        assert r.voltage_v == pytest.approx((230.0, 231.0, 229.0))
        assert r.power_total_kw == pytest.approx(7.5, rel=1e-5)
    meters[1].update(power_total=-3.2)
    r = await readings.wait(
        lambda r: (
            r.device == "em24"
            and r.power_total_kw is not None
            and abs(r.power_total_kw + 3.2) < 1e-6
        )
    )
    assert r.ok


async def test_bad_crc_and_wrong_unit(bus, readings, start_pool, caplog) -> None:
    meters, port = bus
    specs = [*_specs(port), DeviceSpec("ghost", "eastron-sdm630", port, unit_id=7, **FAST)]
    start_pool(MeterPool(specs, readings))
    await readings.wait_quality("em24", Quality.OK)
    r = await readings.wait_quality("ghost", Quality.ERROR)
    assert "timeout: no response from unit 7" in r.error
    assert "wrong unit id" in r.error
    mark = len(readings.items)
    meters[1].garble = True
    r = await readings.wait_quality("em24", Quality.ERROR, since=mark)
    assert "garbled response" in r.error and "bad CRC" in r.error
    assert "device em24: error: garbled response" in caplog.text
    # The other meter on the same bus keeps answering.
    await readings.wait_quality("sdm", Quality.OK, since=mark)
    mark = len(readings.items)
    meters[1].garble = False
    await readings.wait_quality("em24", Quality.OK, since=mark)


async def test_probe_over_rtu(bus) -> None:
    _, port = bus
    results = await probe(_specs(port), raw=True)
    assert [r.ok for r in results] == [True, True]
    text = render(results)
    assert "rtu " in text and "19200 8N1 unit 2" in text
    assert "input       0 (addr 0x0000) f32    4366 0000" in text


async def test_missing_serial_port_is_reported() -> None:
    spec = DeviceSpec("m", "eastron-sdm630", SerialTransport("/dev/does-not-exist"), **FAST)
    (result,) = await probe([spec])
    assert result.error.startswith("cannot open serial port /dev/does-not-exist")
