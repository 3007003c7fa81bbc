"""Phase detection from unbalanced steps: the meter tells where a charger phase really is."""

from __future__ import annotations

from sitectl.config import GRID
from sitectl.control.phases import VOTES_TO_DECIDE, PhaseWatch
from tests.control.test_snapshot import config


def steps(watch: PhaseWatch, a_l1: list[float], meter: list[tuple[float, float, float]]):
    """Feed cycles: charger A draws a_l1[i] on its L1; the grid meter reads meter[i]."""
    found = []
    for amps, reading in zip(a_l1, meter, strict=True):
        found += watch.observe({"A": (amps, 0.0, 0.0), "B": (10.0, 10.0, 10.0)}, {GRID: reading})
    return found


def test_a_miswired_charger_is_found_after_agreeing_steps() -> None:
    watch = PhaseWatch(config())  # A is configured L1-L2-L3
    # A's L1 goes 0, 16, 0, 16: the meter's L2 follows (A is really wired L2-L3-L1).
    draws = [0.0, 16.0, 0.0, 16.0, 0.0, 16.0]
    meter = [(30.0, 30.0 + d, 30.0) for d in draws]
    found = steps(watch, draws, meter)
    assert len(found) == 1
    (finding,) = found
    assert finding.charger_id == "A" and finding.observed == {0: 1} and not finding.matches
    assert finding.describe() == "draws with its L1 on L2, but is configured L1-L2-L3"


def test_a_correctly_wired_charger_is_confirmed() -> None:
    watch = PhaseWatch(config())
    draws = [0.0, 16.0] * VOTES_TO_DECIDE
    found = steps(watch, draws, [(30.0 + d, 30.0, 30.0) for d in draws])
    assert [f.matches for f in found] == [True]


def test_balanced_small_or_crowded_steps_are_no_evidence() -> None:
    watch = PhaseWatch(config())
    # Balanced steps of A: rotation cannot be seen.
    for amps in (0.0, 16.0, 0.0, 16.0, 0.0, 16.0, 0.0):
        assert watch.observe({"A": (amps,) * 3}, {GRID: (30.0 + amps,) * 3}) == []
    # A and B both stepping: which one moved the meter?
    for amps in (0.0, 16.0, 0.0, 16.0, 0.0, 16.0, 0.0):
        assert (
            watch.observe(
                {"A": (amps, 0.0, 0.0), "B": (amps, 0.0, 0.0)},
                {GRID: (30.0, 30.0 + 2 * amps, 30.0)},
            )
            == []
        )
    # The building moved on another phase in the same cycle.
    for amps in (0.0, 16.0, 0.0, 16.0, 0.0, 16.0, 0.0):
        assert (
            watch.observe({"A": (amps, 0.0, 0.0)}, {GRID: (30.0 + amps, 30.0 + amps, 30.0)}) == []
        )
