"""What a simulated run recorded: loads against limits, every visit, every control cycle.

Plain data with numpy arrays; `sitectl.whatif.report` turns it into numbers and words.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from sitectl.whatif.timetable import Visit

__all__ = ["SHORT_KWH", "SHORT_SHARE", "CycleNote", "Recording", "VisitRecord"]

#: A departure is short by at least this much (kWh, and share of its need), as the plan
#: alarm counts (`sitectl.control.plans`): below it, a 6 A rounding would count on its own.
SHORT_KWH = 0.5
SHORT_SHARE = 0.01


@dataclass
class VisitRecord:
    """One stay: where it charged, what it got, when it was ready."""

    visit: Visit
    need_kwh: float
    battery_kwh: float
    arrival_soc: float
    bay: str | None = None  # "charger/connector"; None: it never got one
    plugged_at: datetime | None = None
    left_at: datetime | None = None  # None: still there at the end of the run
    energy_kwh: float = 0.0
    ready_at: datetime | None = None  # when its need was reached
    soc_end: float | None = None
    #: (step index, SoC %, kW into the vehicle) every step it was plugged in.
    trace: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def shortfall_kwh(self) -> float:
        return max(0.0, self.need_kwh - self.energy_kwh)

    @property
    def departed(self) -> bool:
        """It left within the run (its departure is judged)."""
        return self.left_at is not None

    @property
    def tolerance_kwh(self) -> float:
        """A gap below this is no shortfall: the plan alarm's measure (0.5 kWh, 1 %)."""
        return max(SHORT_KWH, SHORT_SHARE * self.need_kwh)

    @property
    def short(self) -> bool:
        """Short at its departure (by `tolerance_kwh` or more)."""
        return self.departed and self.shortfall_kwh >= self.tolerance_kwh


@dataclass(frozen=True, slots=True)
class CycleNote:
    """One control cycle: when, why, how it was solved, what held the sessions back."""

    at: datetime
    reason: str
    method: str  # lp | fallback
    solve_s: float
    sessions: int
    #: (node, kind, phase or None) of every circuit limit that held a session on step 0.
    binding: tuple[tuple[str, str, int | None], ...]
    commanded_over_a: float  # the most any node's commanded limits and loads exceed it by


@dataclass
class Recording:
    """Everything a run saw, step by step."""

    start: datetime
    step_s: float
    nodes: list[str]
    limits_a: np.ndarray  # nodes x 3
    kw_limits: list[float | None]  # per node
    currents: np.ndarray  # steps x nodes x 3: mean A per site phase over each step
    building_kw: np.ndarray  # steps: the non-EV load of the whole site
    ev_kw: np.ndarray  # steps: what the chargers draw from the grid (AC input)
    grid_kw: np.ndarray  # steps: at the grid connection
    visits: list[VisitRecord] = field(default_factory=list)
    cycles: list[CycleNote] = field(default_factory=list)
    wall_s: float = 0.0
    bays: int = 0
    #: Control cycles by what started them.
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def steps(self) -> int:
        return len(self.grid_kw)
