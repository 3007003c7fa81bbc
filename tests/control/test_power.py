"""kW rows with the measured active power: the larger of the two non-EV estimates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sitectl.config import GRID
from sitectl.control.meters import MeterSupervisor
from sitectl.control.power import EV_POWER_FACTOR, MeasuredPower, reading_power_kw
from sitectl.state import SiteState
from tests.control.test_snapshot import MONO, build, config, plug

VOLTS = (230.0, 230.0, 230.0)


def metered(currents, power_kw=None, phases_kw=None) -> MeterSupervisor:
    meters = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    meters.watch(GRID)
    reading = SimpleNamespace(
        ok=True,
        current_a=currents,
        voltage_v=VOLTS,
        power_total_kw=power_kw,
        power_kw=phases_kw,
        error=None,
    )
    meters.reading(GRID, reading, 0.0)
    return meters


def test_a_reading_gives_its_total_or_the_sum_of_its_phases() -> None:
    assert reading_power_kw(SimpleNamespace(power_total_kw=12.5, power_kw=None)) == 12.5
    assert reading_power_kw(SimpleNamespace(power_total_kw=None, power_kw=(1.0, 2.0, 3.0))) == 6.0
    assert reading_power_kw(SimpleNamespace(power_total_kw=None, power_kw=(1.0, None, 3.0))) is None
    assert reading_power_kw(SimpleNamespace(current_a=(1.0, 1.0, 1.0))) is None


def test_measured_power_above_the_current_estimate_lowers_the_kw_limit() -> None:
    # The chargers' current transformers read 10 % high: 32 A reported, 29 A drawn. The meter
    # sees 40 A per phase at PF 1 (27.6 kW): the building is really 11 A, but meter minus
    # reported EV current says 8 A. The meter's active power tells the truth.
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", (16.0, 16.0, 16.0))
    plug(state, "B", (16.0, 16.0, 16.0))
    built = build(cfg, state, metered((40.0, 40.0, 40.0), power_kw=27.6))
    assert built.non_ev[GRID] == (8.0, 8.0, 8.0)  # the current rows: unchanged
    by_current = 230.0 * 24.0 / 1000  # U · Σ I of the non-EV currents, kW
    by_power = 27.6 - EV_POWER_FACTOR * 230.0 * 96.0 / 1000
    assert by_power > by_current
    assert built.kw_cuts[GRID] == pytest.approx(by_power - by_current)
    grid = next(n for n in built.problem.nodes if n.id == GRID)
    assert grid.limit_kw == pytest.approx(500 - (by_power - by_current))


def test_a_building_at_a_low_power_factor_keeps_the_current_estimate() -> None:
    # Building 12.5 A at PF 0.6 beside 32 A of EV at PF 1: |32 + 7.5 - 10j| = 40.75 A and
    # 9.085 kW per phase. U · Σ I of the non-EV current (8.75 A) is the larger estimate (the
    # breaker's view), so the kW limit stays as configured.
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", (16.0, 16.0, 16.0))
    plug(state, "B", (16.0, 16.0, 16.0))
    built = build(cfg, state, metered((40.75, 40.75, 40.75), phases_kw=(9.085, 9.085, 9.085)))
    assert built.kw_cuts == {}
    grid = next(n for n in built.problem.nodes if n.id == GRID)
    assert grid.limit_kw == 500


def test_without_power_nothing_changes() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A", (16.0, 16.0, 16.0))
    built = build(cfg, state, metered((40.0, 40.0, 40.0)))
    assert built.kw_cuts == {}


def test_cuts_add_up_the_tree_and_peaks_are_held() -> None:
    cfg = config(
        circuits=[
            {"id": "feeder", "limit_a": 120, "limit_kw": 60, "meter": "grid-meter"},
            {"id": "sub", "parent": "feeder", "limit_a": 60},
        ]
    )
    power = MeasuredPower(cfg, hold_s=10.0)
    # No EV: the measured non-EV power is the meter's.
    non_ev = power.non_ev_kw({"feeder": 9.0}, {}, 230.0, MONO)
    placed = {GRID: (0.0, 0.0, 0.0), "feeder": (5.0, 5.0, 5.0), "sub": (3.0, 3.0, 3.0)}
    cuts = power.kw_cuts(placed, non_ev, 230.0)
    # The feeder's subtree carries 24 A of non-EV current, 5.52 kW: 3.48 kW short. The grid's
    # row contains the feeder's loads, so it is short by as much.
    assert cuts == {"feeder": pytest.approx(9.0 - 5.52), GRID: pytest.approx(9.0 - 5.52)}
    # The power falls: the peak is held for the hold time, then the lower value counts.
    assert power.non_ev_kw({"feeder": 6.0}, {}, 230.0, MONO + 5)["feeder"] == 9.0
    assert power.non_ev_kw({"feeder": 6.0}, {}, 230.0, MONO + 11)["feeder"] == 6.0
