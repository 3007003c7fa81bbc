"""The fallback heuristic: least laxity first, never over a limit, 0 or >= min_a."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.allocation import Status
from optimizer.fallback import allocate
from optimizer.problem import Load, Node, Problem
from optimizer.verify import verify
from tests.optimizer.cases import car, one_circuit

KWH_16A_3PH_STEP = 3 * 230.0 * 16 / 1000 * 0.25


def checked(problem, **kwargs):
    a = allocate(problem, **kwargs)
    assert a.status is Status.FALLBACK and a.method == "fallback"
    assert verify(problem, a) == []
    return a


def test_least_laxity_goes_first():
    # "urgent" needs both of its two steps at full current; "relaxed" has eight steps for two.
    p = one_circuit(
        [
            car("relaxed", energy_kwh=2 * KWH_16A_3PH_STEP, departure_step=8),
            car("urgent", energy_kwh=2 * KWH_16A_3PH_STEP, departure_step=2),
        ],
        limit_a=16.0,
    )
    assert checked(p).dispatch_a == {"relaxed": 0.0, "urgent": 16.0}


def test_horizon_replay_delivers_both_in_turn():
    p = one_circuit(
        [
            car("relaxed", energy_kwh=2 * KWH_16A_3PH_STEP, departure_step=8),
            car("urgent", energy_kwh=2 * KWH_16A_3PH_STEP, departure_step=2),
        ],
        limit_a=16.0,
    )
    a = checked(p, horizon=True)
    np.testing.assert_allclose(a.plan_a, [[0, 0, 16, 16, 0, 0, 0, 0], [16, 16, 0, 0, 0, 0, 0, 0]])
    assert a.total_energy_kwh == pytest.approx(4 * KWH_16A_3PH_STEP)


def test_step_zero_only_by_default():
    a = checked(one_circuit([car("a")]))
    assert a.plan_a[0, 0] == 16.0 and not a.plan_a[0, 1:].any()


def test_priority_before_laxity():
    p = one_circuit(
        [car("urgent", departure_step=1), car("vip", departure_step=8, priority=2)], limit_a=16.0
    )
    assert checked(p).dispatch_a == {"urgent": 0.0, "vip": 16.0}


def test_remainder_below_minimum_is_not_handed_out():
    # 20 A: the first car takes 16, 4 A are left, the second car must pause rather than get 4.
    p = one_circuit([car("a", departure_step=3), car("b")], limit_a=20.0)
    assert checked(p).dispatch_a == {"a": 16.0, "b": 0.0}


def test_every_ancestor_and_phase_limits_the_grant():
    p = Problem(
        nodes=(
            Node("grid", None, (100.0, 30.0, 100.0), limit_kw=20.0),
            Node("f1", "grid", 100.0),
        ),
        sessions=(car("a", "f1", max_a=32.0, departure_step=2), car("b", "f1", phases=(2,))),
        steps=4,
        step_s=900,
        loads=(Load("pump", "f1", ((0.0,) * 4, (8.0,) * 4, (0.0,) * 4)),),
    )
    a = checked(p)
    # a (least laxity) is held by grid L2: 30 - 8 (pump) = 22 A. b then gets what 20 kW
    # (86.96 A summed over phases) leaves: 86.96 - 8 - 3 × 22 = 12.96 A.
    assert a.dispatch_a == pytest.approx({"a": 22.0, "b": 20000 / 230 - 8.0 - 66.0})


def test_overloaded_node_gets_zero_and_zero_sessions_work():
    p = one_circuit([car("a"), car("b", phases=(1,))], load_a=(50.0, 0.0, 0.0))
    assert checked(p).dispatch_a == {"a": 0.0, "b": 16.0}
    assert checked(one_circuit([])).dispatch_a == {}


def test_tiny_need_gets_the_minimum_on_step_zero():
    a = checked(one_circuit([car("a", energy_kwh=0.2)]), horizon=True)
    assert a.dispatch_a == {"a": 6.0} and not a.plan_a[0, 1:].any()


def test_fallback_and_verify_load_without_a_solver():
    # They must answer when HiGHS cannot be loaded, so they must not import it.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys; import optimizer.fallback, optimizer.verify, optimizer.grid; "
        "sys.exit('highspy' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, check=False).returncode == 0
