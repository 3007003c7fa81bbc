"""The loop-scale benchmark's depot at small scale: built by sitectl's real ProblemBuilder,
answered by the LP through the loop's own call, cycle after cycle."""

from __future__ import annotations

from bench.loop_scale import energy_share
from bench.loop_site import EVENTS, Depot
from optimizer.lp import Allocator
from optimizer.verify import verify
from sitectl.control.snapshot import charger_node

#: Generous: the benchmark times the solve; a test on a shared machine must not fall back.
BUDGET_S = 20.0


def test_generated_depot_goes_through_the_problem_builder_and_the_lp_answers() -> None:
    depot = Depot.generate(40, seed=3, steps=96)
    problem = depot.build().problem
    uniform = depot.build_uniform().problem  # the same state on 96 steps of 15 min
    assert problem.steps == 30 and uniform.steps == 96  # 2 h at 15 min, then hours
    ids = {n.id for n in problem.nodes}
    # The loop's shape: one node per charger under feeders under the transformer.
    assert {charger_node(c.id) for c in depot.config.chargers} <= ids
    assert {"grid", "transformer", "feeder-000", "feeder-001"} <= ids
    assert {len(s.phases) for s in problem.sessions} == {1, 3}
    assert any(s.node.startswith("charger:") for s in problem.sessions)
    assert any(load.id.startswith("non-ev:") for load in problem.loads)
    assert any(load.node.startswith("charger:") for load in problem.loads)

    allocator = Allocator(known_slots=depot.slots())
    answer = allocator.solve(problem, BUDGET_S)
    assert answer.method == "lp", answer.detail
    assert verify(problem, answer) == []
    assert energy_share(problem, answer, uniform) >= 0.999
    for event in EVENTS * 2:
        assert depot.cycle(event) == event
        problem = depot.build().problem
        uniform = depot.build_uniform().problem
        answer = allocator.solve(problem, BUDGET_S)
        assert answer.method == "lp", (event, answer.detail)
        assert verify(problem, answer) == []
    assert energy_share(problem, answer, uniform) >= 0.999
    assert allocator.builds == 1  # every change was a warm re-solve of the same model


def test_generated_depot_is_the_same_for_a_seed() -> None:
    a = Depot.generate(30, seed=5, steps=8).build().problem
    b = Depot.generate(30, seed=5, steps=8).build().problem
    assert a == b
    assert Depot.generate(30, seed=6, steps=8).build().problem != a
