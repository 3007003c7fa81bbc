"""Limit windows onto the planning grid (sitectl.control.windows) and through the real builder
and LP: a window announced for later shapes the plan now; bad windows are refused or skipped."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from optimizer import binding as b
from optimizer.lp import solve
from optimizer.problem import NodeCap
from optimizer.verify import verify
from sitectl.config import Config
from sitectl.control.explain import explain
from sitectl.control.meters import MeterSupervisor
from sitectl.control.snapshot import ChargerMemory, ProblemBuilder
from sitectl.control.windows import horizon_caps, step0_limits
from sitectl.limits import GridLimit, LimitOverride
from sitectl.state import SessionState, SiteState

#: A fixed origin (never compared with the real clock), at a full hour.
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
ENDS = [900.0 * (k + 1) for k in range(8)]  # eight 15-minute steps
RATINGS = {"grid": (200.0, 200.0, 200.0), "feeder": (100.0, 100.0, 100.0)}


def window(start_min: float, end_min: float | None, **kw) -> GridLimit:
    kw.setdefault("node", "grid")
    kw.setdefault("source", "openadr:p1")
    if "limit_a" not in kw and "limit_kw" not in kw:
        kw["limit_a"] = (50.0, 50.0, 50.0)
    end = None if end_min is None else NOW + timedelta(minutes=end_min)
    return GridLimit(start=NOW + timedelta(minutes=start_min), end=end, **kw)


def steps(limit: GridLimit, cuts=None) -> tuple[int, int] | None:
    caps, behind = horizon_caps([limit], NOW, ENDS, RATINGS, cuts or {})
    assert len(caps) == len(behind)
    return (caps[0].first_step, caps[0].end_step) if caps else None


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (-30, 10, (0, 1)),  # in force now, ends inside step 0
        (20, 40, (1, 3)),  # starts inside step 1, ends inside step 2: both capped in full
        (15, 45, (1, 3)),  # on the step boundaries exactly
        (14, 45, (0, 3)),  # a minute before the boundary: step 0 too
        (45, None, (3, 8)),  # open-ended: to the end of the horizon
        (110, 500, (7, 8)),  # past the end of the horizon
        (120, 180, None),  # starts after the horizon
        (-60, 0, None),  # ended now
    ],
)
def test_a_window_caps_every_step_it_overlaps(start, end, expected) -> None:
    assert steps(window(start, end)) == expected


def test_values_are_never_above_the_rating_and_kw_loses_the_measured_cut() -> None:
    caps, _ = horizon_caps(
        [
            window(0, 30, limit_a=(300.0, 150.0, math.inf)),
            window(0, 30, limit_a=(250.0, 200.0, 200.0), ref="at-rating"),
            window(0, 30, limit_kw=80.0, ref="kw"),
            window(0, 30, limit_kw=math.inf, ref="inf-kw"),
            window(0, 30, node="feeder", limit_a=(40.0, 40.0, 40.0), hard=False, ref="soft"),
        ],
        NOW,
        ENDS,
        RATINGS,
        {"grid": 5.0},
    )
    by_ref = {c.ref: c for c in caps}
    assert by_ref["openadr:p1"].limit_a == (200.0, 150.0, 200.0)
    assert "openadr:p1/at-rating" not in by_ref and "openadr:p1/inf-kw" not in by_ref
    assert by_ref["openadr:p1/kw"].limit_kw == 75.0
    soft = by_ref["openadr:p1/soft"]
    assert soft.node == "feeder" and not soft.hard and soft.limit_a == (40.0, 40.0, 40.0)


def test_a_window_on_an_unknown_node_is_skipped_and_logged(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sitectl.control.windows"):
        caps, _ = horizon_caps([window(0, 30, node="feeder-9")], NOW, ENDS, RATINGS, {})
    assert caps == [] and "unknown node 'feeder-9'" in caplog.text


# Through the real builder, LP and explanations.


def config() -> Config:
    return Config.model_validate(
        {
            "site": {
                "id": "w",
                "limit_kw": 500,
                "phase_limit_a": 200,
                "meter": "grid-meter",
                "non_ev_max_a": 50,
                "timezone": "UTC",
            },
            "circuits": [{"id": "feeder", "limit_a": 100}],
            "charger_defaults": {"circuit": "feeder", "max_current_a": 32, "password": "x" * 16},
            "chargers": [{"id": "A"}, {"id": "B"}],
            "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "h"}],
            "control": {
                "step_s": 900,
                "horizon_steps": 16,
                "ev_measurement_max_age_s": 30,
                "non_ev_hold_s": 0,
                "min_pause_s": 0,
            },
            # Cheap from 13:00 to 15:00: without a window the plan waits for it.
            "tariff": {
                "periods": [
                    {"start": "00:00", "eur_per_kwh": 0.40},
                    {"start": "13:00", "eur_per_kwh": 0.10},
                    {"start": "15:00", "eur_per_kwh": 0.40},
                ]
            },
        }
    )


def plugged(cfg: Config, need_kwh: float = 20.0, leaves_min: float = 210) -> SiteState:
    state = SiteState(cfg, clock=lambda: NOW)
    for charger_id in ("A", "B"):
        charger = state.chargers[charger_id]
        charger.connected = True
        connector = charger.connectors[1]
        connector.status = "Charging"
        connector.session = SessionState(
            f"{charger_id}-tx",
            1,
            NOW - timedelta(hours=1),
            transaction_id="1",
            energy_wanted_kwh=need_kwh,
            need_source="command",
            departure=NOW + timedelta(minutes=leaves_min),
            departure_source="command",
        )
    return state


def cycle(cfg: Config, state: SiteState):
    meters = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    meters.watch("grid")
    meters.reading("grid", SimpleNamespace(ok=True, current_a=(0.0,) * 3, error=None), 0.0)
    memory = {c.id: ChargerMemory(failsafe_installed=True) for c in cfg.chargers}
    builder = ProblemBuilder(cfg)
    built = builder.build(state, meters, memory, NOW, 100.0)
    allocation = solve(built.problem, 10.0)
    assert allocation.method == "lp" and verify(built.problem, allocation) == []
    why = explain(
        built, allocation, state=state, memory=memory, builder=builder, now=NOW, now_mono=100.0
    )
    return built, allocation, why


def test_a_window_announced_for_the_cheap_hours_moves_charging_to_now() -> None:
    cfg = config()
    _, free, _ = cycle(cfg, plugged(cfg))
    assert sum(free.dispatch_a.values()) == pytest.approx(0.0, abs=1e-6)  # waits for 13:00
    state = plugged(cfg)
    state.limits.publish(
        "openadr:p1",
        [
            GridLimit(
                "grid",
                "openadr:p1",
                NOW + timedelta(hours=1),
                NOW + timedelta(hours=3),
                limit_kw=8.0,
                reason="congestion 13-15",
                ref="evt-7",
            )
        ],
        NOW,
    )
    built, allocation, why = cycle(cfg, state)
    (cap,) = built.problem.caps
    # 13:00-15:00 covers the 15-minute steps 4-7 and the first hour-long far step (8).
    assert (cap.first_step, cap.end_step, cap.limit_kw) == (4, 9, 8.0)
    assert built.caps[0].ref == "evt-7"
    # Now: both at full current (the energy the window keeps out of 13-15 is charged first).
    assert allocation.dispatch_a == pytest.approx({"A/1": 32.0, "B/1": 32.0})
    plan = allocation.plan_a
    kw = 230.0 * 3 * plan.sum(axis=0) / 1000.0
    assert (kw[4:9] <= 8.0 + 1e-6).all()
    dt_h = built.problem.durations_s / 3600.0
    got = (plan * 230.0 * 3 * dt_h / 1000).sum(axis=1)
    assert got == pytest.approx([20.0, 20.0], abs=0.01)  # both still get their need
    assert "A/1" not in why  # at full current: nothing to explain
    # The limit in force now is still the rating; the window is announced.
    assert ProblemBuilder(cfg).effective_limits(state, NOW)["grid"] == (200.0, 200.0, 200.0)


def test_a_binding_window_is_named_with_its_source_reason_and_expiry() -> None:
    cfg = config()
    state = plugged(cfg, need_kwh=100.0)
    end = NOW + timedelta(minutes=40)
    state.limits.publish(
        "openadr:p1",
        [GridLimit("feeder", "openadr:p1", NOW, end, limit_a=(40.0,) * 3, reason="DSO request")],
        NOW,
    )
    _, allocation, why = cycle(cfg, state)
    assert sum(allocation.dispatch_a.values()) == pytest.approx(40.0)
    hold = allocation.binding.holds["A/1"][0]
    assert hold.kind == b.PHASE and hold.cap == 0
    first = why["A/1"][0]
    assert first["kind"] == "circuit" and first["source"] == "openadr:p1"
    assert first["reason"] == "DSO request" and first["until"] == end.isoformat()
    item = next(i for i in why["A/1"] if i["kind"] == "grid_limit")
    assert item["limit"] == 40.0 and item["configured"] == 100.0 and item["hard"] is True
    assert "DSO request" in item["text"] and "until 12:40" in item["text"]
    assert ProblemBuilder(cfg).effective_limits(state, NOW)["feeder"] == (40.0, 40.0, 40.0)


def test_an_override_is_a_board_window_and_never_raises_a_limit() -> None:
    cfg = config()
    state = plugged(cfg, need_kwh=100.0)
    state.overrides["feeder"] = LimitOverride(
        "feeder", (150.0, 30.0, 150.0), NOW + timedelta(minutes=20), "http", set_at=NOW
    )
    (window,) = state.limits.in_force(NOW)
    assert window.source == "operator:http" and window.end == NOW + timedelta(minutes=20)
    built, allocation, why = cycle(cfg, state)
    (cap,) = built.problem.caps
    assert cap.limit_a == (100.0, 30.0, 100.0) and (cap.first_step, cap.end_step) == (0, 2)
    assert sum(allocation.dispatch_a.values()) == pytest.approx(30.0)
    override = next(i for i in why["A/1"] if i["kind"] == "override")
    assert override["source"] == "operator:http" and override["phase"] == "L2"
    # Expired: dropped from the overrides and the board at the next build.
    later = NOW + timedelta(minutes=21)
    builder = ProblemBuilder(cfg)
    meters = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    memory = {c.id: ChargerMemory(failsafe_installed=True) for c in cfg.chargers}
    assert builder.build(state, meters, memory, later, 100.0).problem.caps == ()
    assert "feeder" not in state.overrides and state.limits.sources() == []


def test_a_soft_window_is_kept_when_no_departure_needs_more() -> None:
    # Both leave in 45 minutes wanting 3 kWh: 11 kW for 45 minutes is 8.25 kWh, so the soft
    # limit is kept (and named); 5 kWh each would need it exceeded, and it is.
    cfg = config()
    soft = GridLimit("grid", "openadr:p1", NOW, NOW + timedelta(hours=1), limit_kw=11.0, hard=False)
    state = plugged(cfg, need_kwh=3.0, leaves_min=45)
    state.limits.publish("openadr:p1", [soft], NOW)
    _, allocation, why = cycle(cfg, state)
    kw = 230.0 * 3 * allocation.plan_a.sum(axis=0) / 1000.0
    assert (kw[:3] <= 11.0 + 1e-6).all() and kw[0] == pytest.approx(11.0, abs=0.01)
    item = next(i for i in why["A/1"] if i["kind"] == "soft_limit")
    assert item["source"] == "openadr:p1" and item["hard"] is False and item["unit"] == "kW"
    state = plugged(cfg, need_kwh=5.0, leaves_min=45)
    state.limits.publish("openadr:p1", [soft], NOW)
    _, allocation, _ = cycle(cfg, state)
    got = (allocation.plan_a * 230.0 * 3 * 0.25 / 1000).sum(axis=1)
    assert got == pytest.approx([5.0, 5.0], abs=0.01)  # the departures are saved


def test_bad_windows_are_refused_at_publish_naming_the_problem(caplog) -> None:
    cfg = config()
    state = plugged(cfg)
    with pytest.raises(ValueError, match="limit_kw"):
        GridLimit("grid", "x", NOW, limit_kw=float("nan"))
    with (
        caplog.at_level(logging.WARNING, logger="sitectl.limits"),
        pytest.raises(ValueError, match="unknown node 'feeder-9'"),
    ):
        state.limits.publish("x", [GridLimit("feeder-9", "x", NOW, limit_kw=10.0)], NOW)
    assert "limits from x refused" in caplog.text and state.limits.sources() == []
    with pytest.raises(ValueError, match="unknown node"):
        state.overrides["feeder-9"] = LimitOverride("feeder-9", (1.0,) * 3, NOW)
    with pytest.raises(ValueError, match="fail_safe_s"):
        state.limits.publish("x", [], NOW, fail_safe_s=float("nan"))
    # The cycle runs on without them.
    cycle(cfg, state)


def test_step0_limits_take_only_the_hard_caps_that_cover_step_0():
    caps = [
        NodeCap("grid", 0, 2, limit_a=(16.0, 20.0, 300.0)),  # now: lowers, never raises
        NodeCap("grid", 0, 4, limit_kw=9.45),
        NodeCap("feeder", 0, 8, limit_a=(5.0, 5.0, 5.0), hard=False),  # soft: a price only
        NodeCap("feeder", 1, 8, limit_a=(10.0, 10.0, 10.0)),  # from step 1: not now
    ]
    amps, kw = step0_limits(caps, RATINGS, {"grid": 50.0, "feeder": None})
    assert amps == {"grid": (16.0, 20.0, 200.0), "feeder": (100.0, 100.0, 100.0)}
    assert kw == {"grid": 9.45}
