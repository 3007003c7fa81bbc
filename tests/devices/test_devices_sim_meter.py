"""The simulated meter behaves like a real one: it counts energy, can freeze, can be noisy."""

from __future__ import annotations

import pytest

from devices.api import DeviceSpec
from devices.meter import MeterPool
from devices.sim import SimMeter, SimServer


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counters_advance_by_power_times_time() -> None:
    clock = Clock()
    m = SimMeter(
        "eastron-sdm630", values={"power_total": 36.0, "energy_import": 500.0}, clock=clock
    )
    clock.now += 100  # 36 kW for 100 s: 1 kWh
    m.update(power_total=-18.0)  # counted at the power in force until now
    assert m.value("energy_import") == pytest.approx(501.0)
    export = m.value("energy_export")
    clock.now += 200  # exporting 18 kW for 200 s: 1 kWh on the export counter
    m.update()
    assert m.value("energy_import") == pytest.approx(501.0)
    assert m.value("energy_export") == pytest.approx(export + 1.0)
    m.update(energy_import=42.0)  # a value given sets the counter
    assert m.value("energy_import") == 42.0


def test_a_stuck_counter_does_not_count() -> None:
    clock = Clock()
    m = SimMeter(
        "eastron-sdm630", values={"power_total": 36.0}, clock=clock, integrate_energy=False
    )
    before = m.value("energy_import")
    clock.now += 3600
    m.update()
    assert m.value("energy_import") == before


def test_frozen_registers_stay_until_thawed() -> None:
    m = SimMeter("eastron-sdm630")
    words = m.words("current_l1")
    m.frozen = True
    m.update(current_l1=50.0)
    assert m.words("current_l1") == words  # a gateway serving its cache
    assert m.value("current_l1") == 50.0  # while the real current moved on
    m.frozen = False
    assert m.words("current_l1") != words


async def test_reads_of_a_noisy_meter_move_in_the_last_digits() -> None:
    meter = SimMeter(
        "eastron-sdm630",
        values={"current_l3": 0.0, "power_l3": 0.0, "power_total": 4.8},
        noise=1e-3,
    )
    async with SimServer([meter]) as server:
        pool = MeterPool([DeviceSpec("m", "eastron-sdm630", server.transport, poll_period_s=1.0)])
        try:
            readings = [await pool.poll_once("m") for _ in range(3)]
        finally:
            await pool.close()
    assert all(r.ok for r in readings), [r.error for r in readings]
    l1 = [r.current_a[0] for r in readings]
    assert len(set(l1)) == 3  # every read differs
    assert all(a == pytest.approx(10.0, rel=1e-3) for a in l1)
    assert {r.current_a[2] for r in readings} == {0.0}  # no current stays exactly no current
    assert {r.frequency_hz for r in readings} == {50.0}  # only V, I and P are noisy
