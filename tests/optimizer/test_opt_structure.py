"""The LP's shape grows with what constrains: charger nodes as column bounds, chains merged,
rows that can never bind left out (and brought back when they can)."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer import _structure
from optimizer.lp import Allocator
from optimizer.problem import Load, Node, Problem
from optimizer.verify import verify
from tests.optimizer.cases import car

T = 8


def depot(n: int, *, feeder_a: float = 100.0, load: Load | None = None, twin: bool = False):
    """n one-connector chargers (node `charger:k`, 32 A) on a feeder under a transformer."""
    nodes = [
        Node("grid", None, 400.0, 250.0),
        Node("transformer", "grid", 400.0),
        Node("feeder", "transformer", feeder_a),
    ]
    nodes += [Node(f"charger:{k}", "feeder", 32.0) for k in range(n)]
    sessions = [car(f"s{k}", f"charger:{k}", max_a=32.0, departure_step=T) for k in range(n)]
    if twin:  # a second connector on charger 0: two slots under one 32 A node
        sessions.append(car("twin", "charger:0", max_a=32.0, departure_step=T))
    return Problem(
        nodes=tuple(nodes),
        sessions=tuple(sessions),
        steps=T,
        step_s=900.0,
        loads=(load,) if load else (),
    )


def solved(allocator: Allocator, problem: Problem):
    answer = allocator.solve(problem, 20.0)
    assert answer.method == "lp", answer.detail
    assert verify(problem, answer) == []
    return answer


def test_one_connector_chargers_add_no_rows_and_the_chain_above_is_one_group() -> None:
    shapes = []
    for n in (4, 40):
        allocator = Allocator()
        solved(allocator, depot(n))
        st = allocator._matrix.structure
        # grid, transformer and feeder merged (same slots), one bound group per charger.
        assert st.G - n == 1  # the root group, then n bound groups
        assert (st.kind == _structure.BOUND).sum() == n
        shapes.append(allocator.shape)
    rows_per_session = 2  # energy and fairness (no minimum targets here)
    group_rows = 3 * T + T + T  # the merged root's phase rows, its kW row, the peak rows
    for (_, rows), n in zip(shapes, (4, 40), strict=True):
        assert rows == group_rows + rows_per_session * n


def test_a_load_on_a_charger_node_counts_against_its_maximum_and_every_ancestor() -> None:
    fixed = Load("fixed:0", "charger:0", ((20.0,) * T, (20.0,) * T, (20.0,) * T))
    problem = depot(3, feeder_a=60.0, load=fixed)
    answer = solved(Allocator(), problem)
    assert answer.dispatch_a["s0"] == pytest.approx(12.0)  # 32 A less its fixed 20 A
    # The feeder sees the fixed load too: 60 - 20 = 40 A for the three cars together.
    assert sum(answer.dispatch_a.values()) == pytest.approx(40.0)


def test_two_connectors_on_one_charger_share_its_maximum() -> None:
    problem = depot(2, feeder_a=200.0, twin=True)
    allocator = Allocator()
    answer = solved(allocator, problem)
    assert answer.dispatch_a["s0"] + answer.dispatch_a["twin"] == pytest.approx(32.0)
    assert answer.dispatch_a["s1"] == pytest.approx(32.0)
    st = allocator._matrix.structure
    assert st.kind[st.group_of_node[problem.node_index("charger:0")]] == _structure.DIRECT


def test_a_feeder_that_can_never_bind_has_no_rows_until_a_load_makes_it_bind() -> None:
    problem = depot(3, feeder_a=100.0)  # 3 × 32 A = 96 A under 100 A: never binds
    # A second feeder with a car of its own, so the feeder is not merged with the root.
    problem = dataclasses.replace(
        problem,
        nodes=(*problem.nodes, Node("feeder-2", "transformer", 32.0)),
        sessions=(*problem.sessions, car("other", "feeder-2", max_a=32.0, departure_step=T)),
    )
    allocator = Allocator()
    solved(allocator, problem)
    st = allocator._matrix.structure
    feeder = st.group_of_node[problem.node_index("feeder")]
    assert st.kind[feeder] == _structure.PRUNED
    # A building load of 30 A on the feeder leaves 70 A: now it binds, and its rows are back.
    building = Load("non-ev:feeder", "feeder", ((30.0,) * T, (30.0,) * T, (30.0,) * T))
    loaded = dataclasses.replace(problem, loads=(building,))
    answer = solved(allocator, loaded)
    assert sum(answer.dispatch_a[f"s{k}"] for k in range(3)) == pytest.approx(70.0)
    assert allocator.builds == 2
    st = allocator._matrix.structure
    assert st.kind[st.group_of_node[problem.node_index("feeder")]] != _structure.PRUNED
    # Kept from then on, also when the load is gone again.
    solved(allocator, problem)
    assert allocator.builds == 2
