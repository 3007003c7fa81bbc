"""Limit sources, one model (issue #20): every limit on a node of the circuit tree is a window.

A configured rating, an operator override (HTTP/MQTT), an OpenADR 3 event, a §14a dimming input,
a future EEBus LPC or OCPP 2.1 external limit: each is a `GridLimit` — a lower bound on one node
("grid" or a circuit id), in A per phase and/or kW, over a time window, from a named source.
A source owns its whole set of windows and replaces it at once (`LimitBoard.publish`), so a
source never has to diff, and a withdrawn event is simply absent from the next set.

Silence is part of the model (the conditional-connection rule): a source that must keep
confirming its limits publishes with `valid_until` and `fail_safe` windows. Once `valid_until`
has passed without a new publish, the board answers the fail-safe windows too (starting at
the moment the source went silent) besides the windows it announced (a lower announced limit is
not lifted by silence), and says so (`LimitBoard.silent`), so the caller can raise an alarm.
Unknown means the worst case for the breaker: the fail-safe is never lifted by time alone
(unless `fail_safe_s` says for how long), only by the source publishing again.

Plain data, no I/O: the control loop reads `LimitBoard.windows(start, end)` for its horizon and
the uplink/HTTP read `LimitBoard.in_force(now)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

Phases = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class GridLimit:
    """One limit on one node over a time window, from one source.

    Attributes:
        node: "grid" or a circuit id.
        source: who set it, e.g. "operator:mqtt", "openadr:<program>", "14a:<input>".
        start: when it begins (UTC, aware).
        end: when it ends (UTC, aware), or None while the source keeps it.
        limit_a: per-phase current limit (A), or None when only a kW limit is given.
        limit_kw: active-power limit (kW), or None when only a current limit is given.
        hard: a hard limit is never exceeded (the LP's constraint); a soft one may be exceeded
            at a price (a penalty in the LP).
        reason: words for the operator ("OpenADR event 17:00-19:00: import capacity 400 kW").
        ref: the source's own id for it (event id, override id), for audit and de-duplication.
    """

    node: str
    source: str
    start: datetime
    end: datetime | None = None
    limit_a: Phases | None = None
    limit_kw: float | None = None
    hard: bool = True
    reason: str = ""
    ref: str = ""

    def __post_init__(self) -> None:
        if self.limit_a is None and self.limit_kw is None:
            raise ValueError(f"limit on {self.node} from {self.source}: no limit_a or limit_kw")
        if self.limit_a is not None:
            if len(self.limit_a) != 3 or any(not (a >= 0) for a in self.limit_a):
                raise ValueError(f"limit_a: three values >= 0, got {self.limit_a!r}")
            object.__setattr__(self, "limit_a", tuple(float(a) for a in self.limit_a))
        if self.limit_kw is not None and not (self.limit_kw >= 0):
            raise ValueError(f"limit_kw: must be >= 0, got {self.limit_kw!r}")
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("start/end: timezone-aware datetimes required")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} not after start {self.start.isoformat()}")

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether any part of [self.start, self.end) falls in [start, end)."""
        return self.start < end and (self.end is None or self.end > start)

    def active(self, now: datetime) -> bool:
        """Whether it is in force at `now`."""
        return self.start <= now and (self.end is None or now < self.end)


@dataclass(slots=True)
class _Entry:
    limits: tuple[GridLimit, ...]
    published_at: datetime
    valid_until: datetime | None
    fail_safe: tuple[GridLimit, ...]
    fail_safe_s: float | None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """What the board knows of one source (for /api/site, MQTT and alarms)."""

    source: str
    published_at: datetime
    valid_until: datetime | None
    silent: bool
    limits: tuple[GridLimit, ...] = field(default=())


class LimitBoard:
    """Every limit source's current windows; sources publish, the loop and the API read.

    Not thread-safe: used from the event loop only, like `SiteState`.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def publish(
        self,
        source: str,
        limits: Iterable[GridLimit],
        now: datetime,
        *,
        valid_until: datetime | None = None,
        fail_safe: Iterable[GridLimit] = (),
        fail_safe_s: float | None = None,
    ) -> None:
        """Replace `source`'s windows.

        Args:
            source: the source's name; every limit in `limits` and `fail_safe` must carry it.
            limits: its windows now (an empty set withdraws every limit of the source).
            now: the time of publishing.
            valid_until: when the source must publish again (its heartbeat); None = no
                heartbeat (the windows stand until replaced).
            fail_safe: the windows to apply once `valid_until` passes without a publish; their
                start is moved to the moment the source went silent.
            fail_safe_s: how long the fail-safe holds once applied (the conditional-connection
                rule's duration); None = until the source publishes again.
        """
        limits = tuple(limits)
        fail_safe = tuple(fail_safe)
        for limit in (*limits, *fail_safe):
            if limit.source != source:
                raise ValueError(f"limit from {limit.source!r} published as {source!r}")
        self._entries[source] = _Entry(limits, now, valid_until, fail_safe, fail_safe_s)

    def withdraw(self, source: str) -> bool:
        """Forget a source (its windows and its heartbeat); returns whether it was known."""
        return self._entries.pop(source, None) is not None

    def sources(self) -> list[str]:
        """Every source that has published, sorted."""
        return sorted(self._entries)

    def silent(self, source: str, now: datetime) -> bool:
        """Whether `source` missed its heartbeat (its fail-safe windows are answered instead)."""
        entry = self._entries.get(source)
        return entry is not None and entry.valid_until is not None and now >= entry.valid_until

    def _current(self, entry: _Entry, now: datetime) -> tuple[GridLimit, ...]:
        if entry.valid_until is None or now < entry.valid_until:
            return entry.limits
        # Silent: the fail-safe from the moment the heartbeat lapsed, for its duration, on top
        # of what the source announced (a lower announced limit is never lifted by silence:
        # the worst case for the breaker; the LP takes the lowest of all hard windows).
        since = entry.valid_until
        until = since + timedelta(seconds=entry.fail_safe_s) if entry.fail_safe_s else None
        return entry.limits + tuple(
            replace(limit, start=since, end=until, reason=limit.reason or "source silent")
            for limit in entry.fail_safe
        )

    def windows(self, start: datetime, end: datetime, now: datetime) -> list[GridLimit]:
        """Every window (hard and soft) overlapping [start, end), as the board stands at `now`."""
        out: list[GridLimit] = []
        for name in sorted(self._entries):
            out += [
                limit
                for limit in self._current(self._entries[name], now)
                if limit.overlaps(start, end)
            ]
        return out

    def in_force(self, now: datetime) -> list[GridLimit]:
        """Every window in force at `now`."""
        return [
            limit
            for name in sorted(self._entries)
            for limit in self._current(self._entries[name], now)
            if limit.active(now)
        ]

    def status(self, now: datetime) -> list[SourceStatus]:
        """Each source's heartbeat state and current windows, sorted by source."""
        return [
            SourceStatus(
                name,
                entry.published_at,
                entry.valid_until,
                self.silent(name, now),
                self._current(entry, now),
            )
            for name, entry in sorted(self._entries.items())
        ]

    def expire(self, now: datetime) -> None:
        """Drop windows that ended before `now` (keeps the board small; heartbeats stay)."""
        for entry in self._entries.values():
            entry.limits = tuple(
                limit for limit in entry.limits if limit.end is None or limit.end > now
            )


def tightest(
    limits: Iterable[GridLimit], node: str, at: datetime
) -> tuple[Phases | None, float | None]:
    """The lowest hard current and power limits on `node` in force at `at` (None where none)."""
    amps: Phases | None = None
    kw: float | None = None
    for limit in limits:
        if limit.node != node or not limit.hard or not limit.active(at):
            continue
        if limit.limit_a is not None:
            amps = (
                limit.limit_a
                if amps is None
                else (
                    min(amps[0], limit.limit_a[0]),
                    min(amps[1], limit.limit_a[1]),
                    min(amps[2], limit.limit_a[2]),
                )
            )
        if limit.limit_kw is not None:
            kw = limit.limit_kw if kw is None else min(kw, limit.limit_kw)
    return amps, kw
