"""`limited_by` (sitectl.control.explain) from the real builder and LP, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from optimizer.fallback import allocate
from optimizer.lp import solve
from sitectl.config import Config
from sitectl.control.explain import Explainer, explain
from sitectl.control.meters import MeterSupervisor
from sitectl.control.snapshot import ChargerMemory, ProblemBuilder
from sitectl.state import LimitOverride, SessionState, SiteState

#: A fixed origin for the arithmetic (never compared with the real clock).
NOW = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)  # never a literal date
MONO = 100.0


def config(feeder_a: float = 40, **extra) -> Config:
    data = {
        "site": {
            "id": "s",
            "limit_kw": 500,
            "phase_limit_a": 200,
            "meter": "grid-meter",
            "non_ev_max_a": 50,
            "timezone": "UTC",
        },
        "circuits": [{"id": "feeder", "limit_a": feeder_a}],
        "charger_defaults": {"circuit": "feeder", "max_current_a": 32, "password": "x" * 16},
        "chargers": [{"id": "A"}, {"id": "B"}],
        "devices": [{"name": "grid-meter", "profile": "eastron-sdm630", "host": "h"}],
        "control": {
            "step_s": 900,
            "horizon_steps": 8,
            "default_departure": "06:00",
            "default_energy_kwh": 40,
            "ev_measurement_max_age_s": 30,
            "non_ev_hold_s": 0,
            "min_pause_s": 0,
        },
    }
    data.update(extra)
    return Config.model_validate(data)


def trusted(currents=(10.0, 10.0, 10.0)) -> MeterSupervisor:
    meters = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    meters.watch("grid")
    meters.reading("grid", SimpleNamespace(ok=True, current_a=currents, error=None), 0.0)
    return meters


def plug(state: SiteState, charger: str, wanted_kwh: float | None = None) -> None:
    state.chargers[charger].connected = True
    connector = state.chargers[charger].connectors[1]
    connector.status = "Charging"
    connector.session = SessionState(
        f"{charger}-tx",
        1,
        NOW - timedelta(hours=1),
        transaction_id="1",
        energy_wanted_kwh=wanted_kwh,
        need_source="command" if wanted_kwh is not None else None,
    )


def cycle(cfg, state, meters=None, memory=None, fallback=False):
    for charger in state.chargers.values():
        charger.connected = True  # an offline one would be a fixed load at its fail-safe
    memory = memory if memory is not None else {}
    for charger in cfg.chargers:
        memory.setdefault(charger.id, ChargerMemory(failsafe_installed=True))
    builder = ProblemBuilder(cfg)
    built = builder.build(state, meters or trusted(), memory, NOW, MONO)
    allocation = allocate(built.problem) if fallback else solve(built.problem, 10.0)
    why = explain(
        built,
        allocation,
        state=state,
        memory=memory,
        builder=builder,
        now=NOW,
        now_mono=MONO,
    )
    return built, allocation, why


def kinds(items) -> list[str]:
    return [item["kind"] for item in items]


def test_two_vehicles_on_a_full_feeder_name_it_and_each_other() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A")
    plug(state, "B")
    _, allocation, why = cycle(cfg, state)
    assert sum(allocation.dispatch_a.values()) == pytest.approx(40.0)
    for me, other in (("A/1", "B/1"), ("B/1", "A/1")):
        first = why[me][0]
        assert first["kind"] == "circuit" and first["node"] == "feeder" and first["unit"] == "A"
        assert first["limit"] == 40.0 and first["planned"] == pytest.approx(40.0, abs=0.1)
        assert first["headroom"] == pytest.approx(0.0, abs=0.1) and first["measured"] is None
        assert [s["session"] for s in first["shared_with"]] == [other]
        assert other in first["text"] and "feeder" in first["text"]
        assert first["short"].startswith("feeder L") and "shared with 1 other" in first["short"]
        assert first["dual"] > 0


def test_an_operator_override_is_named_with_its_source_and_expiry() -> None:
    cfg = config(feeder_a=100)
    state = SiteState(cfg)
    plug(state, "A")
    state.overrides["feeder"] = LimitOverride(
        "feeder", (20.0, 20.0, 20.0), NOW + timedelta(hours=1), source="mqtt"
    )
    _, allocation, why = cycle(cfg, state)
    assert allocation.dispatch_a["A/1"] == pytest.approx(20.0)
    override = next(item for item in why["A/1"] if item["kind"] == "override")
    until = (NOW + timedelta(hours=1)).isoformat()
    assert override["source"] == "operator:mqtt" and override["until"] == until
    assert (override["limit"], override["configured"]) == (20.0, 100.0)
    assert "until 21:00" in override["text"] and override["node"] == "feeder"
    # The tight circuit itself says whose limit it is.
    circuit = why["A/1"][0]
    assert circuit["kind"] == "circuit" and circuit["source"] == "operator:mqtt"
    assert circuit["until"] == until and "operator:mqtt" in circuit["text"]


def test_a_non_compliant_neighbour_is_named_with_its_budget() -> None:
    cfg = config(feeder_a=48)
    state = SiteState(cfg)
    plug(state, "A")
    plug(state, "B")
    memory = {"B": ChargerMemory(failsafe_installed=True, noncompliant=True)}
    _, allocation, why = cycle(cfg, state, memory=memory)
    assert allocation.dispatch_a["A/1"] == pytest.approx(16.0)
    assert "B/1" not in allocation.dispatch_a  # budgeted at its maximum, not steered
    fixed = next(item for item in why["A/1"] if item["kind"] == "fixed_load")
    assert fixed["charger"] == "B" and fixed["budget_a"] == 32.0
    assert "non-compliant" in fixed["text"] and fixed["short"].startswith("B non-compliant")


def test_a_learnt_vehicle_cap_is_the_reason_when_nothing_else_holds() -> None:
    cfg = config(feeder_a=100)
    state = SiteState(cfg)
    plug(state, "A")
    memory = {"A": ChargerMemory(failsafe_installed=True, ev_session="A-tx", ev_cap_a=12.0)}
    _, allocation, why = cycle(cfg, state, memory=memory)
    assert allocation.dispatch_a["A/1"] == 12.0
    (item,) = why["A/1"]
    assert item["kind"] == "ev_cap" and item["limit"] == 12.0 and item["connector_max"] == 32.0
    assert item["node"] == "A"


def test_a_cheaper_hour_defers_the_vehicle_and_says_until_when() -> None:
    tariff = {
        "periods": [
            {"start": "00:00", "eur_per_kwh": 0.10},
            {"start": "20:00", "eur_per_kwh": 0.40},
            {"start": "21:00", "eur_per_kwh": 0.10},
        ]
    }
    cfg = config(feeder_a=100, tariff=tariff)
    state = SiteState(cfg)
    plug(state, "A", wanted_kwh=5.0)
    _, allocation, why = cycle(cfg, state)
    assert allocation.dispatch_a["A/1"] == 0.0
    (item,) = why["A/1"]
    assert item["kind"] == "tariff" and item["at"] == (NOW + timedelta(hours=1)).isoformat()
    assert item["text"].startswith("deferred to 21:00, cheaper")
    assert (item["price_now"], item["price_then"]) == (0.4, 0.1)
    assert item["short"] == "deferred to 21:00, cheaper"


def test_a_failed_meter_budget_is_named_under_a_full_grid_connection() -> None:
    cfg = config(
        feeder_a=100,
        site={
            "id": "s",
            "limit_kw": 500,
            "phase_limit_a": 80,
            "meter": "grid-meter",
            "non_ev_max_a": 50,
            "timezone": "UTC",
        },
    )
    state = SiteState(cfg)
    plug(state, "A")
    untrusted = MeterSupervisor(grace_s=5, hold_s=0, good_to_recover=1)
    untrusted.watch("grid")
    _, allocation, why = cycle(cfg, state, meters=untrusted)
    assert allocation.dispatch_a["A/1"] == pytest.approx(30.0)  # 80 A less 50 A assumed
    assert kinds(why["A/1"])[0] == "circuit" and why["A/1"][0]["node"] == "grid"
    failed = next(item for item in why["A/1"] if item["kind"] == "meter_failed")
    assert failed["node"] == "grid" and failed["budget_a"] == 50.0
    assert "fail-safe budget" in failed["text"]


def test_the_fallback_says_it_ran_out_there() -> None:
    cfg = config()
    state = SiteState(cfg)
    plug(state, "A")
    plug(state, "B")
    _, allocation, why = cycle(cfg, state, fallback=True)
    assert allocation.method == "fallback"
    held = [key for key in ("A/1", "B/1") if key in why]
    assert held, "the fallback gave both their maximum on a 40 A feeder?"
    for key in held:
        assert why[key][0]["kind"] == "circuit" and "fallback" in why[key][0]["text"]
        assert why[key][0]["dual"] is None


def test_a_vehicle_given_what_it_can_take_has_no_reasons_and_the_uplink_hears_of_changes():
    cfg = config(feeder_a=100)
    state = SiteState(cfg)
    plug(state, "A")
    heard: list[str] = []
    state.subscribe(lambda change: heard.append(change.subject) if change.kind == "plan" else 0)
    memory = {c.id: ChargerMemory(failsafe_installed=True) for c in cfg.chargers}
    builder = ProblemBuilder(cfg)
    explainer = Explainer(state)

    def run():
        built = builder.build(state, trusted(), memory, NOW, MONO)
        allocation = solve(built.problem, 10.0)
        return explainer(built, allocation, memory=memory, builder=builder, now=NOW, now_mono=MONO)

    assert run() == {} and heard == []  # 32 A: what the charger takes
    state.overrides["feeder"] = LimitOverride("feeder", (20.0,) * 3, NOW + timedelta(hours=1))
    assert "A/1" in run() and heard == ["A/1"]
    run()
    assert heard == ["A/1"]  # the same reasons: no republish
    del state.overrides["feeder"]
    assert run() == {} and heard == ["A/1", "A/1"]
