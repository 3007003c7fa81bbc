"""The problem dataclasses: validation names the field, derived views add up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optimizer.problem import Load, Node, Problem, Session, Tariff
from tests.optimizer.cases import car, one_circuit


def test_scalar_limit_applies_to_every_phase():
    assert Node("a", None, 40).limit_a == (40.0, 40.0, 40.0)
    assert Node("a", None, (10, 20, 30)).limit_a == (10.0, 20.0, 30.0)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Node("a", None, -1.0), "limit_a"),
        (lambda: Node("a", None, (1.0, 2.0)), "limit_a"),
        (lambda: Node("a", None, float("nan")), "limit_a"),
        (lambda: Node("a", None, 10.0, limit_kw=-5.0), "limit_kw"),
        (lambda: car("s", phases=(3,)), "phases"),
        (lambda: car("s", phases=(0, 0)), "phases"),
        (lambda: car("s", phases=()), "phases"),
        (lambda: car("s", min_a=8.0, max_a=6.0), "max_a"),
        (lambda: car("s", energy_kwh=-1.0), "energy_kwh"),
        (lambda: car("s", priority=5), "priority"),
        (lambda: car("s", departure_step=2.5), "departure_step"),  # type: ignore[arg-type]
        (lambda: Load("l", "a", ((1.0,), (1.0,))), "current_a"),  # type: ignore[arg-type]
        (lambda: Load("l", "a", ((1.0,), (1.0,), (1.0, 2.0))), "current_a"),
        (lambda: Tariff(demand_charge_per_kw=-1.0), "demand_charge_per_kw"),
        (lambda: one_circuit([], steps=0), "steps"),
        (lambda: one_circuit([], step_s=0.0), "step_s"),
        (lambda: one_circuit([], steps=4, prices=(0.1, 0.2)), "price_per_kwh"),
        (lambda: one_circuit([car("a", slot="c1"), car("b", slot="c1")]), "slot"),
        (lambda: one_circuit([car("a"), car("a", slot="other")]), "duplicate id"),
        (lambda: one_circuit([car("a", node="nowhere")]), "unknown node"),
    ],
)
def test_invalid_input_names_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_tree_must_have_one_root_and_no_cycle():
    with pytest.raises(ValueError, match="exactly one root"):
        Problem(nodes=(Node("a", None, 1), Node("b", None, 1)), sessions=(), steps=1, step_s=60)
    with pytest.raises(ValueError, match="cycle"):
        Problem(
            nodes=(Node("r", None, 1), Node("a", "b", 1), Node("b", "a", 1)),
            sessions=(),
            steps=1,
            step_s=60,
        )
    with pytest.raises(ValueError, match="unknown parent"):
        Problem(nodes=(Node("r", None, 1), Node("a", "x", 1)), sessions=(), steps=1, step_s=60)


def test_non_uniform_grid_needs_one_duration_per_step():
    with pytest.raises(ValueError, match="step_s"):
        Problem(nodes=(Node("r", None, 1),), sessions=(), steps=3, step_s=(60.0, 60.0))
    p = Problem(nodes=(Node("r", None, 1),), sessions=(), steps=2, step_s=(60.0, 600.0))
    assert p.durations_s.tolist() == [60.0, 600.0]


def test_load_with_wrong_step_count_is_rejected():
    with pytest.raises(ValueError, match="house"):
        Problem(
            nodes=(Node("r", None, 1),),
            sessions=(),
            steps=3,
            step_s=60,
            loads=(Load("house", "r", ((1.0,), (1.0,), (1.0,))),),
        )


def test_balanced_kw_load_splits_over_three_phases():
    load = Load.balanced_kw("b", "r", [6.9, 0.0], voltage_ln_v=230.0)
    # 6.9 kW / (3 × 230 V) = 10 A per phase.
    assert load.current_a == ((10.0, 0.0),) * 3


def test_load_counts_against_its_node_and_every_ancestor_only():
    p = Problem(
        nodes=(
            Node("grid", None, 100),
            Node("tx", "grid", 90),
            Node("f1", "tx", 50),
            Node("f2", "tx", 50),
        ),
        sessions=(),
        steps=2,
        step_s=900,
        loads=(
            Load("building", "tx", ((5.0, 6.0), (0.0, 0.0), (1.0, 1.0))),
            Load("pump", "f1", ((2.0, 2.0), (2.0, 2.0), (2.0, 2.0))),
        ),
    )
    through = p.load_through_a()
    np.testing.assert_allclose(through[p.node_index("grid"), 0], [7.0, 8.0])
    np.testing.assert_allclose(through[p.node_index("tx"), 2], [3.0, 3.0])
    np.testing.assert_allclose(through[p.node_index("f1"), 0], [2.0, 2.0])
    np.testing.assert_allclose(through[p.node_index("f2")], 0.0)


def test_replace_revalidates():
    p = one_circuit([car("a")])
    with pytest.raises(ValueError, match="slot"):
        dataclasses.replace(p, sessions=(car("a", slot="x"), car("b", slot="x")))
    with pytest.raises(ValueError, match="session 'a'"):
        Session("a", "site", "c", (0,), 6.0, 32.0, float("inf"), 4)
