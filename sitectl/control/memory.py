"""What the control loop remembers of each charger between cycles (plain data, no I/O).

Persisted in part by `sitectl.control.memory_store` (the limits in force, issue #17.6).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["AppliedFinding", "ChargerMemory"]


@dataclass(frozen=True, slots=True)
class AppliedFinding:
    """One check of what a charger applies against the limit sitectl gave it (issue #17).

    Attributes:
        at: when it was checked (wall clock, for the API and alarms).
        source: the evidence: "composite" (GetCompositeSchedule) or "offered" (Current.Offered).
        sent_a: sitectl's limit at the time (A per phase; a DC charger's AC input).
        applied_a: what the charger says it applies; ``None``: no limit at all.
        verdict: "ok", "above" (more than sent), "below" (less), "unanswered", "unsupported".
    """

    at: datetime
    source: str
    sent_a: float | None
    applied_a: float | None
    verdict: str

    def as_dict(self) -> dict[str, object]:
        """Plain data (API)."""
        return {
            "at": self.at.isoformat(),
            "source": self.source,
            "sent_a": self.sent_a,
            "applied_a": self.applied_a,
            "verdict": self.verdict,
        }


@dataclass
class ChargerMemory:
    """What the control loop remembers of one charger between cycles."""

    commanded_a: float | None = None  # the dynamic limit the charger last accepted
    commanded_at: float | None = None  # monotonic time it was last accepted (or refreshed)
    #: Per connector, the shares last accepted (chargers with several connectors).
    commanded_connectors: dict[int, float] = field(default_factory=dict)
    #: (monotonic time, limit) of every accepted change, oldest first (compliance window).
    limit_history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=512))
    disconnected_at: float | None = None
    uncontrollable: bool = False
    noncompliant: bool = False
    #: Installing firmware without a session: sitectl sends it no limit and budgets its draw.
    unavailable: bool = False
    over_limit_since: float | None = None
    paused_since: dict[int, float] = field(default_factory=dict)  # connector -> monotonic
    #: Connector -> since when it is in use without a known transaction (monotonic).
    unmatched_since: dict[int, float] = field(default_factory=dict)
    resumed_at: dict[int, float] = field(default_factory=dict)
    failsafe_installed: bool = False
    #: The charger took sitectl's fail-safe at some point (it keeps it across reconnects).
    failsafe_ever: bool = False
    #: Fail-safe installs that failed in a row, and when the next may be tried (monotonic).
    failsafe_failures: int = 0
    failsafe_retry_at: float = 0.0
    connected_at: float | None = None  # monotonic time of its current connection
    #: What the vehicle on a single-connector charger has shown it can draw (see `learn_ev`).
    ev_session: str | None = None
    ev_peak_a: float = 0.0
    ev_cap_a: float | None = None
    ev_unused_since: float | None = None
    #: The closed-loop check (`sitectl.control.applied`): its last finding; the limit the
    #: charger applies when that is above sitectl's (budgeted at it); the lower limit it
    #: applies and until when it is planned with (monotonic); whether it was seen to ignore
    #: sitectl's dynamic stack level (its limits then go out as one profile, `Dispatcher`).
    applied: AppliedFinding | None = None
    applied_above_a: float | None = None
    applied_below_a: float | None = None
    applied_below_until: float = 0.0
    dynamic_level_ignored: bool = False

    def learn_ev(
        self,
        session_id: str,
        draw_a: float,
        now: float,
        learn_s: float,
        charger_max_a: float,
        min_a: float,
    ) -> None:
        """Learn a vehicle's own maximum current from what it draws (OCPP 1.6 never says).

        A vehicle that draws at least 4 A less than its limit for `learn_s` is capped at its
        peak plus 2 A, so the rest of the budget goes to others; when it comes within 1 A of
        that cap the cap rises by 4 A, so a vehicle that can take more is never held back
        for long. Lowering one session's maximum is always safe.
        """
        if session_id != self.ev_session:
            self.ev_session, self.ev_peak_a, self.ev_cap_a = session_id, 0.0, None
            self.ev_unused_since = None
        self.ev_peak_a = max(self.ev_peak_a, draw_a)
        if self.ev_cap_a is not None and draw_a >= self.ev_cap_a - 1.0:
            self.ev_cap_a = self.ev_cap_a + 4.0 if self.ev_cap_a + 4.0 < charger_max_a else None
            self.ev_unused_since = None
            return
        limit = self.commanded_a
        if learn_s <= 0 or limit is None or limit - draw_a < 4.0:
            self.ev_unused_since = None
            return
        if self.ev_unused_since is None:
            self.ev_unused_since = now
        elif now - self.ev_unused_since >= learn_s:
            cap = max(min_a, math.ceil(self.ev_peak_a + 2.0))
            if self.ev_cap_a is None or cap < self.ev_cap_a:
                self.ev_cap_a = float(cap)

    def applied_cap_a(self, now: float) -> float | None:
        """The lower limit the charger was found to apply, while it is still believed."""
        if self.applied_below_a is None or now >= self.applied_below_until:
            return None
        return self.applied_below_a

    def record_limit(self, amps: float, now: float) -> None:
        """A limit the charger accepted (a refresh of the same value adds nothing)."""
        if self.commanded_a != amps or not self.limit_history:
            self.limit_history.append((now, amps))
        self.commanded_a = amps
        self.commanded_at = now

    def highest_limit_since(self, start: float) -> float:
        """The highest limit in force at any time since `start` (monotonic)."""
        # The history is in time order (`record_limit` appends): walk back from the newest
        # to the one in force when the window began, not over all 512 (asked per charger
        # several times a cycle).
        highest: float | None = None
        for at, amps in reversed(self.limit_history):
            highest = amps if highest is None else max(highest, amps)
            if at < start:
                break
        if highest is None and self.commanded_a is not None:
            highest = self.commanded_a
        return 0.0 if highest is None else highest
