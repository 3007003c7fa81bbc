"""What the API says of the limit sources (issue #20): windows in force, sources, the audit.

Every limit on the site is a window on the limit board (`sitectl.limits`): an operator
override (``operator:http``, ``operator:mqtt``), an OpenADR event, a §14a dimming input...
``/api/site`` lists the windows in force and those announced within the planning horizon, and
each source with its heartbeat state; ``/api/limits/history`` lists the interventions (a window
starting, changing, ending) from the store, newest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from sitectl.http.units import Kilowatts, Phases
from sitectl.limits import GridLimit, LimitBoard

__all__ = [
    "LimitEventView",
    "LimitHistoryView",
    "LimitSourceView",
    "LimitWindowView",
    "limit_sources",
    "limit_windows",
]


class LimitWindowView(BaseModel):
    """One limit window on a node."""

    node: str = Field(description="'grid' or a circuit id.")
    source: str = Field(
        description="Who set it: operator:http, operator:mqtt, openadr:<program>, 14a:<input>..."
    )
    ref: str | None = Field(None, description="The source's own id for it (event, override).")
    hard: bool = Field(description="Hard: never exceeded. Soft: exceeded only to save a departure.")
    limit_a: Phases | None = Field(None, description="Per-phase current limit [L1, L2, L3] (A).")
    limit_kw: Kilowatts | None = Field(None, description="Active-power limit (kW).")
    start: datetime
    end: datetime | None = Field(description="Its expiry; null while the source keeps it.")
    reason: str = Field(description="In the source's words.")


class LimitSourceView(BaseModel):
    """One limit source and its heartbeat."""

    source: str
    published_at: datetime = Field(description="Its last publish.")
    valid_until: datetime | None = Field(
        description="When it must publish again (its heartbeat); null: no heartbeat."
    )
    silent: bool = Field(
        description="Its heartbeat lapsed: its fail-safe windows apply (alarm "
        "limit_source_silent) until it publishes again."
    )
    windows: int = Field(description="Windows it has now (its fail-safe ones while silent).")


class LimitEventView(BaseModel):
    """An intervention: a window in force starting, changing or ending."""

    seq: int | None = Field(description="Its number in the store (null if not stored).")
    at: datetime = Field(description="When sitectl saw it (within one control period).")
    action: Literal["started", "changed", "ended"]
    node: str
    source: str
    ref: str | None
    hard: bool
    limit_a: Phases | None
    limit_kw: Kilowatts | None
    start: datetime
    end: datetime | None
    reason: str
    previous: LimitWindowView | None = Field(None, description="changed: the window before.")
    text: str


class LimitHistoryView(BaseModel):
    """Limit interventions, newest first."""

    events: list[LimitEventView]


def window_view(limit: GridLimit) -> LimitWindowView:
    return LimitWindowView(
        node=limit.node,
        source=limit.source,
        ref=limit.ref or None,
        hard=limit.hard,
        limit_a=limit.limit_a,
        limit_kw=limit.limit_kw,
        start=limit.start,
        end=limit.end,
        reason=limit.reason,
    )


def limit_windows(
    board: LimitBoard, now: datetime, ahead_s: float
) -> tuple[list[LimitWindowView], list[LimitWindowView]]:
    """The windows in force at `now`, and those starting within `ahead_s` after it."""
    in_force = board.in_force(now)
    later = [
        w
        for w in board.windows(now, now + timedelta(seconds=ahead_s), now)
        if not w.active(now) and w.start > now
    ]
    return [window_view(w) for w in in_force], [
        window_view(w) for w in sorted(later, key=lambda w: w.start)
    ]


def limit_sources(board: LimitBoard, now: datetime) -> list[LimitSourceView]:
    """Every source that has published, with its heartbeat state."""
    return [
        LimitSourceView(
            source=s.source,
            published_at=s.published_at,
            valid_until=s.valid_until,
            silent=s.silent,
            windows=len(s.limits),
        )
        for s in board.status(now)
    ]


def history_view(events: Iterable[dict[str, Any]]) -> LimitHistoryView:
    return LimitHistoryView(events=[LimitEventView.model_validate(e) for e in events])
