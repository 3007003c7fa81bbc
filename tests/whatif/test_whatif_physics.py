"""Simulated vehicles: DC taper, AC phases, the 6 A rule, ramps integrated exactly, full stops."""

from __future__ import annotations

import pytest

from sitectl.whatif.physics import (
    AC_START_S,
    AC_UP_A_PER_S,
    DC_START_S,
    Charge,
    ChargePoint,
    SimVehicle,
)

AC3 = ChargePoint(dc=False, phases=3, max_a=32, max_kw=None, efficiency=1.0, voltage_v=230)
AC1 = ChargePoint(dc=False, phases=1, max_a=32, max_kw=None, efficiency=1.0, voltage_v=230)
DC = ChargePoint(dc=True, phases=3, max_a=240, max_kw=150, efficiency=0.94, voltage_v=230)


def settle(charge: Charge, limit: float | None, seconds: float = 120) -> None:
    """Past its start delay and ramp."""
    charge.step(seconds, limit)


def test_dc_takes_its_peak_below_80_percent_and_tapers_above() -> None:
    vehicle = SimVehicle(battery_kwh=400, soc=50, max_kw=200)
    assert vehicle.dc_accept_kw(150) == 150  # the charger's limit is lower than the battery's
    vehicle.soc = 79.9
    assert vehicle.dc_accept_kw(250) == 200
    vehicle.soc = 90
    assert vehicle.dc_accept_kw(250) == pytest.approx(200 * 0.55)
    vehicle.soc = 100
    assert vehicle.dc_accept_kw(250) == 0.0


def test_a_single_phase_vehicle_draws_one_phase_and_pauses_below_6_a() -> None:
    on_three = Charge(SimVehicle(60, 20, phases=1, max_a=16), AC3)
    assert on_three.phases == 1
    assert on_three.target(32) == 16
    assert on_three.target(5.9) == 0.0  # IEC 61851-1: no current below 6 A
    assert Charge(SimVehicle(60, 20, phases=3), AC1).phases == 1  # a single-phase charger


def test_a_step_integrates_the_start_delay_and_ramp_exactly() -> None:
    charge = Charge(SimVehicle(75, 20, phases=3, max_a=32), AC3)
    mean = charge.step(30, 32)
    ramp_s = 32 / AC_UP_A_PER_S
    area = 32 / 2 * ramp_s + 32 * (30 - AC_START_S - ramp_s)  # A·s
    assert mean == pytest.approx(area / 30)
    assert charge.energy_kwh == pytest.approx(area * 3 * 230 / 3.6e6)
    assert charge.level == 32


def test_dc_energy_is_the_output_and_its_input_current_is_more_by_the_efficiency() -> None:
    charge = Charge(SimVehicle(400, 30), DC)
    settle(charge, 100.0, DC_START_S + 30)
    before = charge.energy_kwh
    mean = charge.step(60, 100.0)
    assert charge.energy_kwh - before == pytest.approx(100 * 60 / 3600)
    assert mean == pytest.approx(100_000 / (0.94 * 3 * 230))


def test_soc_follows_the_energy_and_a_full_battery_stops_within_the_step() -> None:
    vehicle = SimVehicle(battery_kwh=10, soc=98, phases=3, max_a=32)
    charge = Charge(vehicle, AC3)
    charge.step(3600, 32)
    assert vehicle.soc == pytest.approx(100)
    assert charge.energy_kwh == pytest.approx(0.2)  # the 2 % left, no more
    assert charge.level == 0.0


def test_a_lower_limit_is_followed_within_seconds() -> None:
    charge = Charge(SimVehicle(75, 20), AC3)
    settle(charge, 32)
    charge.step(30, 10)
    assert charge.level == 10
