"""Each session's plan in the operator's terms: power per step, when it is ready, how short.

The LP plans every session over the whole horizon each cycle (`Allocation.plan_a`); only step 0
is dispatched. This module reads the rest of that plan (issue #19.1):

- **Energy is counted as the LP counts it**: ``current · phases · Problem.voltage_ln_v · Δt``
  per step, the floor of a connector without a known transaction added. For a DC charger that
  is its AC input (the snapshot asks the LP for the remaining need divided by the charger's
  efficiency, and so does the forecast), so the prediction says what the plan will do, in the
  terms in which it decides; a DC shortfall is at the input too (more than at the vehicle).
- **A step's current is its mean over the step**: a car leaving part-way through a step
  (`Session.last_step_share`) gets that energy in the part it is still there, at
  ``current / share``; on step 0 (dispatched as is) it gets the current until it leaves.
  Within a step energy grows linearly, so the ready time is interpolated there.
- **Ready** is when the planned energy reaches the stated need less what was delivered
  (within `READY_TOL_KWH`). No minimum target exists yet (issue #19's vehicles bring one), so
  the need is the target. A session whose need is not stated (not ``capped``) charges until
  the vehicle stops: it has planned energy, but no ready time and no shortfall.
- **Short**: the need less what is planned to the departure. ``late_min`` is how much longer
  it would take at its planned rate on its last step; if the plan gives it nothing there, at
  its maximum (``late_rate`` says which).
- The fallback plans step 0 only: no prediction then (``no_plan``), and the alarm holds; so
  it does while a paused session sits out its minimum pause (``held``: the LP is asked for
  nothing for it then).

`PlanWatch` attaches the forecasts to ``SiteState.control.sessions`` every cycle and keeps the
``departure_short`` alarm: raised after `ALARM_AFTER_CYCLES` cycles in a row short by at least
`ALARM_MIN_KWH` and `ALARM_MIN_SHARE` of the need, cleared after as many cycles below half
of both (or at once when the session ends): a plan flickering around the threshold does not
flap the alarm. The shortfall it judges is the lesser of the plan's and of the same plan with
each later step shared among equals as step 0 is (`_share_among_equals`): under a full limit
the LP's split among vehicles of equal worth is arbitrary, and only a vehicle short either way
is named (bench/bus_depot.py: false alarms from 21 of 29 buses to 5, DC taper aside).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from optimizer.allocation import Allocation
from optimizer.problem import Problem
from sitectl.control.snapshot import efficiency
from sitectl.state import PlanForecast, PlanStep, Severity, SiteState

__all__ = [
    "ALARM_AFTER_CYCLES",
    "ALARM_MIN_KWH",
    "ALARM_MIN_SHARE",
    "READY_TOL_KWH",
    "Need",
    "PlanWatch",
    "forecast",
    "shared_shortfalls",
]

#: Planned energy this close to the need counts as meeting it (kWh): the LP meets an energy
#: row to its solver tolerance, far below this.
READY_TOL_KWH = 0.05
#: A shortfall alarms from this size, absolute and as a share of the need: below it a 6 A
#: rounding of step 0 (6 A · 3 · 230 V · 5 min ≈ 0.35 kWh) would alarm on its own.
ALARM_MIN_KWH = 0.5
ALARM_MIN_SHARE = 0.01
#: Cycles in a row a plan must be short (or recovered) before the alarm is raised (cleared).
ALARM_AFTER_CYCLES = 3
ALARM_CODE = "departure_short"
#: Energy a group's equal sharing leaves unused is given back from this much (kWh).
SHARE_LOSS_KWH = 0.05

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Need:
    """What the plan of one session is judged against.

    Args:
        departure: when the vehicle leaves (UTC).
        remaining_kwh: the stated need less what was delivered; ``None`` when no need is
            stated (it charges until the vehicle stops).
        floor_a: a current reserved below the LP's share (`Built.floors`), on every step.
    """

    departure: datetime
    remaining_kwh: float | None
    floor_a: float = 0.0


def forecast(
    problem: Problem,
    allocation: Allocation,
    now: datetime,
    needs: Mapping[str, Need],
    share_equals: bool = False,
) -> dict[str, PlanForecast]:
    """Every session's plan as power per step with its ready time and shortfall.

    Args:
        problem: the cycle's problem (sessions, step lengths, voltage).
        allocation: its answer; ``plan_a`` rows in the order of ``problem.sessions``.
        now: the start of step 0 (UTC).
        needs: by session id; a session without an entry is left out.

    Returns:
        By session id, for every session of the problem that has a `Need`.
    """
    durations = problem.durations_s
    starts_s = np.concatenate(([0.0], np.cumsum(durations)[:-1]))
    horizon_end = now + timedelta(seconds=float(durations.sum()))
    step_starts = [now + timedelta(seconds=float(x)) for x in starts_s]
    durations_list = durations.tolist()
    out: dict[str, PlanForecast] = {}
    found = _planned(problem, allocation, now, needs, share_equals)
    if found is None:
        return out
    rows, chosen, kw_per_a_all, amps_all, present_all, energy_all = found
    planned_all = energy_all.sum(axis=1).tolist()
    amps_rows = amps_all.tolist()
    kw_rows = (amps_all * kw_per_a_all[:, None]).tolist()
    for j, k in enumerate(rows):
        session = problem.sessions[k]
        need = chosen[j]
        nph = len(session.phases)
        kw_per_a = float(kw_per_a_all[j])
        amps = amps_all[j]
        steps = tuple(map(PlanStep, step_starts, durations_list, amps_rows[j], kw_rows[j]))
        present_s = present_all[j]
        energy = energy_all[j]
        planned = planned_all[j]
        common = dict(phases=nph, steps=steps, planned_kwh=planned)
        if allocation.method == "fallback":
            out[session.id] = PlanForecast(
                "no_plan",
                "the fallback answered this cycle: it plans the first step only",
                remaining_kwh=need.remaining_kwh,
                **common,
            )
            continue
        if need.remaining_kwh is None:
            out[session.id] = PlanForecast(
                "need_unknown",
                "no stated need: it charges until the vehicle stops",
                remaining_kwh=None,
                **common,
            )
            continue
        remaining = need.remaining_kwh
        if session.energy_kwh <= 0 and remaining > READY_TOL_KWH:
            # The LP was asked for nothing this cycle (a pause held for its minimum dwell):
            # its zeros are not a prediction, and the alarm must not count them.
            out[session.id] = PlanForecast(
                "held",
                "held paused for its minimum pause: planned again when that ends",
                remaining_kwh=remaining,
                **common,
            )
            continue
        ready_at = _reached(now, starts_s, present_s, energy, remaining - READY_TOL_KWH)
        if ready_at is not None:
            out[session.id] = PlanForecast(
                "on_time",
                "the plan reaches its need before it leaves",
                remaining_kwh=remaining,
                ready_at=ready_at,
                shortfall_kwh=0.0,
                **common,
            )
            continue
        if need.departure > horizon_end:
            out[session.id] = PlanForecast(
                "beyond_horizon",
                "it leaves after the end of the plan, which does not reach its need",
                remaining_kwh=remaining,
                **common,
            )
            continue
        shortfall = max(0.0, remaining - planned)
        # Its rate on the last step it is there (the mean current over the part it is there);
        # a car still plugged in after its departure is charged on step 0 (the LP's window).
        there = np.flatnonzero(present_s > 0)
        if there.size:
            last = int(there[-1])
            rate_kw = float(energy[last] * 3600.0 / present_s[last])
        else:
            rate_kw = float(amps[0] * kw_per_a) if problem.steps else 0.0
        late_rate: str | None = "planned"
        if rate_kw <= 1e-6:
            # The plan gives it nothing at the end (held back, or leaving at once): the least
            # time it needs is at its maximum.
            rate_kw, late_rate = (session.max_a + need.floor_a) * kw_per_a, "maximum"
        ready_at = late_min = None
        if rate_kw > 1e-6:
            ready_at = max(need.departure, now) + timedelta(hours=shortfall / rate_kw)
            late_min = (ready_at - need.departure).total_seconds() / 60.0
        else:
            late_rate = None  # blocked: it gets nothing at any rate
        out[session.id] = PlanForecast(
            "short",
            f"the plan leaves it {shortfall:.1f} kWh short at its departure",
            remaining_kwh=remaining,
            ready_at=ready_at,
            shortfall_kwh=shortfall,
            late_min=late_min,
            late_rate=late_rate,
            **common,
        )
    return out


def _planned(
    problem: Problem,
    allocation: Allocation,
    now: datetime,
    needs: Mapping[str, Need],
    share_equals: bool,
    only: frozenset[str] | None = None,
) -> tuple[list[int], list[Need], np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per session with a need (rows of the problem): its Need, kW per A, current, seconds
    there and energy per step; ``None`` when no session has a need."""
    rows = [k for k, session in enumerate(problem.sessions) if session.id in needs]
    if not rows:
        return None
    durations = problem.durations_s
    starts_s = np.concatenate(([0.0], np.cumsum(durations)[:-1]))
    plan = np.asarray(allocation.plan_a, dtype=float).reshape(len(problem.sessions), problem.steps)
    # Every session at once (the same arithmetic, element by element, as one at a time):
    # per session, the current and energy per step and the seconds it is there to take it.
    chosen = [needs[problem.sessions[k].id] for k in rows]
    nph_all = np.array([len(problem.sessions[k].phases) for k in rows], dtype=float)
    kw_per_a_all = nph_all * problem.voltage_ln_v / 1000.0
    amps_all = plan[rows] + np.array([n.floor_a for n in chosen])[:, None]
    left_all = np.array([(n.departure - now).total_seconds() for n in chosen])
    present_all = np.clip(left_all[:, None] - starts_s[None, :], 0.0, durations[None, :])
    if share_equals and allocation.method != "fallback" and problem.steps > 1:
        amps_all = _share_among_equals(
            problem, rows, chosen, amps_all, present_all, durations, kw_per_a_all, only
        )
    energy_all = amps_all * kw_per_a_all[:, None] * durations[None, :] / 3600.0
    if problem.steps:
        first = (left_all > 0) & (left_all < durations[0])
        energy_all[first, 0] = amps_all[first, 0] * kw_per_a_all[first] * left_all[first] / 3600.0
    energy_all = np.where(present_all > 0, energy_all, 0.0)
    return rows, chosen, kw_per_a_all, amps_all, present_all, energy_all


