"""Non-uniform time grids: fine steps near now, coarse ones later.

A 24 h horizon at 5 min is 288 steps; only the first hours need that resolution, because the
plan is re-solved every few seconds and only step 0 is dispatched. :class:`TimeGrid` merges the
fine steps of a :class:`~optimizer.problem.Problem` into blocks (e.g. 24 × 5 min, 12 × 15 min,
then hours: 55 steps instead of 288) and maps a coarse plan back onto the fine steps.

The coarse problem is conservative, so its plan, expanded, is feasible on the fine grid:
a block's non-EV load is the largest of its fine steps, and a session may use a block only if
the whole block lies inside its window. Prices are averaged over the block (weighted by
duration). What it costs: a car leaving in the middle of a coarse block loses that block's
tail from the plan — the receding horizon gives it back as the block comes closer.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation
from optimizer.problem import Load, Problem, Session

__all__ = ["TimeGrid"]


@dataclass(frozen=True, slots=True)
class TimeGrid:
    """How many fine steps each coarse step spans.

    Args:
        blocks: Fine steps per coarse step, in order; they sum to the fine horizon.

    Raises:
        ValueError: An empty grid or a block below 1.
    """

    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        blocks = tuple(int(b) for b in self.blocks)
        if not blocks or min(blocks) < 1:
            raise ValueError(f"blocks: need at least one block, each >= 1, got {self.blocks!r}")
        object.__setattr__(self, "blocks", blocks)

    @classmethod
    def tiered(cls, steps: int, tiers: Sequence[tuple[int, int]]) -> TimeGrid:
        """Build a grid from ``(count, size)`` tiers; the last size repeats to the horizon.

        ``TimeGrid.tiered(288, [(24, 1), (12, 3), (1, 12)])`` keeps 2 h at 5 min, then 3 h at
        15 min, then hours (the last block may be shorter): 55 coarse steps.

        Args:
            steps: Fine horizon.
            tiers: ``(count, size)`` pairs.

        Returns:
            The grid covering exactly ``steps`` fine steps.
        """
        blocks: list[int] = []
        covered = 0
        for count, size in tiers:
            for _ in range(count):
                if covered >= steps:
                    break
                blocks.append(min(size, steps - covered))
                covered += blocks[-1]
        size = tiers[-1][1]
        while covered < steps:
            blocks.append(min(size, steps - covered))
            covered += blocks[-1]
        return cls(tuple(blocks))

    @property
    def fine_steps(self) -> int:
        """Length of the fine horizon."""
        return sum(self.blocks)

    def _starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.blocks)))

    def coarsen(self, problem: Problem) -> Problem:
        """The conservative coarse version of a fine ``problem``.

        Raises:
            ValueError: The grid does not cover exactly ``problem.steps``.
        """
        if self.fine_steps != problem.steps:
            raise ValueError(f"blocks: cover {self.fine_steps} steps, problem has {problem.steps}")
        edges = self._starts()
        n = len(self.blocks)
        durations = problem.durations_s
        step_s = tuple(float(durations[a:b].sum()) for a, b in itertools.pairwise(edges))
        loads = tuple(
            Load(
                id=load.id,
                node=load.node,
                current_a=tuple(
                    tuple(max(row[a:b]) for a, b in itertools.pairwise(edges))
                    for row in load.current_a
                ),  # type: ignore[arg-type]
            )
            for load in problem.loads
        )
        prices = ()
        if problem.tariff.price_per_kwh:
            fine = problem.prices * durations
            prices = tuple(
                float(fine[a:b].sum() / durations[a:b].sum()) for a, b in itertools.pairwise(edges)
            )
        sessions = tuple(self._session(s, edges, n, problem.steps) for s in problem.sessions)
        return dataclasses.replace(
            problem,
            sessions=sessions,
            steps=n,
            step_s=step_s,
            loads=loads,
            tariff=dataclasses.replace(problem.tariff, price_per_kwh=prices),
        )

    @staticmethod
    def _session(s: Session, edges: np.ndarray, n: int, fine_steps: int) -> Session:
        # A block is usable only if it starts at or after arrival and ends by departure.
        arrival = int(np.searchsorted(edges[:-1], s.arrival_step, side="left"))
        if s.departure_step > fine_steps:
            departure = n + (s.departure_step - fine_steps)  # still beyond the horizon
        elif s.departure_step <= 0:
            departure = s.departure_step
        else:
            departure = int(np.searchsorted(edges[1:], s.departure_step, side="right"))
        return dataclasses.replace(s, arrival_step=arrival, departure_step=departure)

    def expand(self, plan: np.ndarray) -> np.ndarray:
        """Repeat each coarse step's current over its fine steps: ``(S, n) -> (S, fine)``."""
        return np.repeat(np.asarray(plan, dtype=float), self.blocks, axis=1)

    def expand_allocation(self, allocation: Allocation) -> Allocation:
        """The same allocation on the fine grid (dispatch and energy unchanged)."""
        return dataclasses.replace(allocation, plan_a=self.expand(allocation.plan_a))
