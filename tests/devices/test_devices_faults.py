"""Faults over real TCP: each ends in the right quality, a log line, and recovery."""

from __future__ import annotations

import logging

import pytest

from devices.api import DeviceSpec, TcpTransport
from devices.meter import MeterPool, Quality
from devices.sim import SimMeter, SimServer

FAST = {"poll_period_s": 0.05, "timeout_s": 0.15, "retries": 1}
# Reconnect quickly in tests; production backs off up to 5 s.
LINK = {"reconnect_min_s": 0.02, "reconnect_max_s": 0.2}


@pytest.fixture(autouse=True)
def _log_level(caplog) -> None:
    caplog.set_level(logging.INFO, logger="devices")


def _pool(readings, *specs: DeviceSpec, **kw) -> MeterPool:
    return MeterPool(list(specs), readings, link_options=LINK, **kw)


def _spec(transport, name: str = "m", profile: str = "eastron-sdm630", **kw) -> DeviceSpec:
    return DeviceSpec(name, profile, transport, **{**FAST, **kw})


async def test_server_down_at_start_then_up(readings, start_pool, caplog, free_port) -> None:
    port = free_port
    server = SimServer([SimMeter("eastron-sdm630")], port=port)
    start_pool(_pool(readings, _spec(TcpTransport("127.0.0.1", port))))
    r = await readings.wait_quality("m", Quality.ERROR)
    assert r.error.startswith(f"connection refused by 127.0.0.1:{port}")
    assert f"device m: error: connection refused by 127.0.0.1:{port}" in caplog.text
    mark = len(readings.items)
    async with server:
        await readings.wait_quality("m", Quality.OK, since=mark)
    assert "device m: ok again after" in caplog.text


async def test_server_killed_mid_run_and_restarted(readings, start_pool, caplog) -> None:
    server = SimServer([SimMeter("eastron-sdm630")])
    await server.start()
    try:
        start_pool(_pool(readings, _spec(server.transport)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        await server.stop()
        r = await readings.wait_quality("m", Quality.ERROR, since=mark)
        assert "connection" in r.error  # lost, or refused on reconnect
        assert "device m: error: connection" in caplog.text
        mark = len(readings.items)
        await server.start()  # same port
        await readings.wait_quality("m", Quality.OK, since=mark)
    finally:
        await server.stop()


async def test_timeout_does_not_slow_other_devices(readings, start_pool, caplog) -> None:
    slow, other = SimMeter("eastron-sdm630"), SimMeter("janitza-umg96rm")
    async with SimServer([slow]) as s1, SimServer([other]) as s2:
        start_pool(
            _pool(
                readings,
                _spec(s1.transport, "slow"),
                _spec(s2.transport, "other", "janitza-umg96rm"),
            )
        )
        await readings.wait_quality("slow", Quality.OK)
        mark = len(readings.items)
        slow.delay_s = 1.0
        r = await readings.wait_quality("slow", Quality.ERROR, since=mark)
        assert "timeout: no response from unit 1" in r.error
        await readings.wait(
            lambda _: len([x for x in readings.of("slow")[-4:] if not x.ok]) == 4, since=mark
        )
        during = readings.items[mark:]
        others = [x for x in during if x.device == "other"]
        assert all(x.ok for x in others)
        span = during[-1].mono - during[0].mono
        # The other device kept its own schedule: about one reading per period.
        assert len(others) >= 0.6 * span / FAST["poll_period_s"]
        assert "device slow: error: timeout" in caplog.text
        mark = len(readings.items)
        slow.delay_s = 0.0
        await readings.wait_quality("slow", Quality.OK, since=mark)


async def test_exception_response(readings, start_pool, caplog) -> None:
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.exception = 0x04
        r = await readings.wait_quality("m", Quality.ERROR, since=mark)
        assert r.error.startswith(
            "Modbus exception 0x04 SERVER DEVICE FAILURE from unit 1 reading 18 input registers"
        )
        assert "0x04 SERVER DEVICE FAILURE" in caplog.text
        mark = len(readings.items)
        meter.exception = None
        await readings.wait_quality("m", Quality.OK, since=mark)


async def test_wrong_unit_id_then_the_device_appears(readings, start_pool) -> None:
    present = SimMeter("eastron-sdm630", unit_id=1)
    server = SimServer([present])
    await server.start()
    try:
        start_pool(_pool(readings, _spec(server.transport, unit_id=9)))
        r = await readings.wait_quality("m", Quality.ERROR)
        assert "0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND from unit 9" in r.error
        assert "wrong unit id" in r.error
        # The installer fixes the meter's address: the gateway now finds unit 9.
        await server.stop()
        server = SimServer([present, SimMeter("eastron-sdm630", unit_id=9)], port=server.port)
        mark = len(readings.items)
        await server.start()
        await readings.wait_quality("m", Quality.OK, since=mark)
    finally:
        await server.stop()


@pytest.mark.parametrize("model", [203, 213])
async def test_sunspec_not_implemented_is_missing_never_zero(
    readings, start_pool, caplog, model: int
) -> None:
    meter = SimMeter(
        "sunspec-meter", sunspec_model=model, values={"frequency": None, "energy_export": None}
    )
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport, profile="sunspec-meter")))
        r = await readings.wait_quality("m", Quality.OK)
        assert r.frequency_hz is None and r.energy_export_kwh is None
        assert r.power_total_kw == pytest.approx(7.5)
        mark = len(readings.items)
        meter.update(power_total=None)
        r = await readings.wait_quality("m", Quality.ERROR, since=mark)
        assert r.power_total_kw is None
        assert r.error.startswith("power_total missing: register")
        assert "'not implemented' value" in r.error
        assert "device m: error: power_total missing" in caplog.text
        mark = len(readings.items)
        meter.update(power_total=3.0)
        r = await readings.wait_quality("m", Quality.OK, since=mark)
        assert r.power_total_kw == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("profile", "quantity", "rated"),
    [
        ("eastron-sdm630", "voltage_l1", None),
        ("carlo-gavazzi-em24", "voltage_l1", None),
        ("carlo-gavazzi-em24", "power_total", 63.0),
    ],
)
async def test_swapped_word_order_is_implausible(
    readings, start_pool, caplog, profile: str, quantity: str, rated: float | None
) -> None:
    meter = SimMeter(profile)
    reg = meter.register(quantity)
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport, profile=profile, rated_current_a=rated)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.set_raw(reg.address, list(reversed(meter.words(quantity))))
        r = await readings.wait_quality("m", Quality.IMPLAUSIBLE, since=mark)
        assert r.error.startswith(quantity)
        assert f"device m: implausible: {quantity}" in caplog.text
        mark = len(readings.items)
        meter.update()
        await readings.wait_quality("m", Quality.OK, since=mark)


