"""Time-windowed limits (`NodeCap`, issue #20): the LP, the fallback and the verifier agree.

Hard caps lower a node's limit on the steps they cover (the plan moves energy around them);
soft caps may be exceeded at a price, only to deliver energy a departure would otherwise miss.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from optimizer import binding as b
from optimizer.fallback import allocate
from optimizer.lp import Allocator, solve
from optimizer.problem import Node, NodeCap, Problem, Tariff
from optimizer.reference import max_energy
from optimizer.verify import Kind, verify
from tests.optimizer.cases import VOLT, car, energy_of

#: Expensive now, cheap on steps 2-3, expensive after: without a cap the plan waits for 2-3.
VALLEY = (0.40, 0.40, 0.10, 0.10, 0.40, 0.40, 0.40, 0.40)


def site(sessions, caps=(), *, limit_a=100.0, limit_kw=None, prices=VALLEY, steps=8, **kw):
    """Grid node "grid" (100 A), each car on its own 32 A charger node under it."""
    nodes = [Node("grid", None, limit_a, limit_kw)]
    nodes += [Node(f"charger:{s.id}", "grid", 32.0) for s in sessions]
    return Problem(
        nodes=tuple(nodes),
        sessions=tuple(sessions),
        steps=steps,
        step_s=900.0,
        tariff=Tariff(prices),
        caps=tuple(caps),
        **kw,
    )


def grid_a(problem: Problem, plan) -> np.ndarray:
    """EV current through the grid node per phase and step (all cars draw three phases)."""
    return np.asarray(plan).sum(axis=0)


def lp(problem: Problem):
    allocation = solve(problem, budget_s=10.0)
    assert allocation.method == "lp", allocation.detail
    assert verify(problem, allocation) == []
    return allocation


def test_a_cap_moves_energy_out_of_its_steps_and_charges_earlier():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=10.0, departure_step=6) for x in "ab"]
    free = lp(site(cars))
    # Without the cap: everything in the cheap steps 2-3, nothing now.
    assert grid_a(None, free.plan_a)[[0, 1]].sum() == pytest.approx(0.0, abs=1e-6)
    cap = NodeCap("grid", 2, 4, limit_a=10.0, ref="dso:congestion")
    capped = lp(site(cars, [cap]))
    through = grid_a(None, capped.plan_a)
    assert (through[2:4] <= 10.0 + 1e-6).all()
    # The energy the cap keeps out of steps 2-3 is charged earlier (steps 0-1), and every car
    # still gets its need by its departure.
    assert through[:2].sum() > 0
    got = energy_of(capped_problem := site(cars, [cap]), capped.plan_a)
    assert got == pytest.approx([10.0, 10.0], abs=1e-3)
    assert verify(capped_problem, capped) == []


def test_the_verifier_refuses_a_plan_over_a_cap_and_names_the_step():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=10.0, departure_step=6) for x in "ab"]
    free = lp(site(cars))
    capped = site(cars, [NodeCap("grid", 2, 4, limit_a=10.0)])
    found = verify(capped, free)
    assert found and {v.kind for v in found} == {Kind.NODE_CURRENT}
    assert {v.step for v in found} <= {2, 3} and {v.id for v in found} == {"grid"}


def test_the_fallback_keeps_a_cap_on_step_zero():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=20.0) for x in "abc"]
    problem = site(cars, [NodeCap("grid", 0, 2, limit_a=(20.0, 30.0, 40.0))])
    answer = allocate(problem)
    assert verify(problem, answer) == []
    assert sum(answer.dispatch_a.values()) <= 20.0 + 1e-9
    planned = allocate(problem, horizon=True)
    assert verify(problem, planned) == []
    assert grid_a(None, planned.plan_a)[2] > 20.0  # after the cap, more again


def test_a_cap_above_the_rating_changes_nothing():
    cars = [car(x, f"charger:{x}", max_a=32) for x in "abcd"]
    problem = site(cars, [NodeCap("grid", 0, 8, limit_a=500.0)], limit_a=40.0)
    allocation = lp(problem)
    assert sum(allocation.dispatch_a.values()) == pytest.approx(40.0)
    hold = allocation.binding.holds["a"][0]
    assert hold.kind == b.PHASE and hold.node == "grid" and hold.cap is None  # its own limit


def test_a_binding_cap_is_named_in_the_holds():
    cars = [car(x, f"charger:{x}", max_a=32) for x in "ab"]
    caps = [
        NodeCap("grid", 3, 8, limit_a=5.0, ref="later"),
        NodeCap("grid", 0, 2, limit_a=30.0, ref="openadr"),
        NodeCap("grid", 0, 1, limit_a=40.0, ref="operator"),
    ]
    allocation = lp(site(cars, caps, prices=()))
    assert sum(allocation.dispatch_a.values()) == pytest.approx(30.0)
    for sid in "ab":
        (hold,) = allocation.binding.holds[sid]
        assert (hold.kind, hold.node, hold.cap) == (b.PHASE, "grid", 1)
        assert hold.limit == pytest.approx(30.0)
    # The fallback's holds name it too.
    problem = site(cars, caps, prices=())
    fb = b.step0_binding(problem, allocate(problem))
    assert {h.cap for holds in fb.holds.values() for h in holds} == {1}


def test_a_kw_cap_on_a_node_without_a_kw_limit():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=60.0) for x in "abc"]
    cap = NodeCap("grid", 0, 4, limit_kw=22.0, ref="14a")
    problem = site(cars, [cap], prices=())
    allocation = lp(problem)
    kw = VOLT * 3 * grid_a(None, allocation.plan_a) / 1000.0
    assert (kw[:4] <= 22.0 + 1e-6).all() and kw[4] > 22.0 + 1.0
    hold = allocation.binding.holds["a"][0]
    assert hold.kind == b.KW and hold.cap == 0 and hold.limit == pytest.approx(22.0)
    fb = allocate(problem)
    assert (
        verify(problem, fb) == [] and VOLT * 3 * sum(fb.dispatch_a.values()) / 1000 <= 22.0 + 1e-9
    )
    # A plan over it is refused on exactly those steps.
    free = lp(site(cars, prices=()))
    assert {(v.kind, v.step) for v in verify(problem, free)} <= {
        (Kind.NODE_POWER, t) for t in range(4)
    }


def test_a_cap_on_a_feeder_of_one_charger_bounds_its_column():
    # A one-slot group is a column bound, not a row (optimizer._structure): the cap still holds.
    nodes = (Node("grid", None, 100.0), Node("feeder", "grid", 40.0), Node("c", "feeder", 32.0))
    problem = Problem(
        nodes=nodes,
        sessions=(car("a", "c", max_a=32, energy_kwh=80.0),),
        steps=6,
        step_s=900.0,
        caps=(NodeCap("feeder", 1, 3, limit_a=(10.0, 12.0, 14.0)),),
    )
    allocation = lp(problem)
    assert allocation.plan_a[0, 1:3] == pytest.approx([10.0, 10.0])
    assert allocation.plan_a[0, 0] == pytest.approx(32.0)


def test_warm_solves_follow_caps_coming_and_going_and_match_cold_ones():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=30.0, departure_step=7) for x in "abc"]
    allocator = Allocator()
    sequence = [
        (),
        (NodeCap("grid", 2, 5, limit_a=20.0),),
        (NodeCap("grid", 2, 5, limit_a=20.0), NodeCap("grid", 0, 8, limit_kw=30.0)),
        (NodeCap("grid", 1, 4, limit_a=12.0, hard=False),),
        (),
        (NodeCap("grid", 1, 4, limit_a=25.0, hard=False),),
    ]
    for caps in sequence:
        problem = site(cars, caps)
        warm = allocator.solve(problem, 10.0)
        cold = solve(problem, 10.0)
        assert warm.method == cold.method == "lp"
        assert verify(problem, warm) == []
        assert warm.objective == pytest.approx(cold.objective, rel=1e-6, abs=1e-6)
    # kW rows and soft rows, once made, are kept: a cap coming back needs no rebuild.
    builds = allocator.builds
    allocator.solve(site(cars, sequence[2]), 10.0)
    allocator.solve(site(cars, sequence[3]), 10.0)
    assert allocator.builds == builds


# Soft caps.


def soft_grid_a(problem: Problem, plan, first: int, end: int) -> np.ndarray:
    return grid_a(problem, plan)[first:end]


def test_a_soft_cap_is_kept_when_the_energy_fits_elsewhere():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=20.0, departure_step=8) for x in "ab"]
    cap = NodeCap("grid", 2, 4, limit_a=10.0, hard=False, ref="openadr:price")
    problem = site(cars, [cap])
    allocation = lp(problem)
    # The cheap steps are under the soft cap: the LP pays the higher price rather than the
    # penalty, and both cars still get all they need.
    assert (soft_grid_a(problem, allocation.plan_a, 2, 4) <= 10.0 + 1e-6).all()
    assert energy_of(problem, allocation.plan_a) == pytest.approx([20.0, 20.0], abs=1e-3)


def test_a_soft_cap_is_exceeded_only_as_far_as_a_departure_needs():
    # Steps 0-3 only; the soft cap covers them all at 10 A: 10 A × 3 × 230 V × 4 × 0.25 h is
    # 6.9 kWh, the two cars want 12 kWh by step 4. Over the cap by what they miss, no more.
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=6.0, departure_step=4) for x in "ab"]
    cap = NodeCap("grid", 0, 8, limit_a=10.0, hard=False)
    problem = site(cars, [cap], prices=())
    allocation = lp(problem)
    got = energy_of(problem, allocation.plan_a)
    assert got == pytest.approx([6.0, 6.0], abs=1e-3)  # the departures are saved
    over_a = np.maximum(grid_a(problem, allocation.plan_a) - 10.0, 0.0)
    over_kwh = float((over_a * 3 * VOLT * 0.25 / 1000).sum())
    assert over_kwh == pytest.approx(12.0 - 6.9, abs=0.01)


def test_a_soft_cap_is_not_exceeded_for_a_car_leaving_after_the_horizon():
    cars = [car("a", "charger:a", max_a=32, energy_kwh=200.0, departure_step=20)]
    cap = NodeCap("grid", 0, 8, limit_a=10.0, hard=False, ref="soft")
    problem = site(cars, [cap], prices=())
    allocation = lp(problem)
    assert (grid_a(problem, allocation.plan_a) <= 10.0 + 1e-6).all()
    (hold,) = allocation.binding.holds["a"]
    assert (hold.kind, hold.node, hold.cap, hold.phase) == (b.SOFT, "grid", 0, 0)
    assert hold.limit == pytest.approx(10.0)
    # A higher penalty share above 1 keeps it even for a departure inside the horizon.
    short = [car("a", "charger:a", max_a=32, energy_kwh=20.0, departure_step=4)]
    keep = lp(site(short, [cap], prices=(), soft_penalty=1.5))
    assert (grid_a(None, keep.plan_a) <= 10.0 + 1e-6).all()
    pay = lp(site(short, [cap], prices=()))
    assert grid_a(None, pay.plan_a).max() > 10.0 + 1.0


def test_a_hard_cap_is_never_exceeded_even_to_save_a_departure():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=6.0, departure_step=4) for x in "ab"]
    problem = site(cars, [NodeCap("grid", 0, 8, limit_a=10.0)], prices=())
    allocation = lp(problem)
    assert (grid_a(problem, allocation.plan_a) <= 10.0 + 1e-6).all()
    assert energy_of(problem, allocation.plan_a).sum() == pytest.approx(6.9, abs=0.01)
    # The independent yardstick (bench, tests) honours the cap too.
    best, plan = max_energy(problem)
    assert best == pytest.approx(6.9, abs=0.01) and (plan.sum(axis=0) <= 10.0 + 1e-6).all()


def test_a_soft_kw_cap_and_a_hard_one_on_the_same_node():
    cars = [car(x, f"charger:{x}", max_a=32, energy_kwh=8.0, departure_step=3) for x in "ab"]
    caps = [NodeCap("grid", 0, 8, limit_kw=10.0, hard=False), NodeCap("grid", 0, 8, limit_kw=30.0)]
    problem = site(cars, caps, prices=())
    allocation = lp(problem)
    kw = VOLT * 3 * grid_a(problem, allocation.plan_a) / 1000.0
    assert (kw <= 30.0 + 1e-6).all() and kw.max() > 10.0 + 1.0
    # The fallback keeps the soft one like a hard one.
    fb = allocate(problem)
    assert VOLT * 3 * sum(fb.dispatch_a.values()) / 1000.0 <= 10.0 + 1e-6


def test_soft_cap_on_a_single_charger_feeder():
    nodes = (Node("grid", None, 100.0), Node("feeder", "grid", 40.0), Node("c", "feeder", 32.0))
    sessions = (car("a", "c", max_a=32, energy_kwh=100.0, departure_step=20),)
    problem = Problem(
        nodes=nodes,
        sessions=sessions,
        steps=6,
        step_s=900.0,
        caps=(NodeCap("feeder", 0, 6, limit_a=12.0, hard=False),),
    )
    allocation = lp(problem)
    assert allocation.plan_a[0] == pytest.approx([12.0] * 6, abs=1e-6)


def test_random_caps_always_verify():
    rng = np.random.default_rng(7)
    for _ in range(25):
        n = int(rng.integers(1, 6))
        cars = [
            car(
                f"s{k}",
                f"charger:s{k}",
                max_a=float(rng.integers(6, 33)),
                energy_kwh=float(rng.uniform(0.5, 40)),
                departure_step=int(rng.integers(1, 12)),
                phases=[(0, 1, 2), (0,), (1, 2)][int(rng.integers(0, 3))],
            )
            for k in range(n)
        ]
        caps = []
        for _ in range(int(rng.integers(0, 4))):
            first = int(rng.integers(0, 8))
            end = int(rng.integers(first + 1, 9))
            kind = int(rng.integers(0, 3))
            caps.append(
                NodeCap(
                    "grid",
                    first,
                    end,
                    limit_a=None if kind == 2 else float(rng.uniform(0, 60)),
                    limit_kw=None if kind == 0 else float(rng.uniform(0, 40)),
                    hard=bool(rng.integers(0, 2)),
                )
            )
        problem = site(cars, caps, limit_kw=float(rng.uniform(5, 80)))
        allocation = solve(problem, 10.0)
        assert verify(problem, allocation) == [], (caps, allocation.detail)
        assert verify(problem, allocate(problem)) == []
        assert verify(problem, allocate(problem, horizon=True)) == []
        b.step0_binding(problem, allocation)  # explains without raising


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"first_step": 0, "end_step": 2}, "limit_a/limit_kw"),
        ({"first_step": 2, "end_step": 2, "limit_a": 10.0}, "first_step/end_step"),
        ({"first_step": -1, "end_step": 2, "limit_a": 10.0}, "first_step/end_step"),
        ({"first_step": 0, "end_step": 2, "limit_a": math.nan}, "limit_a"),
        ({"first_step": 0, "end_step": 2, "limit_a": (1.0, 2.0)}, "limit_a"),
        ({"first_step": 0, "end_step": 2, "limit_a": -1.0}, "limit_a"),
        ({"first_step": 0, "end_step": 2, "limit_kw": math.inf}, "limit_kw"),
        ({"first_step": 0.5, "end_step": 2, "limit_kw": 1.0}, "first_step"),
    ],
)
def test_a_bad_cap_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("/", "/")):
        NodeCap("grid", **kwargs)


def test_a_problem_refuses_caps_on_unknown_nodes_or_beyond_the_horizon():
    cars = [car("a", "charger:a")]
    with pytest.raises(ValueError, match=r"caps\[0\].*unknown node 'feeder-9'"):
        site(cars, [NodeCap("feeder-9", 0, 2, limit_a=10.0)])
    with pytest.raises(ValueError, match=r"caps\[0\]: end_step 9 beyond the horizon"):
        site(cars, [NodeCap("grid", 0, 9, limit_a=10.0)])
    with pytest.raises(ValueError, match="soft_penalty"):
        site(cars, soft_penalty=0.0)
    ok = site(cars, [NodeCap("grid", 0, 8, limit_a=10.0)])
    assert dataclasses.replace(ok, caps=()).caps == ()
