"""The on-demand phase test without sockets: its answers at once, its bounds, its stages."""

from __future__ import annotations

import pytest

from sitectl.config import GRID
from sitectl.control.phase_test import Outcome, PhaseTestBusy, PhaseTests, Stage
from sitectl.control.phases import PhaseWatch
from sitectl.state import SiteState
from sitectl.uplink.commands import handle_command
from tests.control.test_snapshot import MONO, config, plug


def site(**extra):
    cfg = config(**extra)
    return cfg, SiteState(cfg)


def test_answers_at_once_when_a_test_cannot_run() -> None:
    cfg, state = site()
    tests = PhaseTests(cfg, state)
    with pytest.raises(KeyError):
        tests.start("NOPE")
    assert tests.start("A").outcome is Outcome.OFFLINE
    state.chargers["A"].connected = True
    test = tests.start("A")
    assert test.outcome is Outcome.NO_SESSION and "plug in a vehicle" in test.text
    # No meter anywhere above the charger: nothing could see its phases.
    cfg, state = site(site={"id": "s", "limit_kw": 500, "phase_limit_a": 200, "non_ev_max_a": 5})
    plug(state, "A")
    assert PhaseTests(cfg, state).start("A").outcome is Outcome.NO_METER


def test_one_test_per_meter_and_a_running_one_is_returned() -> None:
    cfg, state = site()
    plug(state, "A")
    plug(state, "B")
    tests = PhaseTests(cfg, state)
    first = tests.start("A")
    assert first.outcome is Outcome.RUNNING and first.meter == GRID
    assert tests.start("A") is first
    with pytest.raises(PhaseTestBusy, match="runs under the same meter"):
        tests.start("B")
    assert tests.running() == {"A"}


def limits(**amps: float) -> dict[str, tuple[float, dict[int, float]]]:
    return {c: (a, {1: a}) for c, a in amps.items()}


def test_bounds_only_lower_the_charger_and_hold_the_others() -> None:
    cfg, state = site()
    plug(state, "A", amps=(20.0, 0.0, 0.0))
    plug(state, "B")
    tests = PhaseTests(cfg, state)
    watch = PhaseWatch(cfg)
    tests.start("A")
    assert tests.bound(limits(A=20.0, B=30.0)) == limits(A=20.0, B=30.0)  # not started yet
    commanded = {"A": 20.0, "B": 16.0}
    tests.cycle(watch, {}, {}, commanded, ("A", "B"), MONO)
    # Base: A no higher than it held; B held at its limit although A's share is freed.
    assert tests.bound(limits(A=25.0, B=30.0)) == limits(A=20.0, B=16.0)
    assert tests.bound(limits(A=10.0, B=12.0)) == limits(A=10.0, B=12.0)  # lower stays lower
    test = tests.get("A")
    assert test is not None
    test.plateau.stage = Stage.LOW
    test.low_a = 6.0
    assert tests.bound(limits(A=20.0, B=30.0)) == limits(A=6.0, B=16.0)
    # Done: no bounds any more.
    test.outcome = Outcome.MATCHES
    assert tests.bound(limits(A=25.0, B=30.0)) == limits(A=25.0, B=30.0)


def test_a_miswired_single_phase_draw_is_decided_through_the_watch() -> None:
    cfg, state = site()
    plug(state, "A", amps=(20.0, 0.0, 0.0))
    plug(state, "B")
    tests = PhaseTests(cfg, state)
    watch = PhaseWatch(cfg)
    tests.start("A")
    connector = state.chargers["A"].connectors[1]
    now = MONO
    held = {"A": 20.0, "B": 16.0}
    found = []
    for _ in range(200):
        test = tests.get("A")
        assert test is not None
        if test.done:
            break
        low = test.plateau.stage == "low"
        a = 6.0 if low else 20.0
        held["A"] = 6.0 if low else 20.0
        now += 0.5
        connector.current_mono = now  # a fresh report every cycle
        draws = {"A": (a, 0.0, 0.0), "B": (16.0, 16.0, 16.0)}
        # A is wired L2-L3-L1: its L1 is the site's L2.
        measured = {GRID: (40.0, 40.0 + a, 40.0)}
        found += tests.cycle(watch, draws, measured, held, ("A", "B"), now)
    test = tests.get("A")
    assert test is not None and test.outcome is Outcome.MISMATCH, test.text
    assert test.observed == {"L1": "L2"} and test.votes == 3
    assert [f.charger_id for f in found] == ["A"] and not found[0].matches


def test_the_command_starts_reports_and_refuses_like_every_command() -> None:
    cfg, state = site()
    tests = PhaseTests(cfg, state)

    def command(payload, phase_tests=tests):
        return handle_command(state, cfg, "detect_phases", payload, phase_tests=phase_tests)

    refused = command({"charger": "NOPE"})
    assert not refused["ok"] and refused["field"] == "charger"
    assert "not available" in command({"charger": "A"}, phase_tests=None)["error"]
    assert command({"charger": "A", "action": "status"}) == {
        "ok": True,
        "command": "detect_phases",
        "test": None,
    }
    assert command({"charger": "A", "colour": "red"})["field"] == "colour"
    plug(state, "A")
    plug(state, "B")
    started = command({"charger": "A", "timeout_s": 60})
    assert started["ok"] and started["test"]["state"] == "running"
    assert started["test"]["requested_at"].endswith("Z") and started["test"]["timeout_s"] == 60
    busy = command({"charger": "B"})
    assert not busy["ok"] and busy["conflict"] and "same meter" in busy["error"]
    assert command({"charger": "A", "action": "status"})["test"]["state"] == "running"


def test_a_test_without_fresh_measurements_ends_at_its_timeout_saying_why() -> None:
    cfg, state = site()
    plug(state, "A", amps=(20.0, 0.0, 0.0))
    plug(state, "B")
    tests = PhaseTests(cfg, state)
    watch = PhaseWatch(cfg)
    tests.start("A", timeout_s=10)
    held = {"A": 20.0, "B": 16.0}
    measured = {GRID: (40.0, 60.0, 40.0)}
    # B's reports have stopped (absent from the draws): it could be moving, no evidence.
    for k in range(30):
        now = MONO + 0.5 * k
        state.chargers["A"].connectors[1].current_mono = now
        tests.cycle(watch, {"A": (20.0, 0.0, 0.0)}, measured, held, ("A", "B"), now)
    test = tests.get("A")
    assert test is not None and test.outcome is Outcome.UNDECIDABLE
    assert "no answer within 10 s" in test.text and "fresh measurement of B" in test.text
    assert tests.bound(limits(A=25.0, B=30.0)) == limits(A=25.0, B=30.0)  # released
