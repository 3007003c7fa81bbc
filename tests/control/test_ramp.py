"""Ramp excess lifted only where it alone would pause vehicles, and kept above that node."""

from __future__ import annotations

from optimizer.problem import Load, Session
from sitectl.control.ramp import relieve_ramps

STEPS = 2
PARENT = {
    "grid": None,
    "feeder": "grid",
    "other": "grid",
    "charger:A": "feeder",
    "charger:B": "feeder",
    "charger:C": "other",
}


def load(name: str, node: str, amps: float) -> Load:
    return Load(name, node, tuple((amps,) * STEPS for _ in range(3)))


def session(sid: str, node: str, min_a: float = 6.0, energy: float = 10.0) -> Session:
    return Session(sid, node, sid, (0, 1, 2), min_a, 32.0, energy, 10)


def by_node(loads: list[Load]) -> dict[tuple[str, str], float]:
    return {(x.id, x.node): x.current_a[0][0] for x in loads}


def test_excess_that_alone_breaks_the_minimums_is_lifted_to_the_parent_just_enough():
    # feeder 40 A: building 20 + A min 6 + B min 6 = 32; A's ramp excess 12 would make 44.
    loads = [load("non-ev:feeder", "feeder", 20.0), load("overdraw:A", "charger:A", 12.0)]
    sessions = [session("a", "charger:A"), session("b", "charger:B")]
    limits = {"grid": (100.0,) * 3, "feeder": (40.0,) * 3, "other": (50.0,) * 3}
    out = by_node(relieve_ramps(loads, sessions, limits, PARENT, {"overdraw:A"}))
    # 4 A lifted off the feeder (it is then exactly full) and kept at the grid.
    assert out[("overdraw:A", "charger:A")] == 8.0
    assert out[("overdraw:A@grid", "grid")] == 4.0
    assert out[("non-ev:feeder", "feeder")] == 20.0


def test_at_the_grid_it_is_dropped_and_the_other_loads_are_untouched():
    loads = [
        load("non-ev:grid", "grid", 42.0),
        load("overdraw:A", "charger:A", 9.0),
        load("overdraw:B", "charger:B", 8.0),
    ]
    sessions = [session("a", "charger:A"), session("b", "charger:B")]
    limits = {"grid": (60.0,) * 3, "feeder": (100.0,) * 3, "other": (100.0,) * 3}
    out = relieve_ramps(loads, sessions, limits, PARENT, {"overdraw:A", "overdraw:B"})
    total = sum(x.current_a[0][0] for x in out)
    assert abs(total - (60.0 - 12.0)) < 1e-9  # exactly what leaves the two minimums
    assert ("non-ev:grid", "grid") in by_node(out)


def test_nothing_changes_when_the_minimums_fit_or_the_excess_is_not_a_ramp():
    loads = [load("non-ev:feeder", "feeder", 20.0), load("overdraw:A", "charger:A", 12.0)]
    sessions = [session("a", "charger:A"), session("b", "charger:B")]
    roomy = {"grid": (100.0,) * 3, "feeder": (60.0,) * 3, "other": (50.0,) * 3}
    assert relieve_ramps(loads, sessions, roomy, PARENT, {"overdraw:A"}) is loads
    tight = {"grid": (100.0,) * 3, "feeder": (40.0,) * 3, "other": (50.0,) * 3}
    assert relieve_ramps(loads, sessions, tight, PARENT, set()) is loads
    # A sustained over-draw that is not a ramp stays; so does a deficit no ramp explains.
    assert by_node(relieve_ramps(loads, sessions, tight, PARENT, {"overdraw:C"})) == by_node(loads)


def test_sessions_that_will_not_charge_now_do_not_count():
    loads = [load("non-ev:feeder", "feeder", 30.0), load("overdraw:A", "charger:A", 4.0)]
    # b is full, c arrives later: only a's minimum counts: 30 + 4 + 6 = 40 fits.
    sessions = [
        session("a", "charger:A"),
        session("b", "charger:B", energy=0.0),
        Session("c", "charger:B", "c2", (0, 1, 2), 6.0, 32.0, 5.0, 10, arrival_step=1),
    ]
    limits = {"grid": (100.0,) * 3, "feeder": (40.0,) * 3, "other": (50.0,) * 3}
    assert relieve_ramps(loads, sessions, limits, PARENT, {"overdraw:A"}) is loads


def test_a_limit_window_on_step_0_counts_or_every_ramping_vehicle_would_pause():
    # The grid's rating (100 A) leaves room, but a fail-safe window holds it at 16 A now: two
    # chargers lowered from 32 A to their minimums still draw 26 A above them each.
    loads = [load("overdraw:A", "charger:A", 26.0), load("overdraw:B", "charger:B", 26.0)]
    sessions = [session("a", "charger:A"), session("b", "charger:B")]
    ratings = {"grid": (100.0,) * 3, "feeder": (100.0,) * 3, "other": (100.0,) * 3}
    transient = {"overdraw:A", "overdraw:B"}
    assert relieve_ramps(loads, sessions, ratings, PARENT, transient) is loads
    now = {**ratings, "grid": (16.0,) * 3}
    out = relieve_ramps(loads, sessions, now, PARENT, transient)
    assert abs(sum(x.current_a[0][0] for x in out) - (16.0 - 12.0)) < 1e-9


def test_a_kw_limit_counts_over_the_phases_like_the_kw_row():
    # 9.45 kW at 230 V is 41.1 A summed over three phases: two minimums take 36 A of it.
    loads = [load("overdraw:A", "charger:A", 10.0), load("overdraw:B", "charger:B", 10.0)]
    sessions = [session("a", "charger:A"), session("b", "charger:B")]
    ratings = {"grid": (100.0,) * 3, "feeder": (100.0,) * 3, "other": (100.0,) * 3}
    transient = {"overdraw:A", "overdraw:B"}
    out = relieve_ramps(loads, sessions, ratings, PARENT, transient, kw_limits={"grid": 9.45})
    left = sum(sum(x.current_a[k][0] for k in range(3)) for x in out)
    assert abs(left - (9450 / 230 - 36.0)) < 1e-6
    # Without the kW limit nothing is lifted.
    assert relieve_ramps(loads, sessions, ratings, PARENT, transient) is loads
