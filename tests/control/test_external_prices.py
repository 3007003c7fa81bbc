"""External prices (OpenADR PRICE events, issue #20.2) replace the configured tariff they cover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sitectl.config import Config
from sitectl.control.horizon import Horizon
from sitectl.prices import PriceBoard, PriceWindow

# Today 20:00 UTC (injected; never a literal date): 8 steps of 15 min run to 22:00.
NOW = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)


def config(**extra) -> Config:
    data = {
        "site": {"id": "s", "limit_kw": 500, "phase_limit_a": 200, "timezone": "UTC"},
        "control": {"step_s": 900, "horizon_steps": 8},
    }
    data.update(extra)
    return Config.model_validate(data)


def window(start_min: int, end_min: int | None, price: float) -> PriceWindow:
    end = None if end_min is None else NOW + timedelta(minutes=end_min)
    return PriceWindow(NOW + timedelta(minutes=start_min), end, price, "openadr:p")


TOU = {"periods": [{"start": "00:00", "eur_per_kwh": 0.1}, {"start": "21:00", "eur_per_kwh": 0.3}]}


def test_without_external_prices_the_configured_tariff_is_unchanged() -> None:
    horizon = Horizon(config(tariff=TOU))
    assert horizon.tariff(NOW).price_per_kwh == (0.1,) * 4 + (0.3,) * 4
    assert Horizon(config()).tariff(NOW).price_per_kwh == ()


def test_external_windows_replace_the_steps_they_cover_and_only_those() -> None:
    horizon = Horizon(config(tariff=TOU))
    # 20:30-21:30 at 0.05: steps 2..5; a half-covered step would be the mean of its slices.
    prices = horizon.tariff(NOW, [window(30, 90, 0.05)]).price_per_kwh
    assert prices == (0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.3, 0.3)
    # A negative market price is a price; an ended window counts for nothing.
    prices = horizon.tariff(NOW, [window(-60, 0, 9.0), window(0, 15, -0.02)]).price_per_kwh
    assert prices[0] == -0.02 and prices[1:] == (0.1,) * 3 + (0.3,) * 4


def test_without_a_configured_tariff_uncovered_steps_take_the_mean_not_free_energy() -> None:
    horizon = Horizon(config())
    prices = horizon.tariff(NOW, [window(0, 30, 0.4), window(30, 60, 0.2)]).price_per_kwh
    assert prices == pytest.approx((0.4, 0.4, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3))
    # A window past the horizon changes nothing.
    assert horizon.tariff(NOW, [window(600, None, 0.4)]).price_per_kwh == ()


def test_far_steps_take_the_time_weighted_mean_of_their_slices() -> None:
    cfg = config(control={"step_s": 900, "near_horizon_s": 1800, "far_step_s": 3600})
    horizon = Horizon(cfg)
    assert tuple(horizon.durations_s[:3]) == (900, 900, 3600)
    # 0.2 from 20:30 to 20:45 and 0.6 after: the first hour-long step is (0.2 + 3 * 0.6) / 4.
    prices = horizon.tariff(NOW, [window(0, 45, 0.2), window(45, None, 0.6)]).price_per_kwh
    assert prices[:3] == pytest.approx((0.2, 0.2, 0.5))


def test_the_board_replaces_a_source_whole_and_refuses_foreign_windows() -> None:
    board = PriceBoard()
    board.publish("openadr:p", [window(0, 30, 0.4)])
    board.publish("openadr:q", [PriceWindow(NOW, None, 0.1, "openadr:q")])
    assert [w.source for w in board.windows(NOW, NOW + timedelta(hours=1))] == [
        "openadr:p",
        "openadr:q",
    ]
    board.publish("openadr:p", [])
    assert [w.source for w in board.windows(NOW, NOW + timedelta(hours=1))] == ["openadr:q"]
    with pytest.raises(ValueError, match="published as"):
        board.publish("openadr:p", [PriceWindow(NOW, None, 0.1, "openadr:q")])
    with pytest.raises(ValueError, match="finite"):
        PriceWindow(NOW, None, float("nan"), "x")


def test_the_problem_builder_takes_the_prices_from_the_state() -> None:
    from sitectl.control.snapshot import ProblemBuilder
    from sitectl.state import SiteState

    cfg = config(tariff=TOU)
    state = SiteState(cfg)
    state.prices.publish("openadr:p", [window(0, 30, 0.02)])
    built = ProblemBuilder(cfg).build(state, _meters(), {}, NOW, 0.0)
    assert built.problem.tariff.price_per_kwh[:3] == (0.02, 0.02, 0.1)


def _meters():
    from sitectl.control.meters import MeterSupervisor

    return MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
