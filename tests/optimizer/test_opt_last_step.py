"""A car leaving part-way through its last step (`Session.last_step_share`, issue #18): every
part of the optimizer gives it that share of the step, never more, and never on step 0."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optimizer.fallback import allocate
from optimizer.lp import solve
from optimizer.reference import max_energy
from optimizer.verify import Kind, verify
from tests.optimizer.cases import car, energy_of, one_circuit
from tests.optimizer.test_opt_verify import alloc, kinds

# An hour-long far step after two 15-min steps; the car leaves 15 min into the hour.
STEPS_S = (900.0, 900.0, 3600.0)


def leaving(share: float = 0.25, departure_step: int = 3, **kw):
    session = car("a", max_a=16.0, energy_kwh=500.0, departure_step=departure_step, **kw)
    return dataclasses.replace(session, last_step_share=share)


def problem(session, **kw):
    p = one_circuit([session], steps=3, **kw)
    return dataclasses.replace(p, step_s=STEPS_S)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused(share):
    with pytest.raises(ValueError, match="last_step_share"):
        leaving(share)


def test_caps_scale_the_last_step_only_and_never_step_0():
    caps = problem(leaving(0.25)).session_caps_a()
    assert caps.tolist() == [[16.0, 16.0, 4.0]]
    # Leaving within step 0: step 0 is dispatched as is, the caller scales the need instead.
    caps = problem(leaving(0.25, departure_step=1)).session_caps_a()
    assert caps.tolist() == [[16.0, 0.0, 0.0]]


def test_lp_reference_and_fallback_give_the_last_step_its_share():
    p = problem(leaving(0.25))
    # 15 min at 16 A on three phases in the hour-long step: the energy of 4 A for the hour.
    want = energy_of(p, np.array([[16.0, 16.0, 4.0]]))[0]
    lp = solve(p, budget_s=10.0)
    assert verify(p, lp) == []
    assert lp.plan_a[0].tolist() == pytest.approx([16.0, 16.0, 4.0])
    assert energy_of(p, lp.plan_a)[0] == pytest.approx(want)
    fb = allocate(p, horizon=True)
    assert verify(p, fb) == []
    assert fb.plan_a[0, 2] == pytest.approx(4.0)
    best, plan = max_energy(p)
    assert plan[0, 2] == pytest.approx(4.0)
    assert best == pytest.approx(want)


def test_verify_flags_more_than_the_share():
    p = problem(leaving(0.25))
    violations = verify(p, alloc(p, [[16.0, 16.0, 5.0]]))
    assert kinds(violations) == [Kind.SESSION_MAX]
    assert violations[0].step == 2 and violations[0].amount == pytest.approx(1.0)
