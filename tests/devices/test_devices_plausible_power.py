"""Active power beyond the phases' V·I is implausible: pure checks and a real pymodbus server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devices.api import DeviceSpec
from devices.meter import MeterPool, Quality, Reading, check_plausible
from devices.sim import SimMeter, SimServer

VOLTS = (230.0, 230.0, 230.0)


def _reading(
    power_kw: float,
    amps: tuple[float | None, float | None, float | None] = (100.0, 100.0, 100.0),
    volts: tuple[float | None, float | None, float | None] | None = VOLTS,
) -> Reading:
    return Reading(
        device="m",
        ts=datetime.now(UTC),
        mono=0.0,
        quality=Quality.OK,
        voltage_v=volts,
        current_a=amps,
        power_total_kw=power_kw,
    )


def test_power_within_apparent_power_is_plausible() -> None:
    # 3 × 230 V × 100 A = 69 kVA; 1.1 × 69 + 0.5 = 76.4 kW is the bound.
    assert check_plausible(_reading(69.0), None, None) == []
    assert check_plausible(_reading(76.3), None, None) == []
    assert check_plausible(_reading(-76.3), None, None) == []  # exporting: the magnitude


@pytest.mark.parametrize("power_kw", [76.5, -76.5, 220.0])
def test_power_beyond_apparent_power_is_implausible(power_kw: float) -> None:
    # Judged on two polls in a row: one alone may be a torn read during a ramp.
    assert check_plausible(_reading(power_kw), None, None) == []
    assert check_plausible(_reading(power_kw), _reading(69.0), None) == []
    problems = check_plausible(_reading(power_kw), _reading(power_kw), None)
    assert len(problems) == 1
    assert "exceeds the apparent power Σ V·I = 69 kVA (bound 76.4 kW)" in problems[0]


def test_idle_meter_has_the_absolute_margin() -> None:
    # No current at all and a few hundred watts of offset: noise, not a contradiction.
    assert check_plausible(_reading(0.4, amps=(0.0, 0.0, 0.0)), None, None) == []
    idle_offset = _reading(0.6, amps=(0.0, 0.0, 0.0))
    assert check_plausible(idle_offset, idle_offset, None) != []


def test_not_judged_without_every_phase() -> None:
    assert check_plausible(_reading(500.0, amps=(100.0, None, 100.0)), None, None) == []
    assert check_plausible(_reading(500.0, volts=None), None, None) == []
    # A meter in 3-wire (delta) mode reports no L-N voltages: nothing to multiply.
    assert check_plausible(_reading(50.0, volts=(0.0, 0.0, 0.0)), None, None) == []


async def test_server_serving_more_power_than_v_times_i_is_implausible() -> None:
    meter = SimMeter("eastron-sdm630")  # 230/231/229 V, 10/11/12 A: 7.6 kVA, 7.5 kW
    async with SimServer([meter]) as server:
        spec = DeviceSpec("m", "eastron-sdm630", server.transport, poll_period_s=0.2)
        pool = MeterPool([spec])
        try:
            assert (await pool.poll_once("m")).ok
            # A gateway mixing two meters' registers, or currents read from the wrong CTs.
            meter.update(power_total=40.0)
            assert (await pool.poll_once("m")).ok  # one poll alone: maybe a torn read
            r = await pool.poll_once("m")
            assert r.quality is Quality.IMPLAUSIBLE
            assert r.error.startswith("power_total = 40 kW exceeds the apparent power")
            meter.update(current_l1=60.0, current_l2=60.0, current_l3=60.0)  # 41.4 kVA
            assert (await pool.poll_once("m")).ok
        finally:
            await pool.close()