def shared_shortfalls(
    problem: Problem,
    allocation: Allocation,
    now: datetime,
    needs: Mapping[str, Need],
    only: frozenset[str] | None = None,
) -> dict[str, float]:
    """The shortfall at departure (kWh) of every session with a stated need that leaves
    within the plan, with the plan's later steps shared among equals (`_share_among_equals`):
    what the alarm judges beside the plan's own shortfall. 0 where it reaches its need.
    With `only`, the steps are shared in the groups holding one of those sessions only (the
    rest read as planned: the sharing costs ~25 ms a cycle at 1,000 sessions)."""
    found = _planned(problem, allocation, now, needs, True, only)
    if found is None:
        return {}
    rows, chosen, _, _, _, energy_all = found
    horizon_end = now + timedelta(seconds=float(problem.durations_s.sum()))
    planned = energy_all.sum(axis=1)
    out: dict[str, float] = {}
    for j, k in enumerate(rows):
        need = chosen[j]
        if need.remaining_kwh is None or need.departure > horizon_end:
            continue
        short = need.remaining_kwh - float(planned[j])
        out[problem.sessions[k].id] = short if short > READY_TOL_KWH else 0.0
    return out


def _share_among_equals(
    problem: Problem,
    rows: list[int],
    chosen: list[Need],
    amps: np.ndarray,
    present: np.ndarray,
    durations: np.ndarray,
    kw_per_a: np.ndarray,
    only: frozenset[str] | None = None,
) -> np.ndarray:
    """The plan's steps after step 0, each step's current shared among equal sessions as
    step 0 shares it (the split the alarm judges beside the LP's own).

    Sessions of the same priority under the same circuit on the same phases are worth the
    same to the LP on every step but step 0 (its fairness term rewards step-0 currents only),
    so which of them a later step of a full limit serves is whatever vertex the solver found,
    and it moves from cycle to cycle: read alone, the plan names a different vehicle short
    every few cycles (bench/bus_depot.py, no taper: 21 of the 29 buses that left with their
    need were named at some point). Here each group's planned current of each step (so the
    circuit's load and every ancestor's, per phase and in kW, are unchanged) is shared out
    equally up to each session's maximum (times the share of the step it is there) and what
    it still needs; what that leaves unused (the small needs full early, the rest at their
    maximum) goes back to those still short, in steps where they have room.
    """
    out = amps.copy()
    parents = {node.id: node.parent for node in problem.nodes}
    groups: dict[tuple, list[int]] = {}
    for j, k in enumerate(rows):
        if chosen[j].remaining_kwh is None:
            continue  # no stated need: it keeps its planned current
        session = problem.sessions[k]
        parent = parents.get(session.node)
        groups.setdefault((parent, session.phases, session.priority), []).append(j)
    groups = {
        key: members
        for key, members in groups.items()
        if len(members) > 1
        and (only is None or any(problem.sessions[rows[j]].id in only for j in members))
    }
    if not groups:
        return out
    remaining = np.array([c.remaining_kwh or 0.0 for c in chosen])
    remaining -= out[:, 0] * kw_per_a * durations[0] / 3600.0 * (present[:, 0] > 0)
    top = np.array(
        [problem.sessions[k].max_a + chosen[j].floor_a for j, k in enumerate(rows)], dtype=float
    )
    for members in groups.values():
        idx = np.array(members)
        left = remaining[idx].copy()
        before = out[idx].copy()
        for t in range(1, problem.steps):
            there = present[idx, t] > 0
            total = float(out[idx, t].sum())
            if total <= 0 or not there.any():
                continue
            per_a = kw_per_a[idx] * durations[t] / 3600.0  # kWh per mean A over the step
            caps = np.where(
                there,
                np.minimum(
                    top[idx] * present[idx, t] / durations[t], np.maximum(left, 0.0) / per_a
                ),
                0.0,
            )
            shared = _water_fill(caps, total)
            out[idx, t] = shared
            left -= shared * per_a
        # Step 0's fairness never costs energy: where sharing a step equally leaves current
        # unused later (the small needs full early, the rest at their maximum), the cycles
        # to come serve those still short earlier instead, as the LP's own split does. Given
        # back to them (equally, up to each one's shortfall, in the steps where it has room
        # below its maximum), the group's planned energy stays the LP's.
        per_kwh = kw_per_a[idx, None] * durations[None, :] / 3600.0 * (present[idx] > 0)
        lost = float(((before - out[idx]) * per_kwh).sum())
        if lost > SHARE_LOSS_KWH:
            short = np.maximum(left, 0.0)
            extra = _water_fill(short, lost)
            room = np.maximum(0.0, top[idx, None] * present[idx] / durations[None, :] - out[idx])
            room[:, 0] = 0.0  # step 0 is dispatched as it is
            room_kwh = room * per_kwh
            for m in np.flatnonzero(extra > 0):
                space = float(room_kwh[m].sum())
                if space <= 0:
                    continue
                out[idx[m]] += room[m] * min(1.0, float(extra[m]) / space)
    return out


