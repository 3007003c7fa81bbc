"""How fast each charger really follows a lower limit: its step response, measured (issue #17).

The capability probe reads what a charger declares; this measures what it does. Every decrease
sitectl sends is a step: the charger's draw was above the new limit, and the next measurements
say how long it took to come down. A report still above the new limit ``t`` seconds after the
change proves a ramp-down of *at least* ``t`` (a lower bound); the first report at or below it
proves *at most* ``t`` (an upper bound — reports come every few seconds, so this one is coarse).

Used the safe way round: the problem builder holds a lowered charger's previous limit for
``control.ramp_down_s`` (the headroom it frees is not given away before it is freed); a charger
*proven* slower than that (the median lower bound of its last steps) is held for its own time.
A charger faster than the setting changes nothing (the upper bounds are shown, never used to
shorten the hold). Shown per charger in the API (``ChargerState.step_response``).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sitectl.control.draw import Draw
from sitectl.control.memory import ChargerMemory
from sitectl.state import SiteState

__all__ = ["MIN_STEP_A", "StepResponse", "StepResponses"]

#: A decrease smaller than this is not a step worth timing (noise, rounding).
MIN_STEP_A = 3.0
#: A draw within this of the new limit has come down.
SETTLED_A = 1.0
#: Steps kept per charger; the median of the lower bounds needs at least `MIN_STEPS`.
KEPT = 8
MIN_STEPS = 2
#: A step still open after this long is abandoned (the vehicle may have stopped reporting).
GIVE_UP_S = 120.0


@dataclass(slots=True)
class _Open:
    changed_at: float  # monotonic time of the decrease
    limit_a: float
    at_least_s: float = 0.0


@dataclass(slots=True)
class StepResponse:
    """One charger's measured ramp-downs: bounds per step (s), newest last."""

    at_least_s: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))
    at_most_s: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))
    open: _Open | None = None
    seen_change: float | None = None  # the limit change last looked at

    def proven_slower_s(self) -> float | None:
        """The median lower bound once there are enough steps, else None."""
        if len(self.at_least_s) < MIN_STEPS:
            return None
        return statistics.median(self.at_least_s)

    def view(self) -> dict[str, float | int | None]:
        """Plain data for the API."""
        return {
            "steps": len(self.at_most_s),
            "ramp_down_s_at_least": self.proven_slower_s(),
            "ramp_down_s_at_most": (statistics.median(self.at_most_s) if self.at_most_s else None),
        }


class StepResponses:
    """Times every charger's ramp-downs from the limits sent and the draws measured."""

    def __init__(self, state: SiteState, memory: Mapping[str, ChargerMemory]) -> None:
        self.state = state
        self.memory = memory
        self.by_charger: dict[str, StepResponse] = {}

    def hold_s(self, charger_id: str, configured_s: float) -> float:
        """How long a lowered charger's previous limit is held: the setting, or longer."""
        response = self.by_charger.get(charger_id)
        slower = response.proven_slower_s() if response is not None else None
        return configured_s if slower is None else max(configured_s, slower)

    def observe(self, draws: Mapping[str, Mapping[int, Draw]], now_mono: float) -> None:
        """Look at this cycle's draws (call once per cycle, before the problem is built)."""
        for charger_id, charger in self.state.chargers.items():
            mem = self.memory.get(charger_id)
            if mem is None or not charger.connected or not mem.limit_history:
                continue
            response = self.by_charger.setdefault(charger_id, StepResponse())
            found = draws.get(charger_id) or {}
            # The best estimate on its most loaded phase, summed over its connectors.
            draw = max(sum(d.est[k] for d in found.values()) for k in range(3)) if found else None
            stamps = [
                max(s for s in (c.current_mono, c.power_mono) if s is not None)
                for c in charger.connectors.values()
                if c.current_mono is not None or c.power_mono is not None
            ]
            stamp = max(stamps, default=None)
            changed_at, limit = mem.limit_history[-1]
            if response.seen_change != changed_at:
                response.seen_change = changed_at
                previous = mem.limit_history[-2][1] if len(mem.limit_history) > 1 else None
                # A small correction or a raise while it comes down is the same step (a
                # report above its target still proves the time; settled is judged against
                # the higher of the two); a further real decrease starts a new one.
                step = response.open
                if step is None or limit <= step.limit_a - MIN_STEP_A:
                    response.open = None
                if response.open is None and (
                    previous is not None
                    and previous - limit >= MIN_STEP_A
                    and draw is not None
                    and draw > limit + MIN_STEP_A
                ):
                    response.open = _Open(changed_at, limit)
            step = response.open
            if step is None or draw is None or stamp is None or stamp <= step.changed_at:
                if step is not None and now_mono - step.changed_at > GIVE_UP_S:
                    response.open = None
                continue
            elapsed = stamp - step.changed_at
            if draw > max(step.limit_a, limit) + SETTLED_A:
                step.at_least_s = max(step.at_least_s, elapsed)
                if elapsed > GIVE_UP_S:
                    response.open = None
                continue
            response.at_least_s.append(step.at_least_s)
            response.at_most_s.append(elapsed)
            response.open = None
            charger.step_response = response.view()
