"""Limit windows onto the planning grid: the board's `GridLimit`s as the optimizer's caps.

Every window on the limit board (`sitectl.limits`: operator overrides, OpenADR events, §14a
dimming, ...) that overlaps the horizon becomes one `optimizer.problem.NodeCap` on the steps
it overlaps, *any* overlap: a step whose average current the LP plans is capped by a window
that covers only part of it (conservative; a limit starting at 17:00 caps the step that holds
17:00 in full). So a window announced for later shapes the plan now: the LP moves the energy
out of its steps, and a vehicle that would charge in them is charged before.

Rules:

- **Never above the rating.** A window's per-phase value is taken at the least of it and the
  node's configured limit (the optimizer takes the least of a node's own limit and every cap,
  so a window can only lower); a kW window is lowered like the node's own kW limit by what
  the meter's measured power says the non-EV load takes beyond ``U · Σ I``
  (`sitectl.control.power`).
- **Unknown nodes are not capped**, only logged (the board refuses them when it knows the
  nodes; a board without them is a test's).
- Hard windows are constraints; soft ones penalties (``control.soft_limit_penalty``).

Pure: the caller passes the windows, the clock and the grid.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from optimizer.problem import NodeCap
from sitectl.limits import GridLimit, tightest

__all__ = ["horizon_caps", "limits_in_force", "step0_limits"]

log = logging.getLogger(__name__)

Phases = tuple[float, float, float]

_warned: set[tuple[str, str]] = set()


def _steps(limit: GridLimit, now: datetime, ends_s: Sequence[float]) -> tuple[int, int]:
    """The steps ``[first, end)`` a window overlaps (empty when first >= end)."""
    start_s = (limit.start - now).total_seconds()
    end_s = math.inf if limit.end is None else (limit.end - now).total_seconds()
    first = bisect.bisect_right(ends_s, start_s)  # the first step ending after its start
    # Steps start at 0 and at every end but the last; those starting before its end count.
    end = bisect.bisect_left(ends_s, end_s) + 1 if end_s > 0 else 0
    return first, min(end, len(ends_s))


def horizon_caps(
    windows: Iterable[GridLimit],
    now: datetime,
    ends_s: Sequence[float],
    ratings: Mapping[str, Phases],
    kw_cuts: Mapping[str, float],
) -> tuple[list[NodeCap], list[GridLimit]]:
    """The caps of the windows overlapping the horizon, and the window behind each.

    Args:
        windows: the board's windows (``LimitBoard.windows(now, horizon end, now)``).
        now: the start of step 0.
        ends_s: the end of every step, seconds from now (`Horizon.ends_s`).
        ratings: each node's configured per-phase limit (A).
        kw_cuts: per node the kW its kW limits lose to the measured non-EV power.

    Returns:
        ``(caps, limits)``: ``limits[k]`` is the window ``caps[k]`` comes from.
    """
    caps: list[NodeCap] = []
    behind: list[GridLimit] = []
    for limit in windows:
        rating = ratings.get(limit.node)
        if rating is None:
            key = (limit.source, limit.node)
            if key not in _warned:
                _warned.add(key)
                log.warning("limit from %s on unknown node %r ignored", *key)
            continue
        first, end = _steps(limit, now, ends_s)
        if first >= end:
            continue
        amps = None
        if limit.limit_a is not None:
            lowered = tuple(min(a, r) for a, r in zip(limit.limit_a, rating, strict=True))
            if any(a < r for a, r in zip(lowered, rating, strict=True)):
                amps = lowered
        kw = None
        if limit.limit_kw is not None and math.isfinite(limit.limit_kw):
            kw = max(0.0, limit.limit_kw - kw_cuts.get(limit.node, 0.0))
        if amps is None and kw is None:
            continue  # at or above the rating: nothing to cap
        ref = f"{limit.source}/{limit.ref}" if limit.ref else limit.source
        try:
            caps.append(NodeCap(limit.node, first, end, amps, kw, limit.hard, ref))
        except ValueError as exc:  # a window the board took but the grid cannot: skip it
            log.warning("limit %s not planned with: %s", ref, exc)
            continue
        behind.append(limit)
    return caps, behind


def limits_in_force(
    ratings: Mapping[str, Phases], limits: Iterable[GridLimit], now: datetime
) -> dict[str, Phases]:
    """Each node's per-phase limit in force at `now`: its rating lowered by hard windows."""
    active = [limit for limit in limits if limit.active(now)]
    out: dict[str, Phases] = {}
    for node, rating in ratings.items():
        amps, _ = tightest(active, node, now)
        out[node] = (
            rating
            if amps is None
            else (min(rating[0], amps[0]), min(rating[1], amps[1]), min(rating[2], amps[2]))
        )
    return out


def step0_limits(
    caps: Iterable[NodeCap],
    ratings: Mapping[str, Phases],
    kw_limits: Mapping[str, float | None],
) -> tuple[dict[str, Phases], dict[str, float]]:
    """What holds on step 0 per node: the ratings and kW limits lowered by the hard caps
    covering it (soft ones may be exceeded at a price, so they cannot make it infeasible)."""
    amps = dict(ratings)
    kw = {node: value for node, value in kw_limits.items() if value is not None}
    for cap in caps:
        if not cap.hard or cap.first_step > 0 or cap.node not in amps:
            continue
        if cap.limit_a is not None:
            a, c = amps[cap.node], cap.limit_a
            amps[cap.node] = (min(a[0], c[0]), min(a[1], c[1]), min(a[2], c[2]))
        if cap.limit_kw is not None:
            kw[cap.node] = min(kw.get(cap.node, math.inf), cap.limit_kw)
    return amps, kw
