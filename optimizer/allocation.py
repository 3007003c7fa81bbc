"""The answer: what each session gets now, and the plan for the rest of the horizon."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from optimizer.binding import Binding

__all__ = ["Allocation", "Status"]


class Status(enum.StrEnum):
    """How an allocation came about.

    ``OPTIMAL`` is the only status under which the LP's numbers are used; every other status
    carries the fallback heuristic's answer (``method == "fallback"``) and says why.
    """

    #: The LP solved to optimality (step 0 then passed through the 6 A rounding).
    OPTIMAL = "optimal"
    #: The LP ran out of its time budget; the fallback answered.
    TIME_LIMIT = "time_limit"
    #: HiGHS reported something other than optimal, or raised; the fallback answered.
    SOLVER_ERROR = "solver_error"
    #: The LP's answer failed :func:`optimizer.verify.verify`; the fallback answered.
    VERIFY_FAILED = "verify_failed"
    #: The fallback heuristic was asked for directly.
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True, eq=False)
class Allocation:
    """Currents for every session: the dispatch (step 0) and the plan.

    Args:
        dispatch_a: Current per phase (A) for step 0, by session id; every session of the
            problem has an entry, 0 or within ``[min_a, max_a]``. This is what gets sent.
        plan_a: Planned current per phase (A), shape ``(len(problem.sessions), problem.steps)``,
            rows in the order of ``problem.sessions``; row ``k`` column 0 equals the dispatch.
        energy_kwh: Energy planned per session over the horizon (kWh), by session id.
        status: Why this answer (see :class:`Status`).
        method: ``"lp"`` or ``"fallback"``.
        objective: The LP optimum before the 6 A rule (currency units, see :mod:`optimizer`);
            NaN for the fallback.
        solve_s: Wall time spent producing it (s), model update and rounding included.
        paused: Sessions the LP wanted at ``0 < i < min_a`` on step 0 and the 6 A rule paused.
        detail: Free text for logs: the solver's status, the first violation, an exception.
        binding: Why each held session's step-0 current is what it is (`optimizer.binding`);
            the LP fills it with its duals, ``None`` elsewhere (`step0_binding` computes it
            for any allocation).
    """

    dispatch_a: Mapping[str, float]
    plan_a: np.ndarray
    energy_kwh: Mapping[str, float]
    status: Status
    method: str
    objective: float = float("nan")
    solve_s: float = 0.0
    paused: tuple[str, ...] = ()
    detail: str = ""
    binding: Binding | None = None

    @property
    def total_energy_kwh(self) -> float:
        """Energy planned over the horizon, all sessions (kWh)."""
        return float(sum(self.energy_kwh.values()))
