"""What a connector draws, from each way chargers report it: the bounds are on the safe side."""

from __future__ import annotations

import pytest

from sitectl.control.draw import LOW_SAMPLES_TO_DROP, connector_draw, phases_in_use
from sitectl.state import ConnectorState

NOW = 1000.0


def draw(connector: ConnectorState, *, phases: int = 3, dc: bool = False, age_s: float = 30):
    return connector_draw(
        connector,
        charger_phases=phases,
        dc=dc,
        efficiency=0.9,
        now_mono=NOW,
        max_age_s=age_s,
        nominal_voltage_v=230.0,
        max_current_a=200.0,
    )


def with_current(amps, stamp=NOW - 1) -> ConnectorState:
    connector = ConnectorState(1)
    connector.current_a = amps
    connector.current_mono = stamp
    return connector


def test_a_phase_not_reported_is_in_use_at_the_highest_reported_current() -> None:
    # A charger that reports only L1 (common on 1.6 firmware) for a three-phase vehicle.
    found = draw(with_current((16.0, None, None)))
    assert found.source == "current"
    assert found.lo == (16.0, 0.0, 0.0)  # subtracted from the meter: only what is known
    assert found.hi == (16.0, 16.0, 16.0)  # budgeted: it may draw as much on L2 and L3
    assert found.est == (16.0, 16.0, 16.0)


def test_a_phase_is_dropped_only_after_several_low_samples() -> None:
    connector = with_current((16.0, 0.0, 0.0))
    assert phases_in_use(connector, 3) == (0, 1, 2)
    connector.phase_low_samples = [0, LOW_SAMPLES_TO_DROP, LOW_SAMPLES_TO_DROP]
    assert phases_in_use(connector, 3) == (0,)
    assert phases_in_use(connector, 1) == (0,)
    connector.phase_low_samples = [LOW_SAMPLES_TO_DROP] * 3
    assert phases_in_use(connector, 3) == (0,)  # all low: nothing drawn, L1 restarts it


def test_stale_or_future_samples_are_not_fresh() -> None:
    assert draw(with_current((10.0, 10.0, 10.0), stamp=NOW - 31)) is None
    assert draw(with_current((10.0, 10.0, 10.0), stamp=NOW + 5)) is None  # stamped ahead
    assert draw(ConnectorState(1)) is None


def test_a_phaseless_current_is_every_phase_for_the_budget_and_one_for_the_meter() -> None:
    connector = ConnectorState(1)
    connector.current_phaseless_a = 20.0
    connector.current_mono = NOW
    found = draw(connector)
    assert found.source == "current_phaseless"
    assert found.lo == (20.0, 0.0, 0.0)
    assert found.hi == (20.0, 20.0, 20.0)


def test_power_only_ac_covers_one_two_and_three_phase_vehicles() -> None:
    connector = ConnectorState(1)
    connector.power_kw = 6.9  # 30 A on one phase, or 10 A on each of three
    connector.power_mono = NOW
    found = draw(connector)
    assert found.source == "power"
    assert found.lo == pytest.approx((10.0, 0.0, 0.0))  # the least it can be on any phase
    assert found.hi == pytest.approx((30.0, 15.0, 10.0))  # the most per phase over the cases
    # A lower measured voltage means more current for the same power: the budget grows.
    connector.voltage_v = 220.0
    assert draw(connector).hi[0] == pytest.approx(6900 / 220)
    assert draw(connector).lo[0] == pytest.approx(10.0)  # the nominal is the higher voltage


def test_power_only_dc_is_balanced_three_phase_input_grown_by_the_efficiency() -> None:
    connector = ConnectorState(1)
    connector.power_kw = 62.1  # output: 90 A of input per phase at 230 V and η = 1
    connector.power_mono = NOW
    found = draw(connector, dc=True)
    assert found.hi == pytest.approx((100.0,) * 3)  # input = output / 0.9
    assert found.lo == pytest.approx((90.0,) * 3)  # never more than the output alone needs


def test_current_wins_over_power_and_single_phase_chargers_carry_all_on_l1() -> None:
    connector = with_current((12.0, None, None))
    connector.power_kw = 50.0
    connector.power_mono = NOW
    found = draw(connector, phases=1)
    assert found.source == "current"
    assert found.hi == (12.0, 0.0, 0.0) and found.lo == (12.0, 0.0, 0.0)


def test_a_power_estimate_never_exceeds_the_chargers_maximum() -> None:
    connector = ConnectorState(1)
    connector.power_kw = 500.0
    connector.power_mono = NOW
    assert max(draw(connector).hi) == 200.0
