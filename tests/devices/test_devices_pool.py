"""MeterPool over real TCP: shared connections, schedules, capabilities, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from devices import api
from devices.api import DeviceSpec, Sign
from devices.meter import MeterPool, Quality
from devices.sim import SimMeter, SimServer
from tests.helpers import loop_turn

FAST = {"poll_period_s": 0.05, "timeout_s": 0.2}


async def test_devices_behind_one_gateway_share_one_connection(readings, start_pool, until) -> None:
    a, b = SimMeter("eastron-sdm630", unit_id=1), SimMeter("janitza-umg96rm", unit_id=2)
    async with SimServer([a, b]) as server:
        specs = [
            DeviceSpec("a", "eastron-sdm630", server.transport, unit_id=1, **FAST),
            DeviceSpec("b", "janitza-umg96rm", server.transport, unit_id=2, **FAST),
        ]
        pool = MeterPool(specs, readings)
        assert len(pool.links) == 1
        task = start_pool(pool)
        await readings.wait_quality("a", Quality.OK)
        await readings.wait_quality("b", Quality.OK)
        await until(lambda: len(readings.of("a")) >= 5 and len(readings.of("b")) >= 5)
        assert server.connections == 1
        assert pool.latest("a").device == "a"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelling closes the client: the server sees the connection go.
        await until(lambda: server.connections == 0)


async def test_values_change_at_run_time(readings, start_pool) -> None:
    meter = SimMeter("carlo-gavazzi-em24", unit_id=1)
    async with SimServer([meter]) as server:
        pool = MeterPool(
            [DeviceSpec("grid", "carlo-gavazzi-em24", server.transport, **FAST)], readings
        )
        start_pool(pool)
        await readings.wait_quality("grid", Quality.OK)
        # 123.4 kW needs about 180 A a phase at 230 V (more power than V·I is implausible).
        meter.update(power_total=123.4, current_l1=180.0, current_l2=180.0, current_l3=180.0)
        r = await readings.wait(lambda r: r.power_total_kw == pytest.approx(123.4))
        assert r.quality is Quality.OK
        assert r.ts.tzinfo is not None


async def test_capabilities_follow_the_profile(readings, start_pool) -> None:
    power_only = {
        "registers": [{"quantity": "power_total", "address": 0, "decode": "f32", "unit": "kW"}]
    }
    meter = SimMeter("eastron-sdm630")
    async with SimServer([meter]) as server:
        specs = [DeviceSpec("full", "eastron-sdm630", server.transport, **FAST)]
        pool = MeterPool(specs, readings)
        full = pool.meter("full")
        assert full.power_kw() is None  # nothing read yet: no number, not 0
        start_pool(pool)
        await readings.wait_quality("full", Quality.OK)
        for cap in (
            api.Meter,
            api.MeterEnergy,
            api.PhaseCurrents,
            api.PhaseVoltages,
            api.PhasePowers,
            api.Frequency,
        ):
            assert isinstance(full, cap), cap
        assert not isinstance(full, api.Temperature)
        assert full.power_kw() == pytest.approx(7.5, rel=1e-5)
        assert full.currents_a() == pytest.approx((10.0, 11.0, 12.0))
    pool2 = MeterPool([DeviceSpec("p", "generic", server.transport, inline_registers=power_only)])
    view = pool2.meter("p")
    assert isinstance(view, api.Meter)
    assert not isinstance(view, api.PhaseCurrents)


async def test_sign_override_and_export_positive_profile() -> None:
    profile = {
        "sign": "export_positive",
        "registers": [{"quantity": "power_total", "address": 0, "decode": "f32", "unit": "kW"}],
    }
    from devices.profile import parse_profile

    meter = SimMeter(parse_profile(profile, "inverted"), values={"power_total": 12.0})
    assert meter.words("power_total") == [0xC140, 0x0000]  # the device says -12 kW
    async with SimServer([meter]) as server:
        specs = [
            DeviceSpec("as-profile", "generic", server.transport, inline_registers=profile),
            DeviceSpec(
                "overridden",
                "generic",
                server.transport,
                inline_registers=profile,
                sign=Sign.IMPORT_POSITIVE,
            ),
        ]
        pool = MeterPool(specs)
        try:
            assert (await pool.poll_once("as-profile")).power_total_kw == pytest.approx(12.0)
            assert (await pool.poll_once("overridden")).power_total_kw == pytest.approx(-12.0)
        finally:
            await pool.close()


def test_bad_configuration_is_rejected_early() -> None:
    from devices.api import SerialTransport, TcpTransport

    t = TcpTransport("127.0.0.1", 1)
    with pytest.raises(ValueError, match="duplicate device names: x"):
        MeterPool([DeviceSpec("x", "eastron-sdm630", t), DeviceSpec("x", "eastron-sdm630", t)])
    with pytest.raises(ValueError, match="shared with different settings"):
        MeterPool(
            [
                DeviceSpec("a", "eastron-sdm630", SerialTransport("/dev/ttyX", 9600)),
                DeviceSpec("b", "eastron-sdm630", SerialTransport("/dev/ttyX", 19200)),
            ]
        )


async def test_a_failing_callback_does_not_stop_polling(start_pool, until, caplog) -> None:
    seen = []

    def callback(reading) -> None:
        seen.append(reading)
        raise RuntimeError("consumer bug")

    async with SimServer([SimMeter("eastron-sdm630")]) as server:
        pool = MeterPool([DeviceSpec("m", "eastron-sdm630", server.transport, **FAST)], callback)
        start_pool(pool)
        await until(lambda: len(seen) >= 3)
    assert "on_reading callback failed for m" in caplog.text


async def test_transformer_temperature_from_an_inline_map(readings, start_pool) -> None:
    # A transformer monitor mapped in the site YAML: oil temperature, INT16 in 0.1 °C.
    registers = [
        {
            "quantity": "temperature",
            "address": 4,
            "table": "input",
            "decode": "i16",
            "scale": 0.1,
            "unit": "°C",
            "name": "oil temperature",
        }
    ]
    profile = {"kind": "sensor", "registers": registers}
    from devices.profile import parse_profile

    meter = SimMeter(parse_profile(profile, "trafo"), values={"temperature": 61.5})
    assert meter.words("temperature") == [615]
    async with SimServer([meter]) as server:
        pool = MeterPool(
            [DeviceSpec("trafo", "generic", server.transport, inline_registers=profile, **FAST)],
            readings,
        )
        start_pool(pool)
        r = await readings.wait_quality("trafo", Quality.OK)
        assert r.temperature_c == pytest.approx(61.5)
        assert r.power_total_kw is None and r.voltage_v is None
        assert isinstance(pool.meter("trafo"), api.Temperature)
        assert not isinstance(pool.meter("trafo"), api.Meter)
        meter.update(temperature=400.0)  # beyond any transformer: a broken sensor
        r = await readings.wait_quality("trafo", Quality.IMPLAUSIBLE)
        assert "temperature = 400" in r.error


async def test_cancel_always_stops_a_busy_pool(readings, caplog) -> None:
    # Python 3.11's asyncio.wait_for (inside pymodbus) drops a cancellation that coincides with
    # a response arriving (bpo-42130); the pool must stop anyway. Cancel many times into heavy
    # traffic, each time after a different number of event-loop turns.
    caplog.set_level(logging.CRITICAL, logger="pymodbus")  # its log calls shift the timing
    meters = [SimMeter("eastron-sdm630", unit_id=u) for u in range(1, 11)]
    rng = random.Random(1)
    async with SimServer(meters) as server:
        specs = [
            DeviceSpec(
                f"d{u}",
                "eastron-sdm630",
                server.transport,
                unit_id=u,
                poll_period_s=0.002,
                timeout_s=0.2,
            )
            for u in range(1, 11)
        ]
        for attempt in range(30):
            mark = len(readings.items)
            task = asyncio.create_task(MeterPool(specs, readings).run())
            await readings.wait(lambda _, m=mark: len(readings.items) >= m + 5, since=mark)
            for _ in range(rng.randrange(50)):
                await loop_turn()  # a random point in the traffic
            task.cancel()
            # asyncio.wait does not cancel on timeout, so a pool that ignores its cancellation
            # fails here instead of hanging the test.
            done, _ = await asyncio.wait([task], timeout=3.0)
            assert done, f"pool still running 3 s after cancel (attempt {attempt})"
            assert task.cancelled()
