"""Every profile against a real pymodbus TCP server holding vendor-encoded values.

Golden words are worked out by hand from the vendor conventions (IEEE-754, word order, divisors,
1-based numbering), independently of the encoder; each case checks both that the simulator
encodes the value as those words and that sitectl decodes those words to the value.
"""

from __future__ import annotations

import pytest

from devices.api import DeviceSpec
from devices.meter import MeterPool, Quality, Reading
from devices.profile import GENERIC, available_profiles, load_profile
from devices.registers import Quantity
from devices.sim import SimMeter, SimServer

SHIPPED = [p for p in available_profiles() if p != GENERIC]

# profile -> [(quantity, 0-based protocol address, words, value in normalised units)]
GOLDEN: dict[str, list[tuple[str, int, list[int], float]]] = {
    "eastron-sdm630": [
        ("voltage_l1", 0x0000, [0x4366, 0x0000], 230.0),  # 230.0 f32
        ("power_total", 0x0034, [0x449A, 0x5000], 1.2345),  # 1234.5 W
        ("energy_import", 0x0048, [0x42C8, 0x8000], 100.25),  # 100.25 kWh
    ],
    "carlo-gavazzi-em24": [
        ("voltage_l1", 0x00, [0x08FC, 0x0000], 230.0),  # 2300 /10, LSW first
        ("power_total", 0x28, [0xE240, 0x0001], 12.3456),  # 123456 /10 W
        ("frequency", 0x37, [0x01F4], 50.0),  # 500 /10
    ],
    "schneider-pm5xxx-iem3xxx": [
        ("voltage_l1", 3027, [0x4366, 0x0000], 230.0),  # manual register 3028
        ("power_total", 3059, [0x40F0, 0x0000], 7.5),  # 7.5 kW, register 3060
        ("energy_import", 3203, [0, 0, 0x075B, 0xCD15], 123456.789),  # 123456789 Wh, 3204
    ],
    "siemens-pac2200-3200": [
        ("voltage_l1", 1, [0x4366, 0x0000], 230.0),
        ("power_total", 65, [0xC59C, 0x4000], -5.0),  # -5000 W: exporting
        ("energy_import", 801, [0x412E, 0x8480, 0, 0], 1000.0),  # 1e6 Wh float64
    ],
    "janitza-umg604": [
        ("power_total", 1369, [0x450F, 0xC000], 2.3),  # 2300 W
        ("frequency", 1439, [0x4248, 0x0000], 50.0),
    ],
    "janitza-umg96rm": [
        ("voltage_l1", 19000, [0x4366, 0x0000], 230.0),
        ("power_total", 19026, [0x450F, 0xC000], 2.3),
    ],
}

EXPECTED = {
    "voltage_v": (230.0, 231.0, 229.0),
    "current_a": (10.0, 11.0, 12.0),
    "power_kw": (2.3, 2.5, 2.7),
    "power_total_kw": 7.5,
    "energy_import_kwh": 12345.6,
    "energy_export_kwh": 78.9,
    "frequency_hz": 50.0,
}


def _spec(server: SimServer, profile: str, unit: int = 1) -> DeviceSpec:
    return DeviceSpec(
        profile, profile, server.transport, unit_id=unit, poll_period_s=0.2, timeout_s=0.3
    )


def _assert_expected(reading: Reading) -> None:
    assert reading.quality is Quality.OK, reading.error
    for name, want in EXPECTED.items():
        got = getattr(reading, name)
        assert got == pytest.approx(want, rel=1e-5), name
    assert reading.raw  # the words read are kept for diagnosis


@pytest.mark.parametrize("profile", SHIPPED)
async def test_profile_reads_every_quantity(profile: str) -> None:
    meter = SimMeter(profile, unit_id=7)
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server, profile, unit=7)])
        try:
            _assert_expected(await pool.poll_once(profile))
            meter.update(power_total=-42.0, power_l1=-14.0, power_l2=-14.0, power_l3=-14.0)
            reading = await pool.poll_once(profile)
            assert reading.power_total_kw == pytest.approx(-42.0, rel=1e-5)
        finally:
            await pool.close()


@pytest.mark.parametrize("profile", sorted(GOLDEN))
async def test_golden_words(profile: str) -> None:
    meter = SimMeter(profile)
    cases = GOLDEN[profile]
    for quantity, address, words, value in cases:
        reg = meter.register(quantity)
        assert reg.address == address, quantity
        meter.update({quantity: value})
        assert meter.words(quantity) == words, quantity
    meter.update()  # back to the defaults, then serve the hand-written words
    for _, address, words, _ in cases:
        meter.set_raw(address, words)
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server, profile)])
        try:
            reading = await pool.poll_once(profile)
        finally:
            await pool.close()
    attr = {
        "voltage_l1": ("voltage_v", 0),
        "power_total": ("power_total_kw", None),
        "energy_import": ("energy_import_kwh", None),
        "frequency": ("frequency_hz", None),
    }
    for quantity, _, _, value in cases:
        name, index = attr[quantity]
        got = getattr(reading, name)
        got = got[index] if index is not None else got
        assert got == pytest.approx(value, rel=1e-6), quantity


@pytest.mark.parametrize(("model", "base"), [(203, 40000), (201, 50000), (213, 0), (211, 40000)])
async def test_sunspec_discovery_at_each_base_and_model(model: int, base: int) -> None:
    meter = SimMeter("sunspec-meter", sunspec_model=model, sunspec_base=base)
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server, "sunspec-meter")])
        try:
            reading = await pool.poll_once("sunspec-meter")
        finally:
            await pool.close()
    _assert_expected(reading)


async def test_sunspec_int_model_golden_words() -> None:
    # Model 203 after model 1 at 40000: ID at 40070, W at offset 18 = 40088, W_SF at 40092.
    meter = SimMeter("sunspec-meter", sunspec_model=203)
    assert meter.register(Quantity.POWER_TOTAL).address == 40088
    meter.set_raw(40088, [3000])  # W = 3000 × 10^1
    meter.set_raw(40092, [0x0001])  # W_SF = 1
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server, "sunspec-meter")])
        try:
            reading = await pool.poll_once("sunspec-meter")
        finally:
            await pool.close()
    assert reading.power_total_kw == pytest.approx(30.0)


def test_profiles_are_cached() -> None:
    assert load_profile("eastron-sdm630") is load_profile("eastron-sdm630")