def _water_fill(caps: np.ndarray, total: float) -> np.ndarray:
    """Equal shares of `total`, none above its cap (what is left over when all are capped is
    not given)."""
    n = len(caps)
    if n == 0 or total <= 0:
        return np.zeros_like(caps)
    ordered = np.sort(caps)
    given_before = np.concatenate(([0.0], np.cumsum(ordered)[:-1]))
    # The level if the k smallest are capped and the rest share what is left equally.
    levels = (total - given_before) / (n - np.arange(n))
    fits = np.flatnonzero(levels <= ordered)
    if fits.size == 0:
        return caps.copy()  # all capped
    return np.minimum(caps, levels[fits[0]])


def _reached(
    now: datetime,
    starts_s: np.ndarray,
    present_s: np.ndarray,
    energy: np.ndarray,
    target_kwh: float,
) -> datetime | None:
    """When the cumulated energy first reaches `target_kwh`, linear within a step."""
    if target_kwh <= 0:
        return now
    done = 0.0
    for t in range(len(energy)):
        if energy[t] > 0 and done + energy[t] >= target_kwh:
            share = (target_kwh - done) / energy[t]
            return now + timedelta(seconds=float(starts_s[t] + share * present_s[t]))
        done += float(energy[t])
    return None


@dataclass(slots=True)
class _Track:
    """The alarm's hysteresis for one connector."""

    session_id: str
    short_cycles: int = 0
    ok_cycles: int = 0


