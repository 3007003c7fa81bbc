"""Dispatch with charger quirks: a higher minimum, fewer writes, a rate limit is not a refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sitectl.control.dispatch import Dispatcher
from sitectl.control.memory import ChargerMemory
from sitectl.ocpp.observe import StateObserver
from sitectl.quirks import DEFAULTS
from sitectl.sim.charger import SimCharger
from sitectl.sim.quirks import Quirks
from sitectl.state import SiteState
from tests.ocpp.conftest import PASSWORD, depot_config


def config(**control):
    cfg = depot_config([{"id": "A"}], None)
    return cfg.model_copy(update={"control": cfg.control.model_copy(update=control)})


async def reject(identity, payload):
    return {"status": "Rejected"}


def test_a_quirk_minimum_raises_the_floor_and_increases_wait_for_the_write_interval() -> None:
    cfg = config(period_s=5, profile_validity_s=120, deadband_a=1.0)
    dispatcher = Dispatcher(cfg, reject, lambda c: "1.6")
    memory = {"A": ChargerMemory(commanded_a=16.0, commanded_at=100.0)}
    # Without quirks: a 7 A wish is 7 A, an increase goes out at once.
    assert [c.limit_a for c in dispatcher.plan({"A": (7.0, {})}, memory, 101.0)] == [7.0]
    assert [c.kind for c in dispatcher.plan({"A": (20.0, {})}, memory, 101.0)] == ["increase"]
    dispatcher.quirks = lambda c: replace(DEFAULTS, min_current_a=8.0, min_write_interval_s=60.0)
    # Below the charger's own 8 A minimum nothing flows: 0 (a decrease, sent at once).
    (command,) = dispatcher.plan({"A": (7.0, {})}, memory, 101.0)
    assert (command.limit_a, command.kind) == (0.0, "decrease")
    # An increase within 60 s of the last write waits (the lower limit is the safe one)...
    assert dispatcher.plan({"A": (20.0, {})}, memory, 130.0) == []
    # ...and goes out once the interval has passed.
    assert [c.kind for c in dispatcher.plan({"A": (20.0, {})}, memory, 161.0)] == ["increase"]
    # An unchanged limit is refreshed only when 2 periods of validity are left, as before.
    assert dispatcher.plan({"A": (16.0, {})}, memory, 150.0) == []
    assert [c.kind for c in dispatcher.plan({"A": (16.0, {})}, memory, 211.0)] == ["refresh"]


async def test_a_rejection_inside_the_write_interval_is_a_rate_limit_not_a_refusal() -> None:
    cfg = config(period_s=5, profile_validity_s=120)
    dispatcher = Dispatcher(cfg, reject, lambda c: "1.6")
    dispatcher.quirks = lambda c: replace(DEFAULTS, min_write_interval_s=300.0)
    now = datetime.now(UTC)
    memory = {"A": ChargerMemory(commanded_a=16.0, commanded_at=100.0)}
    refresh = dispatcher.plan({"A": (16.0, {})}, memory, 211.0)
    report = await dispatcher.send(refresh, memory, now, 211.0)
    assert report.failed["A"].startswith("rate limited")
    assert memory["A"].uncontrollable is False
    assert memory["A"].commanded_a == 16.0  # what it accepted last, still in force
    # Outside the interval the same answer is a refusal.
    dispatcher.quirks = lambda c: replace(DEFAULTS, min_write_interval_s=60.0)
    report = await dispatcher.send(refresh, memory, now, 211.0)
    assert report.failed["A"] == "refused (Rejected)"
    assert memory["A"].uncontrollable is True
    # A refused decrease is always a refusal.
    memory["A"] = ChargerMemory(commanded_a=16.0, commanded_at=210.0)
    dispatcher.quirks = lambda c: replace(DEFAULTS, min_write_interval_s=300.0)
    decrease = dispatcher.plan({"A": (10.0, {})}, memory, 211.0)
    report = await dispatcher.send(decrease, memory, now, 211.0)
    assert memory["A"].uncontrollable is True


async def test_a_simulated_charger_that_refuses_below_8_a(csms, start_server) -> None:
    cfg = depot_config([{"id": "A"}], csms.url)
    state = SiteState(cfg)
    server, url = await start_server(cfg, StateObserver(state))

    async def set_profile(identity, payload):
        return await server.call(identity, "SetChargingProfile", payload, 10)

    dispatcher = Dispatcher(cfg, set_profile, lambda c: "1.6")
    now = datetime.now(UTC)
    async with SimCharger("A", "1.6", url, PASSWORD, quirks=Quirks(refuses_below_a=8.0)) as sim:
        await sim.boot()
        memory = {"A": ChargerMemory()}
        # Without the quirk: 6.5 A is sent, refused, and the charger is uncontrollable.
        report = await dispatcher.send(
            dispatcher.plan({"A": (6.5, {})}, memory, 1.0), memory, now, 1.0
        )
        assert report.failed == {"A": "refused (Rejected)"} and memory["A"].uncontrollable
        # With it: 9 A is taken. Below 8 A the plan would say 0 A, which this firmware refuses
        # too (refuses_zero_a): it is held at its 8 A minimum instead (the problem builder
        # reserves that for its session), and stays controllable.
        dispatcher.quirks = lambda c: replace(DEFAULTS, min_current_a=8.0, refuses_zero_a=True)
        memory = {"A": ChargerMemory()}
        report = await dispatcher.send(
            dispatcher.plan({"A": (9.0, {})}, memory, 2.0), memory, now, 2.0
        )
        assert report.failed == {} and memory["A"].commanded_a == 9.0
        (pause,) = dispatcher.plan({"A": (7.0, {})}, memory, 3.0)
        assert (pause.limit_a, pause.kind) == (8.0, "decrease")
        report = await dispatcher.send([pause], memory, now, 3.0)
        assert report.failed == {} and not memory["A"].uncontrollable
        assert sim.limit_a(0) == 8.0  # the charger holds sitectl's profile


async def test_a_limit_at_or_below_the_failsafe_is_written_rarely() -> None:
    # Issue #17.8: a paused charger got a fresh profile every validity - 2 periods (20 s by
    # default, 4,300 flash writes a day). Holding 0 A (or anything up to its fail-safe) after
    # sitectl is gone is no worse than its fail-safe: it is given an hour.
    cfg = config(period_s=5, profile_validity_s=30, low_limit_validity_s=3600)
    sent = []

    async def accept(identity, payload):
        sent.append(payload)
        return {"status": "Accepted"}

    dispatcher = Dispatcher(cfg, accept, lambda c: "1.6")
    failsafe = cfg.chargers[0].failsafe_current_a
    memory = {"A": ChargerMemory(commanded_a=16.0, commanded_at=0.0)}
    now = datetime.now(UTC)
    # Paused: a decrease to 0 A, with the long duration.
    commands = dispatcher.plan({"A": (0.0, {})}, memory, 1.0)
    await dispatcher.send(commands, memory, now, 1.0)
    schedule = sent[-1]["csChargingProfiles"]["chargingSchedule"]
    assert schedule["duration"] == 3600 + 300  # + the start margin in the past
    # Unchanged: not written again at 25 s, nor at 30 minutes; refreshed before the hour ends.
    assert dispatcher.plan({"A": (0.0, {})}, memory, 26.0) == []
    assert dispatcher.plan({"A": (0.0, {})}, memory, 1801.0) == []
    assert [c.kind for c in dispatcher.plan({"A": (0.0, {})}, memory, 3592.0)] == ["refresh"]
    # Above the fail-safe the short validity holds: written again within 30 s.
    commands = dispatcher.plan({"A": (failsafe + 10.0, {})}, memory, 3592.0)
    await dispatcher.send(commands, memory, now, 3592.0)
    assert sent[-1]["csChargingProfiles"]["chargingSchedule"]["duration"] == 30 + 300
    assert [c.kind for c in dispatcher.plan({"A": (failsafe + 10.0, {})}, memory, 3613.0)] == [
        "refresh"
    ]


def test_a_lowered_connector_share_goes_out_though_the_total_is_unchanged() -> None:
    # Issue #17.9: a twin charger's shares were compared only by their total.
    cfg = depot_config([{"id": "A", "connectors": 2}], None)
    dispatcher = Dispatcher(cfg, reject, lambda c: "1.6")
    memory = {
        "A": ChargerMemory(
            commanded_a=32.0, commanded_at=100.0, commanded_connectors={1: 16.0, 2: 16.0}
        )
    }
    (command,) = dispatcher.plan({"A": (32.0, {1: 24.0, 2: 8.0})}, memory, 101.0)
    assert command.kind == "decrease" and command.limit_a == 32.0
    assert dict(command.connectors) == {1: 24.0, 2: 8.0}
    # The same shares again: nothing to send.
    memory["A"].commanded_connectors = {1: 24.0, 2: 8.0}
    assert dispatcher.plan({"A": (32.0, {1: 24.0, 2: 8.0})}, memory, 102.0) == []