async def test_current_above_ten_times_rated_and_counter_backwards(readings, start_pool) -> None:
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport, rated_current_a=16.0)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.update(current_l2=170.0)
        r = await readings.wait_quality("m", Quality.IMPLAUSIBLE, since=mark)
        assert "current_l2 = 170 A outside 0..160" in r.error
        mark = len(readings.items)
        meter.update(current_l2=11.0, energy_import=100.0)  # was 12345.6
        r = await readings.wait_quality("m", Quality.IMPLAUSIBLE, since=mark)
        assert "energy_import went backwards from 12345.6 to 100 kWh" in r.error
        # The jump is flagged once; the new level (a replaced meter) is then accepted.
        r = await readings.wait_quality("m", Quality.OK, since=mark)
        # The simulated meter counts on from 100 kWh at 7.5 kW (a few Wh in a test's time).
        assert r.energy_import_kwh == pytest.approx(100.0, abs=0.01)
        mark = len(readings.items)
        meter.update(energy_import=1e6)
        r = await readings.wait_quality("m", Quality.IMPLAUSIBLE, since=mark)
        assert "energy_import jumped by" in r.error


async def test_nan_is_implausible(readings, start_pool) -> None:
    meter = SimMeter("janitza-umg604")
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport, profile="janitza-umg604")))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.update(frequency=None)  # float32 NaN on a non-SunSpec meter
        r = await readings.wait_quality("m", Quality.IMPLAUSIBLE, since=mark)
        assert "frequency is nan" in r.error


async def test_hung_device_goes_stale(readings, start_pool, caplog) -> None:
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        # A 1 s timeout against a 0.05 s period: a hung poll outlives 3 periods.
        start_pool(_pool(readings, _spec(server.transport, timeout_s=1.0, retries=0)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.delay_s = 3.0
        r = await readings.wait_quality("m", Quality.STALE, since=mark)
        assert r.error.startswith("no poll completed for")
        assert r.power_total_kw is None
        assert "device m: stale: no poll completed" in caplog.text
        mark = len(readings.items)
        meter.delay_s = 0.0
        await readings.wait_quality("m", Quality.OK, since=mark, timeout=5.0)


async def test_garbled_tcp_response(readings, start_pool) -> None:
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport)))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.garble = True
        r = await readings.wait_quality("m", Quality.ERROR, since=mark)
        assert "garbled response" in r.error
        mark = len(readings.items)
        meter.garble = False
        await readings.wait_quality("m", Quality.OK, since=mark)


async def test_bad_scale_factor_is_a_decode_error_with_address(readings, start_pool) -> None:
    meter = SimMeter("sunspec-meter", sunspec_model=203)
    sf = 40070 + 22  # W_SF of model 203 behind model 1
    async with SimServer([meter]) as server:
        start_pool(_pool(readings, _spec(server.transport, profile="sunspec-meter")))
        await readings.wait_quality("m", Quality.OK)
        mark = len(readings.items)
        meter.set_raw(sf, [0x0040])
        r = await readings.wait_quality("m", Quality.ERROR, since=mark)
        assert r.error == (
            f"decode error at register {sf}: scale factor W_SF = 64 is outside -10..10"
        )
        mark = len(readings.items)
        meter.update()
        await readings.wait_quality("m", Quality.OK, since=mark)


@pytest.mark.parametrize(("retries", "quality"), [(1, Quality.OK), (0, Quality.ERROR)])
async def test_a_lost_response_is_retried_within_the_poll(retries: int, quality: Quality) -> None:
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server.transport, retries=retries, poll_period_s=1.0)])
        try:
            assert (await pool.poll_once("m")).ok
            meter.drop_next = 1
            r = await pool.poll_once("m")
        finally:
            await pool.close()
    assert r.quality is quality, r.error
    assert r.poll_s >= FAST["timeout_s"]  # the first attempt waited out its timeout