class PlanWatch:
    """Attaches each cycle's forecasts to the state and raises ``departure_short`` ahead.

    Args:
        state: the site state (``control.sessions`` is updated in place).
        zone: the site's time zone (alarm texts give local times).
        after_cycles: cycles in a row before the alarm is raised or cleared.
    """

    def __init__(
        self, state: SiteState, zone: ZoneInfo, after_cycles: int = ALARM_AFTER_CYCLES
    ) -> None:
        self.state = state
        self._chargers = {c.id: c for c in state.config.chargers}
        self.zone = zone
        self.after_cycles = after_cycles
        self._tracks: dict[str, _Track] = {}
        self._summaries: dict[str, dict[str, object]] = {}

    def update(
        self,
        problem: Problem,
        allocation: Allocation,
        now: datetime,
        sessions: Mapping[str, tuple[str, int]],
        floors: Mapping[str, float],
    ) -> None:
        """Forecast every session of this cycle, attach it, judge the alarm.

        Call after ``state.control.sessions`` holds this cycle's `SessionPlan` per session.
        Never raises: a forecast is for people, and a failing one must not cost the cycle its
        status (it is logged, and the plans stay without a forecast).

        Args:
            problem, allocation, now: the cycle's.
            sessions: session id -> (charger id, connector id) (`Built.sessions`).
            floors: session id -> reserved floor current (`Built.floors`).
        """
        try:
            self._update(problem, allocation, now, sessions, floors)
        except Exception:
            log.exception("plan forecasts failed this cycle")

    def _update(
        self,
        problem: Problem,
        allocation: Allocation,
        now: datetime,
        sessions: Mapping[str, tuple[str, int]],
        floors: Mapping[str, float],
    ) -> None:
        plans = self.state.control.sessions
        needs: dict[str, Need] = {}
        delivered: dict[str, float] = {}
        ids: dict[str, str] = {}
        for key, plan in plans.items():
            charger_id, connector_id = sessions.get(key, (None, None))
            charger = self.state.chargers.get(charger_id or "")
            connector = charger.connectors.get(connector_id or 0) if charger else None
            session = connector.session if connector is not None else None
            delivered[key] = session.energy_wh / 1000 if session is not None else 0.0
            ids[key] = session.session_id if session is not None else ""
            remaining = None
            if plan.capped and plan.need_kwh is not None:
                remaining = max(0.0, plan.need_kwh - delivered[key])
                configured = self._chargers.get(charger_id or "")
                if configured is not None and configured.kind == "dc":
                    remaining /= efficiency(configured)  # at its AC input, as the LP plans
            needs[key] = Need(plan.departure, remaining, floors.get(key, 0.0))
        forecasts = forecast(problem, allocation, now, needs)
        # Only a session short in the plan can be short in both readings.
        short_now = frozenset(
            key
            for key, found in forecasts.items()
            if (found.shortfall_kwh or 0.0) >= ALARM_MIN_KWH / 2
        )
        shared = shared_shortfalls(problem, allocation, now, needs, short_now) if short_now else {}
        for key, found in forecasts.items():
            plans[key] = dataclasses.replace(
                plans[key], forecast=found, delivered_kwh=delivered[key], planned_at=now
            )
            short = min(found.shortfall_kwh or 0.0, shared.get(key, 0.0))
            self._judge(key, ids[key], plans[key].need_kwh, found, plans[key].departure, short)
            summary = found.summary()
            if self._summaries.get(key) != summary:
                self._summaries[key] = summary
                self.state.notify("plan", key)  # the uplink republishes the charger
        for key in [k for k in self._tracks if k not in forecasts]:
            self._end(key)
        for key in [k for k in self._summaries if k not in forecasts]:
            del self._summaries[key]
            self.state.notify("plan", key)

    def _judge(
        self,
        key: str,
        session_id: str,
        need_kwh: float | None,
        found: PlanForecast,
        departure: datetime,
        shortfall: float,
    ) -> None:
        track = self._tracks.get(key)
        if track is not None and track.session_id != session_id:
            self._end(key)  # another session on the connector: start afresh
            track = None
        if track is None:
            track = self._tracks[key] = _Track(session_id)
        if found.status in ("no_plan", "held"):
            return  # no evidence either way this cycle
        need = need_kwh or 0.0
        if shortfall >= ALARM_MIN_KWH and shortfall >= ALARM_MIN_SHARE * need:
            track.short_cycles += 1
            track.ok_cycles = 0
        elif shortfall < ALARM_MIN_KWH / 2 or shortfall < ALARM_MIN_SHARE / 2 * need:
            track.ok_cycles += 1
            track.short_cycles = 0
        else:
            return  # between the two thresholds: the alarm stays as it is
        if track.short_cycles >= self.after_cycles:
            if (ALARM_CODE, key) not in self.state.alarms:  # a raised one keeps its text
                self.state.raise_alarm(
                    ALARM_CODE, key, Severity.WARNING, self._text(found, departure)
                )
        elif track.ok_cycles >= self.after_cycles:
            self.state.clear_alarm(ALARM_CODE, key)

    def _text(self, found: PlanForecast, departure: datetime) -> str:
        def local(moment: datetime) -> str:
            return moment.astimezone(self.zone).strftime("%a %H:%M")

        text = (
            f"the plan leaves it {found.shortfall_kwh or 0.0:.1f} kWh short at its departure "
            f"{local(departure)}"
        )
        if found.ready_at is not None and found.late_min is not None:
            rate = "its planned rate" if found.late_rate == "planned" else "its maximum"
            text += (
                f"; ready about {local(found.ready_at)} ({found.late_min:.0f} min late at {rate})"
            )
        return text

    def _end(self, key: str) -> None:
        self._tracks.pop(key, None)
        self.state.clear_alarm(ALARM_CODE, key)
